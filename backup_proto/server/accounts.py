# -*- test-case-name: tests.test_accounts -*-
"""
Accounts: usernames, passwords and PBKDF2-HMAC-SHA256 keys in SQLite.

The server stores a random 32-byte salt, the derived key and the iteration
count per row, never the password.  Hashing runs in the CPU pool behind a
semaphore (a login storm queues instead of starving the reactor); every
query runs on the database thread.  An unknown user costs the same hash as
a wrong password and gets the same answer.
"""

import datetime
import hashlib
import hmac
import os
import re
import sqlite3

from twisted.internet.defer import DeferredSemaphore, inlineCallbacks

from backup_proto.server.catalog import setPassword
from backup_proto.wire.errors import Code, ProtocolError

DEFAULT_ITERATIONS = 600_000
SALT_SIZE = 32
KEY_SIZE = 32
MAX_PASSWORD_BYTES = 1024

#: 1 to 32 of a-z 0-9 . _ - , not starting with . or -.
USERNAME_RE = re.compile(r"[a-z0-9_][a-z0-9._-]{0,31}\Z")

#: The one answer to a failed login, whatever the reason.
AUTH_FAILED_TEXT = "invalid username or password"


def checkUsername(name):
    """
    @raise ProtocolError: (L{Code.BAD_USERNAME}) unless C{name} is 1 to 32
        characters of lowercase ASCII letters, digits, C{.}, C{_} and C{-},
        not starting with C{.} or C{-}.
    """
    if not isinstance(name, str) or not USERNAME_RE.match(name):
        raise ProtocolError(
            Code.BAD_USERNAME,
            "username must be 1 to 32 characters of a-z, 0-9, '.', '_' or '-',"
            " not starting with '.' or '-'",
        )
    return name


def checkPassword(password):
    """
    @raise ProtocolError: (L{Code.BAD_PASSWORD}) for an empty password or
        one over 1024 bytes of UTF-8 (refused before any hashing).
    @return: the password as UTF-8 bytes.
    """
    data = password.encode("utf-8", "surrogatepass") if isinstance(password, str) else b""
    if not 1 <= len(data) <= MAX_PASSWORD_BYTES:
        raise ProtocolError(
            Code.BAD_PASSWORD, f"password must be 1 to {MAX_PASSWORD_BYTES} bytes of UTF-8"
        )
    return data


def deriveKey(password, salt, iterations):
    """
    @return: PBKDF2-HMAC-SHA256 of C{password} (bytes), 32 bytes.
    """
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations, KEY_SIZE)


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def insertUser(conn, name, salt, key, iterations):
    """
    Add an account row (on the database thread).

    @return: C{False} if the name is taken.
    """
    try:
        conn.execute(
            "INSERT INTO users (username, salt, key, iterations, created) VALUES (?, ?, ?, ?, ?)",
            (name, salt, key, iterations, _now()),
        )
    except sqlite3.IntegrityError:
        return False
    return True


def _userExists(conn, name):
    return conn.execute("SELECT 1 FROM users WHERE username = ?", (name,)).fetchone() is not None


def _fetchUser(conn, name):
    return conn.execute(
        "SELECT salt, key, iterations, disabled FROM users WHERE username = ?", (name,)
    ).fetchone()


def newKey(password, iterations):
    """
    @return: C{(salt, key)} for a new password (bytes), hashing now
        (blocking).
    """
    salt = os.urandom(SALT_SIZE)
    return salt, deriveKey(password, salt, iterations)


class AccountStore:
    """
    Registration and password checks.

    @ivar iterations: PBKDF2 iterations for new accounts.
    @ivar _hashing: bounds concurrent hashes to the CPU pool's size.
    @ivar maxQueued: how many hashes may wait before logins are shed.
    @ivar _dummy: salt and key hashed for unknown users, so that they cost
        the same as a wrong password.
    """

    def __init__(self, db, runCPU, iterations=DEFAULT_ITERATIONS, concurrency=2, maxQueued=256):
        """
        @param concurrency: hashes running at once (the CPU pool's size).
        @param maxQueued: hashes allowed to wait; past that, requests are
            shed with L{Code.BUSY} instead of queueing without bound.
        """
        self._db = db
        self._runCPU = runCPU
        self.iterations = iterations
        self.maxQueued = maxQueued
        self._hashing = DeferredSemaphore(concurrency)
        self._dummy = (os.urandom(SALT_SIZE), os.urandom(KEY_SIZE))

    @property
    def queued(self):
        """
        Password checks waiting for a CPU thread.
        """
        return len(self._hashing.waiting)

    def _hash(self, password, salt, iterations):
        if len(self._hashing.waiting) >= self.maxQueued:
            raise ProtocolError(Code.BUSY, "server busy, try again later")
        return self._hashing.run(self._runCPU, deriveKey, password, salt, iterations)

    @inlineCallbacks
    def register(self, name, password):
        """
        Create an account.  Of two simultaneous registrations of one name,
        exactly one wins (the C{INSERT} on the primary key decides).

        @raise ProtocolError: bad name or password, or the name is taken.
        """
        checkUsername(name)
        data = checkPassword(password)
        if (yield self._db.run(_userExists, name)):
            raise ProtocolError(Code.NAME_TAKEN, f"username {name!r} is taken")
        salt = os.urandom(SALT_SIZE)
        key = yield self._hash(data, salt, self.iterations)
        inserted = yield self._db.run(insertUser, name, salt, key, self.iterations)
        if not inserted:
            raise ProtocolError(Code.NAME_TAKEN, f"username {name!r} is taken")

    @inlineCallbacks
    def authenticate(self, name, password):
        """
        Check a login.  A malformed name is not revealed as such: it is
        hashed against the dummy key and refused like any other failure.
        That an account is disabled is said only to who knows its password.

        @raise ProtocolError: (L{Code.BAD_PASSWORD}) for an over-long
            password, refused before hashing; (L{Code.ACCOUNT_DISABLED})
            for the right password of a disabled account.
        @return: a L{Deferred} firing C{True} or C{False}.
        """
        data = checkPassword(password)
        row = None
        if isinstance(name, str) and USERNAME_RE.match(name):
            row = yield self._db.run(_fetchUser, name)
        if row is None:
            salt, stored, iterations = self._dummy[0], self._dummy[1], self.iterations
        else:
            salt, stored, iterations, _disabled = row
        derived = yield self._hash(data, salt, iterations)
        ok = hmac.compare_digest(derived, stored) and row is not None
        if ok and row[3]:
            raise ProtocolError(
                Code.ACCOUNT_DISABLED, "this account is disabled: ask the server's operator"
            )
        return ok

    @inlineCallbacks
    def changePassword(self, name, old, new):
        """
        Set a new password for an account, given its old one.

        @raise ProtocolError: C{bad-password} for an unfit new password,
            C{auth-failed} for a wrong old one.
        """
        data = checkPassword(new)
        if not (yield self.authenticate(name, old)):
            raise ProtocolError(Code.AUTH_FAILED, "the old password is wrong")
        salt = os.urandom(SALT_SIZE)
        key = yield self._hash(data, salt, self.iterations)
        yield self._db.run(setPassword, name, salt, key, self.iterations)
