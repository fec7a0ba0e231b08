"""Statements per Flask-SQLAlchemy-like request on MariaDB: a stock QueuePool engine beside an adopted one.

Each request is what Flask-SQLAlchemy's scoped session does: ``Session(engine)``,
one query, ``session.close()`` at teardown (SQLAlchemy rolls back at the end of
its transaction, and again on return unless it knows it did). Two queries:
``SELECT 1`` (no table: no InnoDB transaction opens) and a read of an InnoDB
table (autocommit off: a transaction opens, so one ROLLBACK is needed).

Counted by the server, per session: ``Questions`` (statements the session
sent) and ``Com_rollback``, read on the one pooled connection (pool of one)
before and after N requests; the reads themselves are subtracted. A
COM_PING is no statement: the checkout probe is a ``poll()`` anyway.

    PYTHONPATH=. python bench/sqlalchemy_round_trips.py [--n 200]

Run it with ``PYTHONPATH`` at another checkout to count that commit's package.
"""

from __future__ import annotations

import argparse
import secrets
from typing import Any

from _common import BenchUser, preamble, table
from sqlalchemy import Integer, create_engine, select, text
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import gunicorn_pool
from gunicorn_pool.options import PoolOptions
from gunicorn_pool.sqlalchemy import AdoptedEngines

STATUS = text("SHOW SESSION STATUS WHERE Variable_name IN ('Questions', 'Com_rollback')")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = f"gpb_items_{secrets.token_hex(3)}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    qty: Mapped[int] = mapped_column(Integer)


def counters(engine: Any) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: int(value) for name, value in conn.execute(STATUS).all()}


def per_request(engine: Any, query: Any, n: int) -> tuple[float, float]:
    """(statements, ROLLBACKs) per request, the counter reads subtracted (each read is one SHOW
    and, on the stock engine, one ROLLBACK: measured as a read between two reads)."""
    first, second = counters(engine), counters(engine)
    read_q = second["Questions"] - first["Questions"]
    read_r = second["Com_rollback"] - first["Com_rollback"]
    for _ in range(n):
        with Session(engine) as session:
            session.execute(query).all()
    after = counters(engine)
    return ((after["Questions"] - second["Questions"] - read_q) / n,
            (after["Com_rollback"] - second["Com_rollback"] - read_r) / n)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    with BenchUser() as user:
        url = URL.create("mysql+pymysql", username=user.name, password=user.password, host=user.host,
                         port=user.port, database=user.database)  # fmt: skip
        admin = create_engine(url)
        Base.metadata.create_all(admin)
        with Session(admin) as session:
            session.add(Item(id=1, qty=2))
            session.commit()
        rows = []
        try:
            for name in ("stock QueuePool engine", "adopted engine (gunicorn_pool)"):
                engine = create_engine(url, pool_size=1, max_overflow=0)
                service = None
                if name.startswith("adopted"):
                    service = AdoptedEngines(lambda e=engine: {"default": e}, name="rt",
                                             options=PoolOptions(max_size=1))  # fmt: skip
                    service.init_pool()
                try:
                    for label, query in (("SELECT 1", text("SELECT 1")), ("ORM read of an InnoDB table",
                                                                            select(Item).where(Item.id == 1))):
                        statements, rollbacks = per_request(engine, query, args.n)
                        rows.append([name, label, f"{statements:.2f}", f"{rollbacks:.2f}"])
                finally:
                    if service is not None:
                        service.close_pool()
                    engine.dispose()
        finally:
            Base.metadata.drop_all(admin)
            admin.dispose()
    print(preamble("Statements per Flask-SQLAlchemy-like request (server counters)",
                   f"{args.n} requests per row, gunicorn_pool from {gunicorn_pool.__file__}"))  # fmt: skip
    print(table(["engine", "request", "statements / request", "ROLLBACK / request"], rows))


if __name__ == "__main__":
    main()
