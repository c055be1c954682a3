"""
The client plans a backup's zip while it logs in, and keeps the connection
alive if planning takes longer.
"""

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from backup_client.cli import _planDone
from tests.helpers import TestCase


class PlanDoneTests(TestCase):
    def test_timeout(self):
        """
        Planning that has not finished after the interval gives C{False}.
        """
        clock, planning = Clock(), Deferred()
        d = _planDone(clock, planning, 50)
        self.assertNoResult(d)
        clock.advance(50)
        self.assertIs(self.successResultOf(d), False)
        planning.callback("plan")
        self.assertEqual(self.successResultOf(planning), "plan")

    def test_finished(self):
        """
        Planning that finishes (or fails) first gives C{True} and keeps its
        own result; the timer is cancelled.
        """
        clock, planning = Clock(), Deferred()
        d = _planDone(clock, planning, 50)
        planning.errback(ValueError("unreadable"))
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.failureResultOf(planning, ValueError)

    def test_alreadyFinished(self):
        clock = Clock()
        planning = Deferred()
        planning.callback("plan")
        self.assertIs(self.successResultOf(_planDone(clock, planning, 50)), True)
