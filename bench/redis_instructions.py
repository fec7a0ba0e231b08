"""Run N GETs through one Redis client, for counting CPU instructions with callgrind.

Timings on a shared machine swing; instruction counts do not. Count a variant
twice, with N GETs and with none, and divide the difference by N::

    for n in 0 2000; do
        PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            python bench/redis_instructions.py gp $n 2>&1 | grep Collected
    done

Variants: ``raw`` (``redis.Redis(single_connection_client=True)``), ``default``
(redis-py's own pool), ``minimal`` (the bare-deque reference pool of
overhead.py), ``gp`` (``RedisPool.client()`` with ``probe_after=none``: under
valgrind every gap between two commands exceeds the 100 µs poll threshold),
``gp_probe`` (``probe_after=0``: the checkout poll on every command).
Redis from ``GP_REDIS_HOST``/``GP_REDIS_PORT`` (default 127.0.0.1:6379).
"""

from __future__ import annotations

import argparse
import os

import redis
from overhead import minimal_redis_pool

from gunicorn_pool import RedisPool

HOST, PORT = os.environ.get("GP_REDIS_HOST", "127.0.0.1"), int(os.environ.get("GP_REDIS_PORT", "6379"))
KEY = "gunicorn_pool:bench:instructions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", choices=("raw", "default", "minimal", "gp", "gp_probe"))
    parser.add_argument("n", type=int, help="GETs to run after 200 warm-up GETs")
    args = parser.parse_args()
    service = None
    url = f"redis://{HOST}:{PORT}/0?min_size=1&max_size=1"
    if args.variant == "raw":
        client = redis.Redis(host=HOST, port=PORT, single_connection_client=True)
    elif args.variant == "default":
        client = redis.Redis(host=HOST, port=PORT)
    elif args.variant == "minimal":
        client = redis.Redis(connection_pool=minimal_redis_pool(HOST, PORT))
    else:
        probe = "0" if args.variant == "gp_probe" else "none"
        service = RedisPool({"default": f"{url}&probe_after={probe}"}, name="bench-instructions")
        service.init_pool()
        client = service.client()
    client.set(KEY, "x" * 16)
    for _ in range(200):
        client.get(KEY)
    for _ in range(args.n):
        client.get(KEY)
    if service is not None:
        service.close_pool()


if __name__ == "__main__":
    main()
