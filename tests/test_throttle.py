"""
Per-account login delays and load shedding of password hashing.
"""

import os

from twisted.internet.task import Clock

from backup_proto.server.accounts import AccountStore
from backup_proto.server.database import Database
from backup_proto.server.throttle import LoginThrottle
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import Msg
from tests.helpers import ManualRunner, TestCase, makeFactory, runNow
from tests.wire import Wire


class ThrottleTests(TestCase):
    def test_growingDelay(self):
        """
        Three failures are free; then the delay doubles up to the maximum;
        success clears it; old failures are forgotten.
        """
        clock = Clock()
        t = LoginThrottle(clock, freeFailures=3, baseDelay=1, maxDelay=8, forgetAfter=100)
        delays = []
        for _ in range(8):
            delays.append(t.delayFor("alice"))
            t.failed("alice")
        self.assertEqual(delays, [0, 0, 0, 1, 2, 4, 8, 8])
        self.assertEqual(t.delayFor("bob"), 0)
        t.succeeded("alice")
        self.assertEqual(t.delayFor("alice"), 0)
        for _ in range(5):
            t.failed("carol")
        clock.advance(101)
        self.assertEqual(t.delayFor("carol"), 0)

    def test_bounded(self):
        """
        The table forgets the oldest names beyond its size.
        """
        t = LoginThrottle(Clock(), freeFailures=1, maxTracked=3)
        for name in "abcd":
            t.failed(name)
        self.assertEqual(t.delayFor("a"), 0)
        self.assertGreater(t.delayFor("d"), 0)


class ServerDelayTests(TestCase):
    def test_accountDelayedNotOthers(self):
        """
        After three failed logins on other connections, a fourth login for
        the same account waits on a timer; another user's login does not.
        """
        factory = makeFactory(os.path.abspath("data"))
        Wire(factory).register("alice")
        Wire(factory).register("bob")
        for _ in range(3):
            Wire(factory).login("alice", "wrong")
        slow = Wire(factory)
        slow.sendControl(Msg.LOGIN, user="alice", password="pw")
        self.assertEqual(slow.received(), [])
        fast = Wire(factory)
        self.assertEqual(fast.login("bob", "pw"), (Msg.OK, {"user": "bob"}))
        factory.clock.advance(1)
        self.assertEqual(slow.last(), (Msg.OK, {"user": "alice"}))


class SheddingTests(TestCase):
    def test_busy(self):
        """
        When more hashes wait than allowed, new logins are refused as busy
        instead of queueing; they do not count as failed passwords.
        """
        runner = ManualRunner()
        db = Database(os.path.abspath("user.db"), runNow)
        store = AccountStore(db, runner, iterations=1000, concurrency=1, maxQueued=2)
        running = [store.authenticate("x", "pw") for _ in range(3)]
        shed = store.authenticate("x", "pw")
        f = self.failureResultOf(shed, ProtocolError)
        self.assertEqual(f.value.code, Code.BUSY)
        runner.runAll()
        for d in running:
            self.assertFalse(self.successResultOf(d))
        db.close()
