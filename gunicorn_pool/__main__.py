"""``python -m gunicorn_pool check ...``: the ``gunicorn-pool`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
