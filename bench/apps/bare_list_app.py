"""Reference only, gevent: the cheapest pool there is, a list per worker (pop, or connect; append back).

No limit, no wait, no check, no transaction handling, no stats: safe only
because greenlets never switch between ``pop()`` and ``append()``. It is the
ceiling any pool can reach in bench/e2e.py's gevent mode, not a design.
"""

import pymysql
from _settings import BODY, HEADERS, KW, SSL, select1

idle = []


def app(environ, start_response):
    conn = idle.pop() if idle else pymysql.connect(**SSL, **KW)
    try:
        select1(conn)
    finally:
        idle.append(conn)
    start_response("200 OK", HEADERS)
    return [BODY]
