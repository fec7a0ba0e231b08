"""Django (bench/apps/djbench): stock backend or gunicorn_pool.django.mysql, by GPB_DJ_ENGINE."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djbench.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

app = get_wsgi_application()
