"""A Flask-SQLAlchemy app as users write them (a model, the request-scoped ``db.session``),
made pooled per worker by the two marked lines.

Environment: ``GP_SA_URL`` (a SQLAlchemy URL), ``GP_SA_TABLE`` (the model's table, created by
the test), ``GP_SA_QUERY_AT_IMPORT=1`` (query at import: in the master under ``--preload``).

Routes: /conn (worker pid and the server's session id), /sleep?s= (hold the session),
/rollback, /commit, /raise (a view that fails after a flush), /count, /leak (a Session left
open at the end of the request), /stats (the answering worker's pid and its adopted pools' figures), /master.
"""

import os
import time

from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Integer, func, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

import gunicorn_pool.sqlalchemy  # gunicorn_pool: 1 of 2

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["GP_SA_URL"]
db = SQLAlchemy(app)
POOLS = gunicorn_pool.sqlalchemy.adopt(db)  # gunicorn_pool: 2 of 2


class Item(db.Model):
    __tablename__ = os.environ["GP_SA_TABLE"]
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    v: Mapped[int] = mapped_column(Integer)


def session_id():
    sql = "SELECT CONNECTION_ID()" if db.engine.dialect.name == "mysql" else "SELECT pg_backend_pid()"
    return db.session.execute(text(sql)).scalar()


MASTER = {"pid": os.getpid(), "session": None}
if os.environ.get("GP_SA_QUERY_AT_IMPORT"):
    with app.app_context():
        MASTER["session"] = session_id()
        db.session.remove()

_leaked = []


@app.route("/conn")
def conn():
    return jsonify(pid=os.getpid(), session=session_id())


@app.route("/sleep")
def sleep():
    sid = session_id()
    time.sleep(float(request.args.get("s", "0.2")))
    return jsonify(pid=os.getpid(), session=sid)


@app.route("/rollback")
def rollback():
    db.session.add(Item(v=1))
    db.session.flush()
    db.session.rollback()
    return jsonify(rows=db.session.scalar(select(func.count()).select_from(Item)))


@app.route("/commit")
def commit():
    db.session.add(Item(v=2))
    db.session.commit()
    return jsonify(ok=True)


@app.route("/raise")
def fail():
    db.session.add(Item(v=3))
    db.session.flush()
    raise RuntimeError("the view failed after a flush")


@app.route("/count")
def count():
    return jsonify(rows=db.session.scalar(select(func.count()).select_from(Item)))


@app.route("/leak")
def leak():
    session = Session(db.engine)
    session.execute(text("SELECT 1"))
    _leaked.append(session)  # never closed: its connection is out at the end of the request
    return jsonify(ok=True)


@app.route("/stats")
def stats():
    return jsonify(pid=os.getpid(), pools=POOLS.stats())


@app.route("/master")
def master():
    return jsonify(MASTER)
