"""gunicorn_pool on PostgreSQL: the worker's pool, opened at boot by gunicorn_pool.Worker / GeventWorker."""

from _settings import PG_CONFIG, POOL_SIZES, SIZE, serve_with

import gunicorn_pool

# At most GPB_SIZE connections per worker, as the other rows (1 for sync, 4 in e2e.py's pg-gevent).
SIZES = POOL_SIZES or {"max_size": SIZE}
db = gunicorn_pool.register(gunicorn_pool.DatabasePool({"default": dict(PG_CONFIG, **SIZES)}), name="db")
app = serve_with(db.connection)
