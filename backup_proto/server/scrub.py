# -*- test-case-name: tests.test_scrub -*-
"""
Scrubbing: checking that the catalog, the manifests and the stored files
still agree, and with C{readData} that every stored file still holds what
its manifest's CRC-32 says (blocking; C{backup-admin check}, and the
server's L{ScrubService} every C{--scrub-interval}).

Snapshots share files through hard links, so a file is read once however
many snapshots hold it (by inode), and a damaged one is reported with
every snapshot (and path) that shares it.  Reads are held to a rate, so
that a background scrub leaves the disk to uploads and restores.
"""

import datetime
import json
import os
import sqlite3
import stat
import threading
import time
from dataclasses import asdict, dataclass, field

from isal import isal_zlib
from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from backup_proto.archive.manifest import ManifestError, readEntries
from backup_proto.archive.policy import COPY_BLOCK
from backup_proto.server.catalog import LIVE, TRASH
from backup_proto.server.storage import MANIFESTS

log = Logger()

#: The last scrub's result, beside the catalog: written by whoever ran it
#: (the server or backup-admin), read by the metrics.
STATUS_FILE = "scrub-status.json"


class ScrubStopped(Exception):
    """
    The scrub was asked to stop (the server is stopping).
    """


@dataclass
class Problem:
    """
    One disagreement found.

    @ivar where: C{(snapshot id, path)} of every entry it touches: for a
        damaged file, every snapshot that shares it.
    """

    user: str
    what: str
    where: list

    def line(self):
        places = ", ".join(f"{snapshot}:{path}" for snapshot, path in self.where[:20])
        more = f" and {len(self.where) - 20} more" if len(self.where) > 20 else ""
        return f"{self.user}: {self.what}: {places}{more}"


@dataclass
class ScrubReport:
    """
    What a scrub checked and found.
    """

    readData: bool
    started: str = ""
    ended: str = ""
    accounts: int = 0
    snapshots: int = 0
    entries: int = 0
    filesRead: int = 0
    bytesRead: int = 0
    problems: list = field(default_factory=list)

    def toJSON(self):
        out = asdict(self)
        out["problems"] = [
            {"user": p.user, "what": p.what, "where": [list(w) for w in p.where]}
            for p in self.problems
        ]
        return out


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Scrubber:
    """
    Checks accounts' snapshots (blocking: a thread of its own).

    @param rate: bytes per second that C{readData} may read, or C{None}.
    @param stop: a C{threading.Event} that stops the scrub
        (L{ScrubStopped}).
    """

    def __init__(self, dataDir, readData=False, rate=None, stop=None, sleep=time.sleep):
        self.dataDir = dataDir
        self.usersDir = os.path.join(dataDir, "users")
        self.readData = readData
        self.rate = rate
        self.stop = stop
        self._sleep = sleep
        self._began = None

    def run(self, conn, users=None):
        """
        @param conn: a connection to the catalog (read only is enough).
        @param users: the accounts to check (default all).
        @return: a L{ScrubReport}.
        """
        report = ScrubReport(self.readData, started=_now())
        self._began = time.monotonic()
        if users is None:
            users = [r[0] for r in conn.execute("SELECT username FROM users ORDER BY username")]
        for user in users:
            self._account(conn, user, report)
            report.accounts += 1
        report.ended = _now()
        return report

    def _account(self, conn, user, report):
        rows = conn.execute(
            "SELECT id, manifest, entries FROM snapshots WHERE username = ? AND state IN (?, ?)"
            " ORDER BY created, id",
            (user, LIVE, TRASH),
        ).fetchall()
        inodes = _Inodes(user)
        for snapshotId, digest, count in rows:
            found = []
            self._snapshot(user, snapshotId, digest, count, inodes, report, found)
            if found and _stillThere(conn, user, snapshotId):
                report.problems.extend(found)
            report.snapshots += 1
        report.problems.extend(inodes.damaged())

    def _snapshot(self, user, snapshotId, digest, count, inodes, report, found):
        top = os.path.join(self.usersDir, user, snapshotId)

        def problem(what, path=""):
            found.append(Problem(user, what, [(snapshotId, path)]))

        if not os.path.isdir(top):
            problem("snapshot folder is missing")
            return
        if digest is None:
            return  # stored before manifests: only its folder can be checked
        seen = 0
        try:
            for _line, entry in readEntries(
                os.path.join(self.usersDir, user, MANIFESTS, snapshotId), digest
            ):
                if self.stop is not None and self.stop.is_set():
                    raise ScrubStopped()
                seen += 1
                self._entry(top, snapshotId, entry, inodes, report, problem)
        except ManifestError as e:
            problem(str(e))
            return
        except FileNotFoundError:
            problem("manifest is missing")
            return
        report.entries += seen
        if count is not None and seen != count:
            problem(f"manifest holds {seen} entries, the catalog says {count}")

    def _entry(self, top, snapshotId, entry, inodes, report, problem):
        path, kind, size, _mtime, _mode, target, crc = entry[:7]
        full = os.path.join(top, path)
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):
            problem(f"{kind} is missing", path)
            return
        except OSError as e:
            problem(f"cannot be read ({e.strerror})", path)
            return
        if kind == "dir":
            if not stat.S_ISDIR(st.st_mode):
                problem("is not a folder", path)
            return
        if kind == "link":
            if not stat.S_ISLNK(st.st_mode) or os.readlink(full) != target:
                problem("is not the link recorded", path)
            return
        if not stat.S_ISREG(st.st_mode):
            problem("is not a file", path)
            return
        if st.st_size != size:
            problem(f"has {st.st_size} bytes, the manifest says {size}", path)
            return
        if not self.readData:
            return
        key = (st.st_dev, st.st_ino)
        known = inodes.result(key)
        if known is None:
            try:
                actual = self._crc(full, report)
            except OSError as e:
                # a disk that fails to read (EIO) is what a scrub is for
                inodes.bad(key, f"file cannot be read ({e.strerror})", snapshotId, path)
                return
            if actual == crc:
                inodes.good(key)
            else:
                what = f"file content is damaged (CRC-32 {actual:08x}, recorded {crc:08x})"
                inodes.bad(key, what, snapshotId, path)
        elif known is False:
            inodes.shared(key, snapshotId, path)

    def _crc(self, path, report):
        value = 0
        with open(path, "rb", buffering=0) as f:
            while True:
                block = f.read(COPY_BLOCK)
                if not block:
                    break
                value = isal_zlib.crc32(block, value)
                report.bytesRead += len(block)
                self._pace(report.bytesRead)
        report.filesRead += 1
        return value

    def _pace(self, total):
        if self.stop is not None and self.stop.is_set():
            raise ScrubStopped()
        if self.rate:
            ahead = total / self.rate - (time.monotonic() - self._began)
            if ahead > 0:
                self._sleep(min(ahead, 1.0))


class _Inodes:
    """
    The stored files one account's scrub has read, by inode: each is read
    once; a damaged one collects every place that shares it.
    """

    def __init__(self, user):
        self._user = user
        self._good = set()
        self._bad = {}  # key -> Problem

    def result(self, key):
        if key in self._good:
            return True
        return False if key in self._bad else None

    def good(self, key):
        self._good.add(key)

    def bad(self, key, what, snapshotId, path):
        self._bad[key] = Problem(self._user, what, [(snapshotId, path)])

    def shared(self, key, snapshotId, path):
        self._bad[key].where.append((snapshotId, path))

    def damaged(self):
        return list(self._bad.values())


def _stillThere(conn, user, snapshotId):
    """
    Whether a snapshot is still kept (one removed while it was checked is
    no problem).
    """
    row = conn.execute(
        "SELECT state FROM snapshots WHERE username = ? AND id = ?", (user, snapshotId)
    ).fetchone()
    return row is not None and row[0] in (LIVE, TRASH)


def writeStatus(dataDir, report):
    """
    Keep the last scrub's result in L{STATUS_FILE} (replaced whole).
    """
    path = os.path.join(dataDir, STATUS_FILE)
    summary = report.toJSON()
    summary["problems"] = len(report.problems)
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f)
    os.replace(path + ".tmp", path)


def readStatus(dataDir):
    """
    @return: the last scrub's summary, or C{None}.
    """
    try:
        with open(os.path.join(dataDir, STATUS_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def readOnlyCatalog(dataDir):
    """
    @return: a read-only connection to the catalog, for a scrub's thread.
    """
    path = os.path.join(dataDir, "user.db")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def scrubAll(dataDir, readData, rate, stop):
    """
    One scrub of every account, with a connection of its own (blocking).

    @return: the L{ScrubReport}, also written to L{STATUS_FILE}.
    """
    conn = readOnlyCatalog(dataDir)
    try:
        report = Scrubber(dataDir, readData, rate, stop).run(conn)
    finally:
        conn.close()
    writeStatus(dataDir, report)
    return report


class ScrubService(Service):
    """
    Scrub every C{interval} seconds in a thread of its own, reading data
    at C{rate} bytes a second at most; problems are logged (one warning
    each) and kept for the metrics.  Stopping the service stops a scrub
    under way.
    """

    def __init__(self, dataDir, interval, rate, reactor, scrub=scrubAll, runInThread=None):
        """
        @param runInThread: C{f(*args) -> Deferred} (tests run it in place);
            default a thread of the service's own.
        """
        self.dataDir = dataDir
        self.interval = interval
        self.rate = rate
        self.reactor = reactor
        self._scrub = scrub
        self._stop = threading.Event()
        self._pool = ThreadPool(1, 1, "scrub")
        self._runInThread = runInThread or (
            lambda f, *args: deferToThreadPool(self.reactor, self._pool, f, *args)
        )
        self._loop = None
        self._running = None

    def startService(self):
        super().startService()
        self._stop.clear()
        self._pool.start()
        self._loop = LoopingCall(self._run)
        self._loop.clock = self.reactor
        # the first one an interval after the start: a restart does not
        # re-read everything at once
        self._loop.start(self.interval, now=False)

    def _run(self):
        d = self._running = self._runInThread(
            self._scrub, self.dataDir, True, self.rate, self._stop
        )

        def done(report):
            for problem in report.problems:
                log.warn("scrub: {problem}", problem=problem.line())
            log.info(
                "scrub done: {snapshots} snapshots, {files} files read ({bytes} bytes),"
                " {problems} problems",
                snapshots=report.snapshots,
                files=report.filesRead,
                bytes=report.bytesRead,
                problems=len(report.problems),
            )

        def failed(failure):
            if not failure.check(ScrubStopped):
                log.failure("scrub failed", failure)

        d.addCallbacks(done, failed)
        return d

    def stopService(self):
        super().stopService()
        self._stop.set()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        running = self._running
        if running is None or running.called:
            self._pool.stop()
            return None
        return running.addBoth(lambda _: self._pool.stop())
