"""Reference only, gevent: the cheapest pool there is, a list per worker (pop, or connect; append back).

No limit, no wait, no check, no transaction handling, no stats: safe only
because greenlets never switch between ``pop()`` and ``append()``. It is the
ceiling any pool can reach in bench/e2e.py's gevent mode, not a design.
"""

from _settings import mysql_connect, serve_bare_list

app = serve_bare_list(mysql_connect)
