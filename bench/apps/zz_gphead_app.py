"""gunicorn_pool: the worker's pool, opened at boot by gunicorn_pool.Worker / GeventWorker."""

from _settings import BODY, HEADERS, KW, POOL_SIZES, select1

import gunicorn_pool

# Sizes come from the worker profile: 1 connection for sync, 1 to 10 for gevent.
db = gunicorn_pool.register(gunicorn_pool.DatabasePool({"default": dict(KW, **POOL_SIZES)}), name="db")


def app(environ, start_response):
    with db.connection() as conn:
        select1(conn)
    start_response("200 OK", HEADERS)
    return [BODY]
