"""A Flask-SQLAlchemy app with no gunicorn_pool line at all: the app walk finds
``app.extensions["sqlalchemy"]`` and adopts its engines (``GP_SA_URL`` as in flask_sa_app)."""

import os

from flask import Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["GP_SA_URL"]
db = SQLAlchemy(app)


@app.route("/conn")
def conn():
    sql = "SELECT CONNECTION_ID()" if db.engine.dialect.name == "mysql" else "SELECT pg_backend_pid()"
    return jsonify(pid=os.getpid(), session=db.session.execute(text(sql)).scalar(), pool=type(db.engine.pool).__name__)
