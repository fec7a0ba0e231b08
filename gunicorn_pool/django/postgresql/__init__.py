"""The pooled PostgreSQL backend: ``DATABASES[alias]["ENGINE"] = "gunicorn_pool.django.postgresql"``.

Django loads :mod:`.base` from here (see :mod:`gunicorn_pool.django`).
"""
