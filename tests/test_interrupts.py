"""
Ctrl-C and SIGTERM: the mechanism in process, then the installed client
signalled once it has reached each stage (planning, a backup's transfer,
a restore's transfer): C{interrupted}, exit 130 or 143, nothing left
behind on either side.
"""

import io
import json
import os
import signal
import time
from contextlib import redirect_stderr

import pytest

from backup_client import cli, entry
from backup_client.interrupts import Interrupted, Interrupts
from tests.helpers import TestCase
from tests.test_e2e import EndToEndCase


class _Reactor:
    def callFromThread(self, f, *args):
        f(*args)


class MechanismTests(TestCase):
    def test_hooksOnce(self):
        """
        The first signal runs the hooks once, on the reactor; a hook added
        later runs at once; check raises from then on.
        """
        interrupts = Interrupts()
        interrupts._reactor = _Reactor()
        calls = []
        interrupts.onInterrupt(lambda: calls.append("a"))
        interrupts.check()
        interrupts._received(signal.SIGTERM, None)
        interrupts._received(signal.SIGINT, None)
        self.assertEqual(calls, ["a"])
        interrupts.onInterrupt(lambda: calls.append("b"))
        self.assertEqual(calls, ["a", "b"])
        e = self.assertRaises(Interrupted, interrupts.check)
        self.assertEqual((e.signum, e.exitCode), (signal.SIGTERM, 143))

    def test_prompt(self):
        """
        A signal while a password is asked for raises at once.
        """
        interrupts = Interrupts()
        with self.assertRaises(Interrupted):
            with interrupts.prompting():
                interrupts._received(signal.SIGINT, None)
        self.assertEqual(interrupts.signum, signal.SIGINT)

    def test_beforeTheReactor(self):
        """
        A signal while the client's modules load, or before its reactor
        runs, ends with the message and 130 or 143, not a traceback.
        """
        for raised, code in ((KeyboardInterrupt(), 130), (Interrupted(signal.SIGTERM), 143)):

            def fail(raised=raised):
                raise raised

            self.patch(cli, "main", fail)
            err = io.StringIO()
            with redirect_stderr(err):
                e = self.assertRaises(SystemExit, entry.main)
            self.assertEqual((e.code, err.getvalue()), (code, "backup-client: interrupted\n"))
        self.addCleanup(signal.signal, signal.SIGTERM, signal.SIG_DFL)


def _makeTree(root, dirs=40, files=500):
    for d in range(dirs):
        os.makedirs(os.path.join(root, str(d)))
        for i in range(files):
            with open(os.path.join(root, str(d), str(i)), "w") as f:
                f.write(f"{d}/{i} " * 20)


@pytest.mark.slow
class SignalTests(EndToEndCase):
    def spawn(self, *args):
        return self.spawnClient(*args, text=True)

    def waitFor(self, proc, reached, what):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if reached():
                return
            if proc.poll() is not None:
                self.fail(f"the client ended before {what}: {proc.communicate()}")
            time.sleep(0.002)
        self.fail(f"{what} never came")

    def interrupted(self, proc, signum, code):
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
        self.assertEqual(
            (proc.returncode, err.strip().splitlines()[-1]),
            (code, "backup-client: interrupted"),
            err,
        )
        self.assertNotIn("Traceback", err)
        return out, err

    def serverLogged(self, text):
        return lambda: text in self.server.logText()

    def assertServerClean(self):
        """
        The server stored nothing, and its staging area empties.
        """
        staging = os.path.join(self.server.dataDir, "users", "alice", ".staging")
        deadline = time.monotonic() + 30
        while os.path.exists(staging) and os.listdir(staging):
            self.assertLess(time.monotonic(), deadline, self.server.logText()[-3000:])
            time.sleep(0.05)

    def test_duringPlanning(self):
        """
        SIGINT while a folder is planned (its plan workers exist): nothing
        was sent, no temporary file is left.
        """
        _makeTree("tree")
        self.ok("register")
        proc = self.spawn("backup", "tree", "--full")

        def planning():
            tasks = os.path.join("/proc", str(proc.pid), "task")
            try:
                return any(
                    open(os.path.join(tasks, t, "children")).read().strip()
                    for t in os.listdir(tasks)
                )
            except OSError:
                return False

        self.waitFor(proc, planning, "planning")
        self.interrupted(proc, signal.SIGINT, 130)
        self.assertNotIn("backup of", self.server.logText())
        self.assertEqual(os.listdir(self.tmp), [])
        self.assertEqual(json.loads(self.ok("list", "--json").stdout), [])

    def test_duringBackupTransfer(self):
        """
        SIGTERM while a backup's data flows: exit 143, no snapshot, the
        server's staging goes.
        """
        self.makeBigSource()
        self.ok("register")
        proc = self.spawn("backup", "src")
        self.waitFor(proc, self.serverLogged("backup of"), "the transfer")
        self.interrupted(proc, signal.SIGTERM, 143)
        self.assertServerClean()
        self.assertEqual(json.loads(self.ok("list", "--json").stdout), [])
        self.assertEqual(os.listdir(self.tmp), [])

    def test_duringRestoreTransfer(self):
        """
        SIGINT while a restore arrives: exit 130, DEST as it was (here: not
        there at all).
        """
        self.makeBigSource()
        self.ok("register")
        self.ok("backup", "src")
        proc = self.spawn("restore", "dest")
        self.waitFor(proc, self.serverLogged(" sending "), "the restore")
        self.interrupted(proc, signal.SIGINT, 130)
        self.assertFalse(os.path.lexists("dest"))

    def test_duringPlacing(self):
        """
        SIGINT while a restore is being placed into DEST (merged into
        folders already there, a file at a time): the placing is finished,
        never left half done, then exit 130; no hidden staging folder stays.
        """
        folders = [f"d{i:02}" for i in range(40)]
        for folder in folders:
            os.makedirs(os.path.join("src", folder))
            for i in range(500):
                with open(os.path.join("src", folder, f"f{i:04}"), "w") as f:
                    f.write(folder)
        self.ok("register")
        self.ok("backup", "src")
        for folder in folders:
            os.makedirs(os.path.join("dest", "src", folder))
        first = os.path.join("dest", "src", folders[0], "f0000")
        last = os.path.join("dest", "src", folders[-1], "f0499")
        proc = self.spawn("restore", "dest")
        self.waitFor(proc, lambda: os.path.lexists(first), "placing")
        self.assertFalse(os.path.lexists(last), "the signal came after the placing")
        self.interrupted(proc, signal.SIGINT, 130)
        placed = sum(len(os.listdir(os.path.join("dest", "src", f))) for f in folders)
        self.assertEqual(placed, 40 * 500)
        self.assertEqual(sorted(os.listdir("dest")), ["src"])
