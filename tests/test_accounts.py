"""
Tests for L{backup_proto.server.accounts} and its SQLite storage.
"""

import os
import sqlite3

from backup_proto.server.accounts import (
    AUTH_FAILED_TEXT,
    SALT_SIZE,
    AccountStore,
    checkPassword,
    checkUsername,
    deriveKey,
)
from backup_proto.server.database import Database
from backup_proto.wire.errors import Code, ProtocolError
from tests.helpers import ManualRunner, TestCase, runNow


class NameTests(TestCase):
    def test_good(self):
        """
        Lowercase letters, digits, '.', '_' and '-' are fine, 1 to 32 long.
        """
        for name in ("a", "alice", "a.b_c-d", "0day", "_x", "x" * 32):
            self.assertEqual(checkUsername(name), name)

    def test_bad(self):
        """
        Anything else is refused with a clear error, including names that
        try to escape or look alike.
        """
        for name in (
            "",
            ".",
            "..",
            "../x",
            "/etc",
            "-x",
            ".x",
            "A",
            "x" * 33,
            "a b",
            "a\x00",
            "a/b",
            "ａlice",
            "alıce",
            "a\\b",
            None,
            3,
        ):
            e = self.assertRaises(ProtocolError, checkUsername, name)
            self.assertEqual(e.code, Code.BAD_USERNAME)
            self.assertIn("1 to 32 characters", e.message)

    def test_password(self):
        """
        Passwords are 1 to 1024 bytes of UTF-8; NUL and emoji are fine.
        """
        self.assertEqual(checkPassword("p\x00🙂"), "p\x00🙂".encode())
        checkPassword("x" * 1024)
        for bad in ("", "x" * 1025, "é" * 513):
            e = self.assertRaises(ProtocolError, checkPassword, bad)
            self.assertEqual(e.code, Code.BAD_PASSWORD)


class StoreTests(TestCase):
    def setUp(self):
        super().setUp()
        self.path = os.path.abspath("user.db")
        self.db = Database(self.path, runNow)
        self.store = AccountStore(self.db, runNow, iterations=1234)

    def tearDown(self):
        self.db.close()

    def test_storage(self):
        """
        A registered account stores a 32-byte salt, the PBKDF2 key and the
        iteration count, never the password; the file is mode 0600.
        """
        self.successResultOf(self.store.register("alice", "correct horse"))
        conn = sqlite3.connect(self.path)
        salt, key, iterations = conn.execute(
            "SELECT salt, key, iterations FROM users WHERE username='alice'"
        ).fetchone()
        conn.close()
        self.assertEqual(len(salt), SALT_SIZE)
        self.assertEqual(iterations, 1234)
        self.assertEqual(key, deriveKey(b"correct horse", salt, 1234))
        with open(self.path, "rb") as f:
            self.assertNotIn(b"correct horse", f.read())
        self.assertEqual(os.stat(self.path).st_mode & 0o777, 0o600)

    def test_iterationsPerRow(self):
        """
        Raising the default later does not break older accounts.
        """
        self.successResultOf(self.store.register("alice", "pw"))
        self.store.iterations = 2000
        self.assertTrue(self.successResultOf(self.store.authenticate("alice", "pw")))

    def test_authenticate(self):
        """
        The right password passes; a wrong one and an unknown user fail
        alike (C{False}); malformed names also just fail.
        """
        self.successResultOf(self.store.register("alice", "pw"))
        self.assertTrue(self.successResultOf(self.store.authenticate("alice", "pw")))
        self.assertFalse(self.successResultOf(self.store.authenticate("alice", "PW")))
        self.assertFalse(self.successResultOf(self.store.authenticate("bob", "pw")))
        self.assertFalse(self.successResultOf(self.store.authenticate("../x", "pw")))

    def test_unknownUserCostsAHash(self):
        """
        An unknown user is hashed with the same work as a wrong password.
        """
        calls = []

        def countingCPU(f, *args):
            calls.append(args[2])
            return runNow(f, *args)

        store = AccountStore(self.db, countingCPU, iterations=1234)
        self.successResultOf(store.register("alice", "pw"))
        self.successResultOf(store.authenticate("alice", "bad"))
        self.successResultOf(store.authenticate("nobody", "bad"))
        self.assertEqual(calls, [1234, 1234, 1234])

    def test_longPasswordRefusedBeforeHashing(self):
        """
        A 1 MiB password is refused without any hashing.
        """
        calls = []
        store = AccountStore(self.db, lambda *a: calls.append(a), iterations=1234)
        f = self.failureResultOf(store.authenticate("alice", "x" * (1 << 20)), ProtocolError)
        self.assertEqual(f.value.code, Code.BAD_PASSWORD)
        self.assertEqual(calls, [])

    def test_taken(self):
        """
        Registering a taken name fails with name-taken.
        """
        self.successResultOf(self.store.register("alice", "pw"))
        f = self.failureResultOf(self.store.register("alice", "other"), ProtocolError)
        self.assertEqual(f.value.code, Code.NAME_TAKEN)

    def test_simultaneousRegistration(self):
        """
        Two registrations of one name that interleave (both see the name
        free): exactly one wins, and its password is the one stored.
        """
        runner = ManualRunner()
        store = AccountStore(Database(self.path, runner), runner, iterations=1000)
        first = store.register("carol", "one")
        second = store.register("carol", "two")
        runner.runAll()
        outcomes = []
        for d in (first, second):
            box = []
            d.addBoth(box.append)
            outcomes.append(box[0])
        wins = [o for o in outcomes if o is None]
        losses = [o for o in outcomes if o is not None]
        self.assertEqual(len(wins), 1)
        self.assertEqual(len(losses), 1)
        self.assertEqual(losses[0].value.code, Code.NAME_TAKEN)
        self.assertTrue(self.successResultOf(self.store.authenticate("carol", "one")))

    def test_sameErrorText(self):
        """
        The failed-login text names neither cause.
        """
        self.assertEqual(AUTH_FAILED_TEXT, "invalid username or password")
