"""The names of a pool's figures, one source for ``stats()``, statsd, Prometheus and OpenTelemetry.

psycopg_pool's names where they fit. Gauges are a level now; counters only
grow while the pool lives (a reporter sends their increase).
"""

from __future__ import annotations

__all__ = ["COUNTERS", "GAUGES", "HELP", "KEYS"]

# -- gauges ------------------------------------------------------------------------------
POOL_MIN = "pool_min"
POOL_MAX = "pool_max"
POOL_SIZE = "pool_size"
POOL_AVAILABLE = "pool_available"
REQUESTS_WAITING = "requests_waiting"

# -- counters ------------------------------------------------------------------------------
REQUESTS_NUM = "requests_num"
REQUESTS_QUEUED = "requests_queued"
REQUESTS_WAIT_MS = "requests_wait_ms"
REQUESTS_TIMEOUTS = "requests_timeouts"
REQUESTS_ERRORS = "requests_errors"
CONNECTIONS_NUM = "connections_num"
CONNECTIONS_MS = "connections_ms"
CONNECTIONS_ERRORS = "connections_errors"
CONNECTIONS_LOST = "connections_lost"
CONNECTIONS_LEAKED = "connections_leaked"
CONNECTIONS_RESET = "connections_reset"
CONNECTIONS_CLOSED = "connections_closed"
USAGE_MS = "usage_ms"
#: Of a primary with replicas (DatabasePool.stats()): read-only leases the primary served
#: because no replica could be reached.
REPLICA_FALLBACKS = "replica_fallbacks"

#: Figures that are a level now.
GAUGES = (POOL_MIN, POOL_MAX, POOL_SIZE, POOL_AVAILABLE, REQUESTS_WAITING)
#: Figures of ConnectionPool.stats() that only grow while the pool lives.
POOL_COUNTERS = (
    REQUESTS_NUM, REQUESTS_QUEUED, REQUESTS_WAIT_MS, REQUESTS_TIMEOUTS, REQUESTS_ERRORS,
    CONNECTIONS_NUM, CONNECTIONS_MS, CONNECTIONS_ERRORS, CONNECTIONS_LOST, CONNECTIONS_LEAKED,
    CONNECTIONS_RESET, CONNECTIONS_CLOSED, USAGE_MS,
)  # fmt: skip
#: Every figure that only grows (a reporter sends its increase).
COUNTERS = POOL_COUNTERS + (REPLICA_FALLBACKS,)
#: Every key of ``ConnectionPool.stats()``, in this order.
KEYS = GAUGES + POOL_COUNTERS

HELP = {
    POOL_MIN: "connections opened at warm-up (min_size)",
    POOL_MAX: "connections the pool may hold (max_size)",
    POOL_SIZE: "connections open or being opened",
    POOL_AVAILABLE: "idle connections ready to lend",
    REQUESTS_WAITING: "callers waiting for a connection now",
    REQUESTS_NUM: "connection requests (served, timed out or failed)",
    REQUESTS_QUEUED: "requests that had to wait",
    REQUESTS_WAIT_MS: "milliseconds spent waiting for a connection",
    REQUESTS_TIMEOUTS: "requests that gave up after timeout (PoolTimeout)",
    REQUESTS_ERRORS: "requests refused or failed (TooManyRequests, connect errors)",
    CONNECTIONS_NUM: "connections opened",
    CONNECTIONS_MS: "milliseconds spent opening connections",
    CONNECTIONS_ERRORS: "failed connection attempts",
    CONNECTIONS_LOST: "connections found dead by the checkout check",
    CONNECTIONS_LEAKED: "leases reclaimed because their request ended without giving them back",
    CONNECTIONS_RESET: "sessions reset on return because the user changed them",
    CONNECTIONS_CLOSED: "connections their user closed during the lease (each costs a new connection)",
    USAGE_MS: "milliseconds connections were lent out",
    REPLICA_FALLBACKS: "read-only leases served by the primary because no replica could be reached",
}
assert set(HELP) == set(KEYS + COUNTERS)
