"""The WSGI request boundary (gunicorn_pool.wsgi): when a request ends and whether it failed, for
every shape of response, with a SQLite pool (no server decides anything here).

A request_connection() lease is committed when the request succeeded and rolled back when it
failed; a lease left out is reclaimed when the request ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import gunicorn_pool
from gunicorn_pool import DatabasePool
from gunicorn_pool.wsgi import RequestScopeMiddleware


class Response:
    """A server response object as gunicorn's: its bound start_response keeps the status."""

    def __init__(self) -> None:
        self.status: Any = None

    def start_response(self, status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        self.status = status
        return lambda data: None


@pytest.fixture
def db(tmp_path: Path) -> Iterator[DatabasePool]:
    db = DatabasePool({"default": {"adapter": "sqlite", "database": str(tmp_path / "w.db"), "max_size": 2}})
    db.init_pool()
    with db.connection() as conn:
        conn.execute("CREATE TABLE t (v INTEGER)")
    yield db
    db.close_pool()


def _rows(db: DatabasePool) -> int:
    with db.connection() as conn:
        return int(conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])


def _app(db: DatabasePool, status: str, body: Any) -> Callable[..., Any]:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        gunicorn_pool.request_connection(db).execute("INSERT INTO t VALUES (1)")
        start_response(status, [])
        return body() if callable(body) else body

    return app


def _serve(app: Any, start_response: Any) -> None:
    """What a server does: call, send every chunk, close."""
    body = RequestScopeMiddleware(app)({"PATH_INFO": "/x"}, start_response)
    try:
        for _ in body:
            pass
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _plain_start_response(status: str, headers: Any, exc_info: Any = None) -> None:
    """A server whose start_response is a plain function: the middleware records the status."""


def _stream() -> Iterator[bytes]:
    yield b"a"
    yield b"b"


def _broken_stream() -> Iterator[bytes]:
    yield b"a"
    raise RuntimeError("the body failed while it was sent")


@pytest.mark.parametrize("server", ["gunicorn-like response", "plain function"])
@pytest.mark.parametrize(("status", "body", "kept"), [
    ("200 OK", [b"ok"], 1), ("503 Service Unavailable", [b"no"], 0),
    ("200 OK", _stream, 1), ("500 Internal Server Error", _stream, 0), ("200 OK", _broken_stream, 0),
])  # fmt: skip
def test_a_request_commits_when_it_succeeded_and_rolls_back_when_it_failed(db, server, status, body, kept):
    start_response = Response().start_response if server == "gunicorn-like response" else _plain_start_response
    try:
        _serve(_app(db, status, body), start_response)
    except RuntimeError:
        pass
    assert _rows(db) == kept
    stats = db.pool().stats()
    assert stats["pool_available"] == stats["pool_size"], stats  # given back, whatever the shape


def test_a_list_body_ends_its_request_when_the_app_returns_it(db):
    """No wrapper around a list: the server gets the list itself, and a lease left out is
    reclaimed at once (no code of the app runs while a list is sent)."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        db.pool().getconn()  # leaked
        start_response("200 OK", [])
        return [b"ok"]

    body = RequestScopeMiddleware(app)({"PATH_INFO": "/leak"}, Response().start_response)
    assert type(body) is list and db.pool().stats()["connections_leaked"] == 1


def test_a_streamed_body_runs_inside_its_request_until_the_server_closes_it(db):
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])

        def chunks() -> Iterator[bytes]:
            seen.append(gunicorn_pool.request_connection(db))  # during the send
            yield b"x"

        return chunks()

    body = RequestScopeMiddleware(app)({"PATH_INFO": "/s"}, Response().start_response)
    assert list(body) == [b"x"] and db.pool().stats()["pool_available"] == 0  # still lent while sending
    body.close()  # type: ignore[attr-defined]
    assert db.pool().stats()["pool_available"] == 1


def test_a_body_that_takes_its_request_connection_while_sent_and_then_raises_rolls_back(db):
    """The server began sending before any request_connection(): the body is sent unwatched (no
    generator in between), and its raise is seen in the server's close(), which runs in a finally."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])

        def chunks() -> Iterator[bytes]:
            yield b"a"
            gunicorn_pool.request_connection(db).execute("INSERT INTO t VALUES (1)")
            raise RuntimeError("the body failed after it wrote")

        return chunks()

    with pytest.raises(RuntimeError):
        _serve(app, Response().start_response)
    assert _rows(db) == 0
    stats = db.pool().stats()
    assert stats["pool_available"] == stats["pool_size"], stats


def test_a_body_with_no_request_connection_is_iterated_by_the_server_itself(db):
    """No generator of ours between the server and a streamed body that has nothing to commit."""
    chunks = iter([b"a", b"b"])

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        return chunks

    body = RequestScopeMiddleware(app)({"PATH_INFO": "/s"}, Response().start_response)
    assert iter(body) is chunks
    assert list(chunks) == [b"a", b"b"]
    body.close()  # type: ignore[attr-defined]
    assert gunicorn_pool.request.current() is None


def test_an_app_that_raises_rolls_back(db):
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        gunicorn_pool.request_connection(db).execute("INSERT INTO t VALUES (1)")
        raise RuntimeError("the view failed")

    with pytest.raises(RuntimeError):
        RequestScopeMiddleware(app)({"PATH_INFO": "/r"}, Response().start_response)
    assert _rows(db) == 0
