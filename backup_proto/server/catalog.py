# -*- test-case-name: tests.test_lifecycle -*-
"""
The catalog's lifecycle queries: account settings, usage, pins, and the
states a snapshot passes through on its way out.  Each function takes the
SQLite connection and runs on the database thread (or in C{backup-admin},
which opens the same catalog); where several statements must agree they
run in one C{BEGIN IMMEDIATE} transaction, so the server and an operator's
command never interleave inside one.

A snapshot's C{state}::

    live ──forget──▶ trash ──grace over──▶ removing ──claimed──▶ purging ──▶ (row gone)
      │  (undelete ◀─┘)                        ▲
      └──────────forget, no grace──────────────┘

Only C{live} snapshots are listed, restored or used as a parent.  A
C{removing} snapshot is claimed (C{purging}) by one remover once no pin
holds it; its folder then goes and the row goes last, with the bytes freed
taken off the account's usage.  A remover that dies leaves C{purging}
behind; start-up recovery finishes those and recounts the account.

Pins (table C{pins}) are held by a server while a restore reads a snapshot
or a backup links from it, so a removal never pulls files from under them.
They live in the catalog, not in memory, so that C{backup-admin} sees them.
"""

import json
from contextlib import contextmanager
from typing import NamedTuple

from backup_proto.units import humanSize
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import SNAPSHOT_FIELDS
from backup_proto.wire.policy import KeepPolicy

LIVE = "live"
TRASH = "trash"
REMOVING = "removing"
PURGING = "purging"

_COLUMNS = ", ".join(SNAPSHOT_FIELDS)


def snapshotRow(r):
    return dict(zip(SNAPSHOT_FIELDS, r))


@contextmanager
def volatile(conn):
    """
    Let the block's transactions skip the flush to disk (WAL with
    C{synchronous=NORMAL}): for pins, which every start drops anyway, so
    that a restore or an incremental backup does not wait on the disk
    twice more.  A later flushed commit carries them to disk too.
    """
    conn.execute("PRAGMA synchronous=NORMAL")
    try:
        yield conn
    finally:
        conn.execute("PRAGMA synchronous=FULL")


@contextmanager
def transaction(conn):
    """
    Run the block in one write transaction (the connection autocommits
    otherwise).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class Account(NamedTuple):
    """
    An account's settings and usage.

    @ivar quota: bytes the account may keep on disk, or C{None}.
    @ivar used: bytes it keeps on disk: each stored file's inode once,
        and link targets, over all its snapshots in any state.
    @ivar policy: the L{KeepPolicy} the server applies, or C{None}.
    """

    username: str
    quota: int
    used: int
    usageChanges: int
    policy: KeepPolicy
    appendOnly: bool
    minAgeDays: int
    disabled: bool


#: The columns of L{Account}, in its order.
_ACCOUNT_COLUMNS = (
    "username",
    "quota",
    "used",
    "usage_changes",
    "policy",
    "append_only",
    "min_age_days",
    "disabled",
)


def _account(r):
    """
    @return: the L{Account} of a row that starts with L{_ACCOUNT_COLUMNS}.
    """
    policy = None if r[4] is None else KeepPolicy.fromFields(json.loads(r[4]))
    return Account(r[0], r[1], r[2], r[3], policy, bool(r[5]), r[6], bool(r[7]))


def account(conn, username):
    """
    @return: the L{Account}, or C{None} if there is none of that name.
    """
    r = conn.execute(
        f"SELECT {', '.join(_ACCOUNT_COLUMNS)} FROM users WHERE username = ?", (username,)
    ).fetchone()
    return None if r is None else _account(r)


def checkQuota(account, size, reserved=0):
    """
    @param reserved: bytes of this account's uploads under way, not yet
        counted in its usage.
    @raise ProtocolError: (L{Code.QUOTA_EXCEEDED}) if storing C{size} more
        bytes would take the account over its quota.
    """
    if account.quota is None:
        return
    used = account.used + reserved
    if used + size > account.quota:
        raise ProtocolError(
            Code.QUOTA_EXCEEDED,
            f"storing {humanSize(size)} would exceed the quota: {humanSize(used)} used"
            f" of {humanSize(account.quota)}",
        )


def requireAccount(conn, username):
    found = account(conn, username)
    if found is None:
        raise ProtocolError(Code.NOT_FOUND, f"no account {username!r}")
    return found


def accounts(conn):
    """
    @return: every account with its counts, for C{backup-admin users} and
        the metrics, in one query (a scrape runs it on the database thread).
    """
    columns = ", ".join(f"u.{c}" for c in _ACCOUNT_COLUMNS)
    rows = conn.execute(
        f"SELECT {columns}, COUNT(CASE WHEN s.state = ? THEN 1 END),"
        " MAX(CASE WHEN s.state = ? THEN s.created END),"
        " COUNT(CASE WHEN s.state = ? THEN 1 END)"
        " FROM users u LEFT JOIN snapshots s ON s.username = u.username"
        " GROUP BY u.username ORDER BY u.username",
        (LIVE, LIVE, TRASH),
    ).fetchall()
    out = []
    for row in rows:
        acct = _account(row)
        snapshots, newest, trash = row[-3:]
        out.append(
            {
                "user": acct.username,
                "snapshots": snapshots,
                "trash": trash,
                "used": acct.used,
                "quota": acct.quota,
                "last_backup": newest,
                "policy": None if acct.policy is None else acct.policy.toFields(),
                "append_only": acct.appendOnly,
                "min_age_days": acct.minAgeDays,
                "disabled": acct.disabled,
            }
        )
    return out


def _totals(conn, username):
    """
    @return: an account's live snapshots, their bytes and the newest one's
        time, and its trashed snapshots.
    """
    snapshots, size, newest = conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(size), 0), MAX(created) FROM snapshots"
        " WHERE username = ? AND state = ?",
        (username, LIVE),
    ).fetchone()
    trash = conn.execute(
        "SELECT COUNT(*) FROM snapshots WHERE username = ? AND state = ?", (username, TRASH)
    ).fetchone()[0]
    return {"snapshots": snapshots, "size": size, "newest": newest, "trash": trash}


def usage(conn, username):
    """
    @return: the fields of C{USAGE_INFO} for one account.
    """
    acct = requireAccount(conn, username)
    totals = _totals(conn, username)
    return {
        "snapshots": totals["snapshots"],
        "size": totals["size"],
        "used": acct.used,
        "quota": acct.quota,
        "newest": totals["newest"],
        "trash": totals["trash"],
        "append_only": acct.appendOnly,
        "min_age_days": acct.minAgeDays,
        "policy": None if acct.policy is None else acct.policy.describe(),
    }


def _update(conn, username, sql, *args):
    with transaction(conn):
        requireAccount(conn, username)
        conn.execute(f"UPDATE users SET {sql} WHERE username = ?", (*args, username))


def setQuota(conn, username, quota):
    _update(conn, username, "quota = ?", quota)


def setPolicy(conn, username, policy):
    """
    @raise ProtocolError: for an append-only account and a policy with
        counted rules (only C{within} is safe against backdated snapshots).
    """
    with transaction(conn):
        acct = requireAccount(conn, username)
        if policy is not None and acct.appendOnly and not policy.onlyWithin:
            raise ProtocolError(
                Code.PROTECTED,
                f"{username} is append-only: its policy may only use --keep-within",
            )
        text = None if policy is None else json.dumps(policy.toFields())
        conn.execute("UPDATE users SET policy = ? WHERE username = ?", (text, username))


def setProtection(conn, username, appendOnly, minAgeDays):
    with transaction(conn):
        acct = requireAccount(conn, username)
        if appendOnly and acct.policy is not None and not acct.policy.onlyWithin:
            raise ProtocolError(
                Code.PROTECTED,
                f"{username}'s policy ({acct.policy.describe()}) counts snapshots: an"
                " append-only account's policy may only use --keep-within",
            )
        conn.execute(
            "UPDATE users SET append_only = ?, min_age_days = ? WHERE username = ?",
            (int(appendOnly), minAgeDays, username),
        )


def setDisabled(conn, username, disabled):
    _update(conn, username, "disabled = ?", int(disabled))


def setPassword(conn, username, salt, key, iterations):
    _update(conn, username, "salt = ?, key = ?, iterations = ?", salt, key, iterations)


def addUsed(conn, username, delta):
    conn.execute(
        "UPDATE users SET used = MAX(0, used + ?), usage_changes = usage_changes + 1"
        " WHERE username = ?",
        (delta, username),
    )


def setUsed(conn, username, used, seenChanges):
    """
    Set a recounted usage, unless the usage changed since the recount
    began (then the caller counts again).

    @return: whether it was set.
    """
    cursor = conn.execute(
        "UPDATE users SET used = ?, usage_changes = usage_changes + 1"
        " WHERE username = ? AND usage_changes = ?",
        (used, username, seenChanges),
    )
    return cursor.rowcount == 1


# ---------------------------------------------------------------- snapshots


def snapshots(conn, username, state=LIVE, changed=True):
    """
    @param changed: whether to add the time of each one's last change of
        state, as C{changed} (a row as the wire knows it has not).
    @return: one account's snapshots in C{state}, oldest first.
    """
    rows = conn.execute(
        f"SELECT {_COLUMNS}, changed FROM snapshots WHERE username = ? AND state = ?"
        " ORDER BY created, rowid",
        (username, state),
    ).fetchall()
    out = []
    for r in rows:
        row = snapshotRow(r)
        if changed:
            row["changed"] = r[-1]
        out.append(row)
    return out


def pin(conn, username, snapshotId, holder):
    """
    Pin one of the account's live snapshots (C{None}: the newest).

    @return: C{(row, token)}, or C{None} if there is no such live snapshot.
    """
    with volatile(conn), transaction(conn):
        if snapshotId is None:
            r = conn.execute(
                f"SELECT {_COLUMNS} FROM snapshots WHERE username = ? AND state = ?"
                " ORDER BY created DESC, rowid DESC LIMIT 1",
                (username, LIVE),
            ).fetchone()
        else:
            r = conn.execute(
                f"SELECT {_COLUMNS} FROM snapshots WHERE username = ? AND id = ? AND state = ?",
                (username, snapshotId, LIVE),
            ).fetchone()
        if r is None:
            return None
        row = snapshotRow(r)
        cursor = conn.execute(
            "INSERT INTO pins (username, id, holder) VALUES (?, ?, ?)",
            (username, row["id"], holder),
        )
        return row, cursor.lastrowid


def unpin(conn, token):
    """
    @return: C{(username, id)} of the snapshot if it waits for removal and
        this was its last pin, else C{None}.
    """
    with volatile(conn), transaction(conn):
        r = conn.execute("SELECT username, id FROM pins WHERE token = ?", (token,)).fetchone()
        if r is None:
            return None
        conn.execute("DELETE FROM pins WHERE token = ?", (token,))
        if _pinned(conn, *r):
            return None
        state = conn.execute(
            "SELECT state FROM snapshots WHERE username = ? AND id = ?", r
        ).fetchone()
        return tuple(r) if state is not None and state[0] == REMOVING else None


def _pinned(conn, username, snapshotId):
    return (
        conn.execute(
            "SELECT 1 FROM pins WHERE username = ? AND id = ? LIMIT 1", (username, snapshotId)
        ).fetchone()
        is not None
    )


def dropPins(conn, holder=None):
    """
    Forget pins (a server's, at its start: whatever held them is gone).
    """
    if holder is None:
        conn.execute("DELETE FROM pins")
    else:
        conn.execute("DELETE FROM pins WHERE holder = ?", (holder,))


def setState(conn, username, ids, state, when, fromStates=(LIVE,)):
    """
    Move snapshots to C{state} (in the caller's transaction).

    @raise ProtocolError: (L{Code.NOT_FOUND}) if one of C{ids} is not in
        one of C{fromStates}; nothing is changed then.
    """
    marks = ",".join("?" * len(fromStates))
    for snapshotId in ids:
        found = conn.execute(
            f"SELECT 1 FROM snapshots WHERE username = ? AND id = ? AND state IN ({marks})",
            (username, snapshotId, *fromStates),
        ).fetchone()
        if found is None:
            raise ProtocolError(Code.NOT_FOUND, f"no such snapshot: {snapshotId}")
    for snapshotId in ids:
        conn.execute(
            "UPDATE snapshots SET state = ?, changed = ? WHERE username = ? AND id = ?",
            (state, when, username, snapshotId),
        )


def claim(conn, username, snapshotId):
    """
    Take a C{removing} snapshot that no pin holds for removal (C{purging}).

    @return: whether this caller now removes it.
    """
    with transaction(conn):
        if _pinned(conn, username, snapshotId):
            return False
        cursor = conn.execute(
            "UPDATE snapshots SET state = ? WHERE username = ? AND id = ? AND state = ?",
            (PURGING, username, snapshotId, REMOVING),
        )
        return cursor.rowcount == 1


def finishRemoval(conn, username, snapshotId, freed):
    """
    Drop a purged snapshot's row and take the bytes freed off its account.
    """
    with transaction(conn):
        conn.execute("DELETE FROM snapshots WHERE username = ? AND id = ?", (username, snapshotId))
        addUsed(conn, username, -freed)


def waiting(conn, state=REMOVING):
    """
    @return: C{(username, id)} of every snapshot in C{state}.
    """
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT username, id FROM snapshots WHERE state = ? ORDER BY username, created",
            (state,),
        )
    ]


def expiredTrash(conn, cutoff):
    """
    @return: C{(username, id)} of trashed snapshots trashed before C{cutoff}.
    """
    return [
        tuple(r)
        for r in conn.execute(
            "SELECT username, id FROM snapshots WHERE state = ? AND changed < ?",
            (TRASH, cutoff),
        )
    ]


def withPolicy(conn):
    """
    @return: the names of accounts that have a retention policy.
    """
    return [r[0] for r in conn.execute("SELECT username FROM users WHERE policy IS NOT NULL")]
