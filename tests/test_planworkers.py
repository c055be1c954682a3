"""
Tests for L{backup_client.planworkers}, and for plans whose small files are
planned in worker processes (L{backup_proto.archive.plan.planArchive}'s
C{workers}).

The workers fork only from a process without other threads, and this test
process has some; so the forking itself is tested in child interpreters,
and in-process tests give C{planArchive} workers that are spawned.
"""

import dataclasses
import errno
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from backup_client import planworkers
from backup_proto.archive import plan as planModule
from backup_proto.archive.compression import SAMPLE_SIZE
from backup_proto.archive.plan import planArchive
from backup_proto.archive.spool import Spool
from backup_proto.archive.stream import ArchiveStream
from tests.helpers import TestCase, makeTrickyTree
from tests.test_zipstream import readAll

#: Run in a child interpreter: fork workers, plan the folder argv[1] with
#: them, and print what the test checks.
_CHILD_PLAN = """
import json, os, signal, sys, threading
from backup_client.planworkers import startPlanWorkers
from backup_proto.archive.plan import planArchive
# as the client's reactor does before a backup starts
signal.signal(signal.SIGTERM, lambda *args: None)
wakeup = os.pipe()[1]
os.set_blocking(wakeup, False)
signal.set_wakeup_fd(wakeup)
def workerSignals():
    return (signal.getsignal(signal.SIGINT) == signal.SIG_IGN,
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.set_wakeup_fd(-1))
before = threading.active_count()
workers = startPlanWorkers()
pids = list(workers.pool._processes)
signals = [workers.pool.submit(workerSignals).result() for _ in range(8)]
planned = []
original = workers.pool.submit
def submit(f, *args):
    planned.append(f.__name__)
    return original(f, *args)
workers.pool.submit = submit
plan = planArchive(sys.argv[1], workers=workers.pool)
workers.close()
print(json.dumps({"before": before, "pids": pids, "signals": signals, "tasks": planned,
                  "size": plan.size, "files": plan.report.files}))
"""

#: Run in a child interpreter: fork workers, print their pids, and wait to
#: be killed.
_CHILD_WAIT = """
import json, sys, time
from backup_client.planworkers import startPlanWorkers
workers = startPlanWorkers()
print(json.dumps(list(workers.pool._processes)), flush=True)
time.sleep(60)
"""


def _alive(pid):
    """
    Whether process C{pid} exists and has not exited (a zombie has).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _makeTree(root):
    """
    A tricky tree with many small files, and files over L{SAMPLE_SIZE}
    that compress and that do not (left to the plan's threads).
    """
    makeTrickyTree(root)
    for i in range(3):
        folder = os.path.join(root, f"many{i}")
        os.mkdir(folder)
        for j in range(40):
            with open(os.path.join(folder, f"f{j:02}.txt"), "w") as f:
                f.write(f"line {i} {j}\n" * (j * 20 + 1))
    rng = random.Random(11)
    words = ["backup", "restore", "zip", "twisted", "tls", "snapshot", "plan", "worker"]
    with open(os.path.join(root, "large.txt"), "w") as f:
        f.write(" ".join(rng.choice(words) for _ in range(3 * SAMPLE_SIZE // 6)))
    return root


def _withoutSpool(entry):
    """
    C{entry} with only whether its stream was kept, not where.
    """
    return dataclasses.replace(entry, spooled=entry.spooled is not None)


class WorkerPlanTests(TestCase):
    def setUp(self):
        super().setUp()
        self.src = _makeTree(os.path.abspath("src"))
        self.pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
        self.addCleanup(self.pool.shutdown)

    def test_samePlan(self):
        """
        With workers, a plan has the same entries, report and size as one
        made by threads, and its zip is byte for byte the same; the file
        deflated as a stream is still kept in the spool.
        """
        for compression in ("auto", "store", "deflate"):
            threads = planArchive(self.src, compression=compression, spool=Spool())
            self.addCleanup(threads.close)
            workers = planArchive(
                self.src, compression=compression, spool=Spool(), workers=self.pool
            )
            self.addCleanup(workers.close)
            # where a stream lies in its spool depends on the threads' order
            self.assertEqual(
                [_withoutSpool(e) for e in workers.entries],
                [_withoutSpool(e) for e in threads.entries],
            )
            self.assertEqual(workers.report, threads.report)
            self.assertEqual(workers.size, threads.size)
            self.assertEqual(readAll(ArchiveStream(workers)), readAll(ArchiveStream(threads)))
            spooled = [e.name for e in workers.entries if e.spooled is not None]
            self.assertEqual(
                spooled,
                {
                    "auto": [b"src/large.txt"],
                    "store": [],
                    "deflate": [b"src/large.txt", b"src/random.bin", b"src/text.log"],
                }[compression],
            )
        self.assertEqual(workers.report.files, 7 + 120 + 1)

    def test_largeFilesLeftToThreads(self):
        """
        Workers plan the small files and leave each file that is read in
        blocks to the plan's threads, unread.
        """
        calls = []
        planFile = planModule._planFile

        def spy(path, arcname, st, compression, spool, leaveLarge=False):
            calls.append((os.path.basename(path), leaveLarge))
            return planFile(path, arcname, st, compression, spool, leaveLarge)

        self.patch(planModule, "_planFile", spy)
        planArchive(self.src, workers=self.pool)
        # the workers' calls happen in their processes, not through the spy
        self.assertEqual(
            sorted(calls), [("large.txt", False), ("random.bin", False), ("text.log", False)]
        )

    def test_leaveLarge(self):
        """
        Asked to leave large files, L{planModule._planFile} gives a file over
        L{SAMPLE_SIZE} back as a L{planModule._Later}, unless it is stored
        unread; it plans a smaller file as usual.
        """
        large = os.path.join(self.src, "large.txt")
        self.assertEqual(
            planModule._planFile(large, "src/large.txt", None, "auto", None, True),
            planModule._Later(large, "src/large.txt"),
        )
        stored = planModule._planFile(large, "src/large.txt", None, "store", None, True)
        self.assertEqual((stored.method, stored.csize), (0, os.path.getsize(large)))
        small = planModule._planFile(
            os.path.join(self.src, "notes.txt"), "src/notes.txt", None, "auto", None, True
        )
        self.assertEqual(small.method, 8)


class StartPlanWorkersTests(TestCase):
    def child(self, script, *args):
        return subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60
        )

    def test_forkedWhenAlone(self):
        """
        In a process without other threads, L{planworkers.startPlanWorkers}
        forks two workers that ignore SIGINT, end on SIGTERM and do not
        wake the client's reactor; a plan gives them its folders' files,
        and closing them ends them.
        """
        src = _makeTree(os.path.abspath("src"))
        done = self.child(_CHILD_PLAN, src)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stderr, "")
        report = json.loads(done.stdout)
        self.assertEqual(report["before"], 1)
        self.assertEqual(len(report["pids"]), 2)
        self.assertEqual({tuple(s) for s in report["signals"]}, {(True, True, -1)})
        self.assertEqual(set(report["tasks"]), {"_planFiles"})
        self.assertEqual(report["files"], 7 + 120 + 1)
        self.assertEqual(report["size"], planArchive(src).size)
        for pid in report["pids"]:
            self.assertFalse(_alive(pid))

    def test_notWithThreads(self):
        """
        In a process with another thread, no worker is forked.
        """
        release = threading.Event()
        other = threading.Thread(target=release.wait)
        other.start()
        self.addCleanup(other.join)
        self.addCleanup(release.set)
        self.assertIsNone(planworkers.startPlanWorkers())

    def test_refused(self):
        """
        If the system refuses to fork, no worker is left, neither end of the
        pipe stays open, and the plan runs in threads.
        """

        def refuse():
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        pipes = []
        pipe = os.pipe

        def recordPipe():
            pipes.append(pipe())
            return pipes[-1]

        self.patch(os, "fork", refuse)
        self.patch(os, "pipe", recordPipe)
        self.assertRaises(OSError, planworkers.PlanWorkers, 2)
        watched = [pipes[0]]  # the workers' pipe is made first, the pool's after
        del pipes[:]
        self.patch(threading, "active_count", lambda: 1)
        self.assertIsNone(planworkers.startPlanWorkers())
        watched.append(pipes[0])
        for fd in [fd for ends in watched for fd in ends]:
            self.assertRaises(OSError, os.fstat, fd)

    def test_endWithKilledClient(self):
        """
        Workers exit soon after their client is killed with SIGKILL.
        """
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD_WAIT], stdout=subprocess.PIPE, text=True
        )
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        pids = json.loads(child.stdout.readline())
        self.assertEqual(len(pids), 2)
        self.assertTrue(all(_alive(pid) for pid in pids))
        os.kill(child.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.assertEqual([pid for pid in pids if _alive(pid)], [])
