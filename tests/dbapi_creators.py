"""Creators for the dbapi adapter's tests, importable as 'dbapi_creators:NAME'.

Each reads its target from the environment, as a creator in an application
reads its settings: GP_TEST_SQLITE_PATH for sqlite_file.
"""

import os
import sqlite3


def sqlite_file():
    """An sqlite3 connection to GP_TEST_SQLITE_PATH, shareable between threads (the pool lends it to one at a time)."""
    return sqlite3.connect(os.environ["GP_TEST_SQLITE_PATH"], check_same_thread=False)
