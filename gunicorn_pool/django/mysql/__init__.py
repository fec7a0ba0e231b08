"""The pooled MySQL/MariaDB backend: ``DATABASES[alias]["ENGINE"] = "gunicorn_pool.django.mysql"``.

Django loads :mod:`.base` from here (see :mod:`gunicorn_pool.django`).
"""
