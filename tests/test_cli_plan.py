"""
The client plans a backup's zip while it logs in, and keeps the connection
alive if planning takes longer; a plan that loses a worker process ends
with a clear message.
"""

import sys

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from backup_client.commands.backup import (
    PLAN_SWITCH_INTERVAL,
    _planDone,
    _planInThread,
    backupResult,
    backupSummary,
)
from backup_proto.archive.index import ArchiveReport
from backup_proto.archive.plan import ParentFiles, planArchive
from backup_proto.units import humanSize, parseSize
from tests.helpers import TestCase


class PlanInThreadTests(TestCase):
    def planWith(self, outcome):
        """
        Plan through a stand-in thread runner, then end the plan with
        C{outcome} (a result, or a failure).

        @return: the switch interval before the plan, while it ran and
            after it, and the plan's L{Deferred}.
        """
        previous = sys.getswitchinterval()
        self.addCleanup(sys.setswitchinterval, previous)
        calls = []
        pending = Deferred()

        def runInThread(f, *args, **kwargs):
            calls.append((f, args, kwargs))
            return pending

        planning = _planInThread(runInThread, "path", "name", "auto", None, stop="stop")
        during = sys.getswitchinterval()
        self.assertEqual(calls, [(planArchive, ("path", "name", "auto", None), {"stop": "stop"})])
        if isinstance(outcome, Exception):
            pending.errback(outcome)
        else:
            pending.callback(outcome)
        return previous, during, sys.getswitchinterval(), planning

    def test_switchIntervalWhilePlanning(self):
        """
        The switch interval is L{PLAN_SWITCH_INTERVAL} while the plan runs
        and the previous one once it is done; the plan passes through.
        """
        previous, during, after, planning = self.planWith("plan")
        self.assertNotEqual(previous, PLAN_SWITCH_INTERVAL)
        self.assertEqual(during, PLAN_SWITCH_INTERVAL)
        self.assertEqual(after, previous)
        self.assertEqual(self.successResultOf(planning), "plan")

    def test_switchIntervalAfterFailure(self):
        """
        A plan that fails also gives the switch interval back.
        """
        previous, during, after, planning = self.planWith(ValueError("unreadable"))
        self.assertEqual(after, previous)
        self.failureResultOf(planning, ValueError)


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


class PlanWorkerLostTests(TestCase):
    def test_message(self):
        """
        A plan that lost a worker process ends the backup with exit code 1
        and a message that says nothing was sent, not a traceback.
        """
        from concurrent.futures.process import BrokenProcessPool

        from backup_client.cli import EXIT_ERROR, _errorResult

        code, message = _errorResult(BrokenProcessPool("a child process terminated"))
        self.assertEqual(code, EXIT_ERROR)
        self.assertIn("nothing was sent", message)


class SummaryTests(TestCase):
    def test_humanSize(self):
        for n, text in (
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (5 << 20, "5.0 MiB"),
            (3 << 30, "3.0 GiB"),
            (2 << 40, "2.0 TiB"),
            (4096 << 40, "4096.0 TiB"),
        ):
            self.assertEqual(humanSize(n), text)

    def test_parseSize(self):
        for text, n in (
            ("123", 123),
            ("10G", 10 << 30),
            ("1.5k", 1536),
            ("512MiB", 512 << 20),
            ("2 TB", 2 << 40),
        ):
            self.assertEqual(parseSize(text), n)
        for bad in ("", "G", "-1G", "10X", "1e3"):
            self.assertRaises(ValueError, parseSize, bad)

    def test_incrementalResult(self):
        """
        An incremental backup's result counts deleted files as the parent's
        files neither kept nor changed; the summary line says the same.
        """
        parent = ParentFiles("docs-1")
        for i in range(10):
            parent.add((f"docs/f{i}", "file", 1, 1, 0o644, None, 0, None, None))
        parent.add(("docs", "dir", 0, 1, 0o755, None, None, None, None))
        report = ArchiveReport(filesNew=2, filesChanged=3, filesUnchanged=6)
        snapshot = {"id": "docs-2", "parent": "docs-1", "added": 2048, "files": 11}
        result = backupResult(snapshot, 1536, report, parent)
        self.assertEqual(
            [result[k] for k in ("files_new", "files_changed", "files_unchanged", "files_deleted")],
            [2, 3, 6, 1],
        )
        self.assertEqual(
            backupSummary(result),
            "docs-2: 2 new, 3 changed, 6 unchanged, 1 deleted files; sent 1.5 KiB,"
            " stored 2.0 KiB (parent: docs-1)",
        )
