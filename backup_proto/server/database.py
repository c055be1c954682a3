# -*- test-case-name: tests.test_accounts -*-
"""
The server's SQLite database, C{<data-dir>/user.db}: accounts and the
snapshot catalog.

One connection, owned by one thread: every query runs through L{Database.run}
on a single-thread pool, so the reactor never waits on SQLite and writes are
serialised (C{docs/security.rst}).
"""

import os
import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username   TEXT PRIMARY KEY,
    salt       BLOB NOT NULL,
    key        BLOB NOT NULL,
    iterations INTEGER NOT NULL,
    created    TEXT NOT NULL,
    quota         INTEGER,
    used          INTEGER NOT NULL DEFAULT 0,
    usage_changes INTEGER NOT NULL DEFAULT 0,
    policy        TEXT,
    append_only   INTEGER NOT NULL DEFAULT 0,
    min_age_days  INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS snapshots (
    username TEXT NOT NULL REFERENCES users(username),
    id       TEXT NOT NULL,
    source   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    created  TEXT NOT NULL,
    zip_size INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    files    INTEGER NOT NULL,
    parent   TEXT,
    added    INTEGER NOT NULL DEFAULT 0,
    manifest TEXT,
    entries  INTEGER NOT NULL DEFAULT 0,
    state    TEXT NOT NULL DEFAULT 'live',
    changed  TEXT,
    PRIMARY KEY (username, id)
);
CREATE TABLE IF NOT EXISTS pins (
    token    INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL,
    id       TEXT NOT NULL,
    holder   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS pins_snapshot ON pins (username, id);
"""

#: Columns added since the first catalog, by table, with their definitions:
#: a catalog made before them gains them at start-up.  Older snapshots have
#: no manifest (they cannot be a parent) and added all their bytes.
ADDED_COLUMNS = {
    "snapshots": {
        "parent": "TEXT",
        "added": "INTEGER NOT NULL DEFAULT 0",
        "manifest": "TEXT",
        "entries": "INTEGER NOT NULL DEFAULT 0",
        "state": "TEXT NOT NULL DEFAULT 'live'",
        "changed": "TEXT",
    },
    "users": {
        "quota": "INTEGER",
        "used": "INTEGER NOT NULL DEFAULT 0",
        "usage_changes": "INTEGER NOT NULL DEFAULT 0",
        "policy": "TEXT",
        "append_only": "INTEGER NOT NULL DEFAULT 0",
        "min_age_days": "INTEGER NOT NULL DEFAULT 0",
        "disabled": "INTEGER NOT NULL DEFAULT 0",
    },
}

#: What an added column starts as, where its default is not it.  Before
#: removals existed, each snapshot's added bytes were its own on disk.
_BACKFILL = {
    ("snapshots", "added"): "UPDATE snapshots SET added = size",
    ("users", "used"): (
        "UPDATE users SET used = (SELECT COALESCE(SUM(added), 0) FROM snapshots"
        " WHERE snapshots.username = users.username)"
    ),
}


def migrate(conn):
    """
    Add the columns of L{ADDED_COLUMNS} that an older catalog lacks (the
    snapshots' first: the users' usage is backfilled from them).
    """
    for table, columns in ADDED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, definition in columns.items():
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {definition}")
                if (table, name) in _BACKFILL:
                    conn.execute(_BACKFILL[table, name])


class Database:
    """
    The SQLite connection and the thread it lives on.

    @ivar path: the database file.
    @ivar _runInThread: C{f(*a) -> Deferred}, running C{f} on the one
        database thread.
    @ivar _conn: the connection, created on first use in that thread.
    """

    def __init__(self, path, runInThread):
        self.path = path
        self._runInThread = runInThread
        self._conn = None

    def _connection(self):
        if self._conn is None:
            new = not os.path.exists(self.path)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            if new:
                os.chmod(self.path, 0o600)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=5000")
            conn.executescript(SCHEMA)
            migrate(conn)
            self._conn = conn
        return self._conn

    def run(self, f, *args):
        """
        Run C{f(connection, *args)} on the database thread.

        @return: a L{Deferred} with its result.
        """
        return self._runInThread(lambda: f(self._connection(), *args))

    def runSync(self, f, *args):
        """
        Run C{f(connection, *args)} here and now: for start-up and tests only.
        """
        return f(self._connection(), *args)

    def close(self):
        """
        Close the connection (call on the database thread, or when idle).
        """
        if self._conn is not None:
            self._conn.close()
            self._conn = None
