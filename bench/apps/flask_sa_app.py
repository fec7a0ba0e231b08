"""A Flask-SQLAlchemy app, ``session.execute(select(1))`` per request, three ways (GPB_SA):

- ``stock``: Flask-SQLAlchemy's engine on SQLAlchemy's QueuePool (pool_size=GPB_SIZE, no
  overflow), connecting lazily;
- ``adopt``: the same app plus ``gunicorn_pool.sqlalchemy.adopt(db)``;
- ``enginepool``: an ``EnginePool`` engine built in the worker, a ``Session`` per request.
"""

import os

from _settings import KW, SIZE, SSL
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import URL, select
from sqlalchemy.orm import Session

MODE = os.environ.get("GPB_SA", "stock")
URL_ = URL.create("mysql+pymysql", username=KW["user"], password=KW["password"] or None, host=KW["host"],
                  port=KW["port"], database=KW["database"])  # fmt: skip
STMT = select(1)

app = Flask(__name__)
if MODE != "enginepool":  # (no idle Flask-SQLAlchemy engine beside: the app walk would adopt it too)
    app.config["SQLALCHEMY_DATABASE_URI"] = URL_
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": SIZE, "max_overflow": 0, "connect_args": dict(SSL)}
    db = SQLAlchemy(app)
if MODE != "stock":  # the stock row imports none of gunicorn_pool (bench/memory.py counts its modules)
    import gunicorn_pool
    import gunicorn_pool.sqlalchemy
if MODE == "adopt":
    gunicorn_pool.sqlalchemy.adopt(db, max_size=SIZE)
elif MODE == "enginepool":
    gunicorn_pool.register(gunicorn_pool.sqlalchemy.EnginePool(
        {"default": {"url": URL_, "max_size": SIZE, "connect_args": dict(SSL)}}), name="orm")  # fmt: skip


@app.route("/")
def index():
    if MODE == "enginepool":
        with Session(gunicorn_pool.get("orm").engine()) as session:
            session.execute(STMT).all()
    else:
        db.session.execute(STMT).all()
    return "1"
