"""The project's WSGI app; GP_DJ_QUERY_AT_IMPORT=1 runs a query while the module loads
(the master's, with --preload), and prints the session it used."""

import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djangoproj.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()

if os.environ.get("GP_DJ_QUERY_AT_IMPORT") == "1":
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()" if connection.vendor == "mysql" else "SELECT pg_backend_pid()")
        print(f"GP-DJ-IMPORT-CONN pid={os.getpid()} conn={cursor.fetchone()[0]}", file=sys.stderr, flush=True)
