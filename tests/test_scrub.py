"""
Scrubbing (L{backup_proto.server.scrub}): in process on snapshots stored
by the real protocol, through C{backup-admin check}, and the server's
background service on a clock.
"""

import os
import threading

import pytest
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from backup_proto.server import scrub as scrubModule
from backup_proto.server.admin import run as admin
from backup_proto.server.scrub import (
    Scrubber,
    ScrubReport,
    ScrubService,
    ScrubStopped,
    readStatus,
)
from tests.test_e2e import EndToEndCase
from tests.test_incremental import IncrementalCase


def flipByte(path, at=0):
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


class ScrubTests(IncrementalCase):
    def setUp(self):
        super().setUp()
        client = self.keyed()
        self.first = self.fullBackup(client)["id"]
        _plan, d = self.incremental(client, self.parentOf(client, self.first))
        self.second = self.successResultOf(d)["id"]
        self.stored1 = os.path.join(self.data, "users", "alice", self.first)

    def scrub(self, readData=True, **kwargs):
        return self.factory.store.db.runSync(Scrubber(self.data, readData, **kwargs).run)

    def aFile(self):
        """
        @return: the manifest path of a file of some bytes both snapshots
            share (the second kept it).
        """
        for dirpath, _dirs, files in os.walk(self.stored1):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                if not os.path.islink(path) and os.path.getsize(path) > 0:
                    self.assertGreater(os.stat(path).st_nlink, 1)
                    return os.path.relpath(path, self.stored1)
        self.fail("no shared file")

    def test_clean(self):
        report = self.scrub()
        self.assertEqual(report.problems, [])
        self.assertEqual((report.accounts, report.snapshots), (1, 2))
        self.assertGreater(report.entries, 10)

    def test_eachInodeReadOnce(self):
        """
        Two snapshots of one tree share every file: each is read once.
        """
        files = len(
            {
                os.lstat(os.path.join(dirpath, n)).st_ino
                for dirpath, _d, names in os.walk(self.stored1)
                for n in names
                if not os.path.islink(os.path.join(dirpath, n))
            }
        )
        report = self.scrub()
        self.assertEqual(report.filesRead, files)

    def test_flippedByte(self):
        """
        A flipped byte in a stored file is found by reading, not without;
        it is reported with both snapshots that share it.
        """
        path = self.aFile()
        flipByte(os.path.join(self.stored1, path))
        self.assertEqual(self.scrub(readData=False).problems, [])
        (problem,) = self.scrub().problems
        self.assertIn("file content is damaged", problem.what)
        self.assertEqual(sorted(problem.where), [(self.first, path), (self.second, path)])
        self.assertIn(f"{self.first}:{path}", problem.line())

    def test_structure(self):
        """
        Without reading data: a missing file, a file of another size, a
        link changed, a damaged manifest, a missing snapshot folder.
        """
        path = self.aFile()
        os.unlink(os.path.join(self.stored1, path))
        stored2 = os.path.join(self.data, "users", "alice", self.second)
        with open(os.path.join(stored2, path), "ab") as f:
            f.write(b"more")
        found = self.scrub(readData=False).problems
        self.assertEqual(
            sorted((p.what, p.where[0][0]) for p in found),
            [
                ("file is missing", self.first),
                (
                    f"has {os.path.getsize(os.path.join(stored2, path))} bytes, the manifest says "
                    f"{os.path.getsize(os.path.join(stored2, path)) - 4}",
                    self.second,
                ),
            ],
        )
        manifest = os.path.join(self.data, "users", "alice", ".manifests", self.second)
        with open(manifest, "r+b") as f:
            f.truncate(10)
        os.rename(self.stored1, self.stored1 + ".gone")
        found = self.scrub(readData=False).problems
        whats = sorted(p.what.split(" (")[0] for p in found)
        self.assertEqual(whats, ["manifest is damaged", "snapshot folder is missing"])

    def test_unreadable(self):
        """
        A file that cannot be read (a failing disk answers EIO) is one
        problem, named with every snapshot that shares it; the scrub
        goes on.
        """
        path = self.aFile()
        real = open

        def failing(name, *args, **kwargs):
            if name.endswith(path):
                raise OSError(5, "Input/output error")
            return real(name, *args, **kwargs)

        # the module's own name shadows the builtin for its reads only
        scrubModule.open = failing
        self.addCleanup(delattr, scrubModule, "open")
        (problem,) = self.scrub().problems
        self.assertEqual(problem.what, "file cannot be read (Input/output error)")
        self.assertEqual(sorted(problem.where), [(self.first, path), (self.second, path)])

    def test_rate(self):
        """
        Reads are held to the rate: the scrub sleeps as far as it runs
        ahead of it.
        """
        slept = []
        report = self.scrub(rate=1000, sleep=slept.append)
        self.assertGreater(report.bytesRead, 10_000)
        self.assertGreater(len(slept), 0)
        self.assertTrue(all(0 < s <= 1.0 for s in slept))

    def test_stop(self):
        stop = threading.Event()
        stop.set()
        self.assertRaises(ScrubStopped, self.scrub, stop=stop)

    def test_adminCheck(self):
        """
        C{backup-admin check} exits 0 when all is well, 1 with a line per
        problem, and keeps the result for the metrics.
        """
        self.assertEqual(admin(["--data-dir", self.data, "check", "--read-data"]), 0)
        path = self.aFile()
        flipByte(os.path.join(self.stored1, path))
        self.assertEqual(admin(["--data-dir", self.data, "check"]), 0)
        self.assertEqual(admin(["--data-dir", self.data, "check", "alice", "--read-data"]), 1)
        status = readStatus(self.data)
        self.assertEqual((status["problems"], status["readData"]), (1, True))
        self.assertEqual(admin(["--data-dir", self.data, "check", "nobody"]), 1)


class ScrubServiceTests(IncrementalCase):
    def test_schedule(self):
        """
        The first scrub comes an interval after the start, then one every
        interval; stopping stops the one under way and waits for it.
        """
        clock = Clock()
        calls = []
        pending = []

        def scrub(dataDir, readData, rate, stop):
            calls.append((dataDir, readData, rate))
            return ScrubReport(readData)

        service = ScrubService(self.data, 60, 1000, clock, scrub=scrub)
        ran = []
        service._run = lambda: ran.append(clock.seconds()) or pending.append(Deferred())
        service.startService()
        clock.advance(59)
        self.assertEqual(ran, [])
        clock.advance(1)
        clock.advance(60)
        self.assertEqual(ran, [60, 120])
        service.stopService()
        self.assertTrue(service._stop.is_set())

    def test_runLogsProblems(self):
        """
        A background scrub reads the data; each problem is one warning in
        the log; the status file says what the last scrub found.
        """
        client = self.keyed()
        snapshot = self.fullBackup(client)["id"]
        stored = os.path.join(self.data, "users", "alice", snapshot)
        damaged = next(
            os.path.join(dirpath, name)
            for dirpath, _dirs, files in os.walk(stored)
            for name in sorted(files)
            if not os.path.islink(os.path.join(dirpath, name))
            and os.path.getsize(os.path.join(dirpath, name))
        )
        flipByte(damaged)
        logged = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        service = ScrubService(
            self.data, 3600, None, Clock(), runInThread=lambda f, *a: maybeDeferred(f, *a)
        )
        service.startService()
        self.addCleanup(service.stopService)
        self.successResultOf(service._run())
        warnings = [e for e in logged if "scrub: " in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertIn(os.path.relpath(damaged, stored), warnings[0]["problem"])
        status = readStatus(self.data)
        self.assertEqual((status["problems"], status["readData"]), (1, True))


@pytest.mark.slow
class BackgroundScrubEndToEndTests(EndToEndCase):
    serverArgs = ("--scrub-interval", "0.5", "--scrub-rate", "1G")

    def test_findsFlippedByte(self):
        """
        A real server's background scrub logs a flipped byte with the
        snapshots that share the file, and its status file says so.
        """
        os.makedirs("src")
        with open("src/a.bin", "wb") as f:
            f.write(os.urandom(100_000))
        self.ok("register")
        first = self.ok("backup", "src").stdout.strip()
        second = self.ok("backup", "src").stdout.strip()  # keeps a.bin: one inode
        flipByte(os.path.join(self.server.dataDir, "users", "alice", first, "src", "a.bin"), 500)
        self.waitForServerLog("alice: file content is damaged")
        line = next(
            line for line in self.server.logText().splitlines() if "content is damaged" in line
        )
        self.assertIn(f"{first}:src/a.bin", line)
        self.assertIn(f"{second}:src/a.bin", line)
        self.assertEqual(readStatus(self.server.dataDir)["problems"], 1)
