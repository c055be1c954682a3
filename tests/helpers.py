"""
Shared test fixtures: certificates, keys, a server factory wired to
synchronous fakes, and in-memory TLS connections (iosim).
"""

import functools
import hashlib
import os
import stat

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from backup_client.protocol import BackupClientProtocol
from backup_proto.archive.directio import readAheadThreads
from backup_proto.archive.policy import Limits
from backup_proto.certs import makeCertificates
from backup_proto.server.accounts import AccountStore
from backup_proto.server.database import Database
from backup_proto.server.protocol import BackupServerFactory
from backup_proto.server.resources import RestoreArchives
from backup_proto.server.storage import SnapshotStore
from backup_proto.wire import crypto

TEST_ITERATIONS = 1000
#: The direct reads of the in-memory servers' restores, as the real one
#: does them; one for all tests (its threads end with the process).
TEST_READ_AHEAD = readAheadThreads()


class TestCase(SynchronousTestCase):
    """
    A trial test case that runs in a folder of its own, under trial (whose
    cwd is one shared C{_trial_temp}) as under pytest.
    """

    def setUp(self):
        super().setUp()
        here = os.getcwd()
        path = os.path.abspath(self.mktemp())
        os.makedirs(path)
        os.chdir(path)
        self.addCleanup(os.chdir, here)


class ManualRunner:
    """
    A thread-pool stand-in whose jobs run only when the test says so: to
    interleave operations, or to hold I/O back.
    """

    def __init__(self):
        self.jobs = []

    def __call__(self, f, *args):
        d = Deferred()
        self.jobs.append((d, f, args))
        return d

    def runRound(self):
        """
        Run the jobs queued now (not those they queue in turn).
        """
        jobs, self.jobs = self.jobs, []
        for d, f, args in jobs:
            d.callback(f(*args))

    def runAll(self):
        while self.jobs:
            self.runRound()


def runNow(f, *args, **kwargs):
    """
    A synchronous stand-in for a thread pool (Tahoe's
    C{disable_thread_pool_for_test}).
    """
    return maybeDeferred(f, *args, **kwargs)


@functools.cache
def certificates(host="backup.test"):
    """
    A CA and a server certificate for C{host} (cached per host).
    """
    return makeCertificates((host, "127.0.0.1"))


@functools.cache
def clientKey():
    """
    One RSA key for all tests (3072-bit keys take a while to make).
    """
    return crypto.generateClientKey()


def makeFactory(dataDir, clock=None, runIO=runNow, runCPU=runNow, **tunables):
    """
    A L{BackupServerFactory} on C{dataDir} whose thread work runs
    synchronously.
    """
    clock = clock or Clock()
    os.makedirs(dataDir, exist_ok=True)
    db = Database(os.path.join(dataDir, "user.db"), runNow)
    store = SnapshotStore(dataDir, db)
    store.recover()
    accounts = AccountStore(db, runCPU, iterations=TEST_ITERATIONS)
    limits = tunables.pop("limits", Limits())
    tunables.setdefault("restores", RestoreArchives(dataDir, TEST_READ_AHEAD))
    return BackupServerFactory(accounts, store, runCPU, runIO, clock, limits, **tunables)


def serverTLSOptions(host="backup.test"):
    files = certificates(host)
    cert = PrivateCertificate.loadPEM(files["server.pem"] + files["server.key"])
    options = cert.options()
    options.getContext().set_min_proto_version(0x0304)  # TLS 1.3
    return options


def clientTLSOptions(host="backup.test", ca=None):
    ca = ca or certificates("backup.test")["ca.pem"]
    return optionsForClientTLS(
        host,
        trustRoot=Certificate.loadPEM(ca),
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3},
    )


def connectInMemory(factory, clientOptions=None, clock=None):
    """
    Connect a L{BackupClientProtocol} to C{factory} over real TLS in memory.

    @return: C{(client, server, pump)}: the two backup protocols (inside
        their TLS wrappers) and the L{IOPump}.
    """
    clock = clock or factory.clock
    client = BackupClientProtocol(runNow, clock)
    serverTLS = TLSMemoryBIOFactory(serverTLSOptions(), False, factory, clock=clock)
    clientTLS = TLSMemoryBIOFactory(
        clientOptions or clientTLSOptions(),
        True,
        Factory.forProtocol(lambda: client),
        clock=clock,
    )
    from twisted.internet.address import IPv4Address

    c, s, pump = connectedServerAndClient(
        lambda: serverTLS.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40445)),
        lambda: clientTLS.buildProtocol(None),
        greet=False,
        clock=clock,
    )
    pump.flush()
    return client, s.wrappedProtocol, pump


def flush(pump, clock, rounds=50):
    """
    Pump bytes and advance the clock until nothing moves.
    """
    for _ in range(rounds):
        clock.advance(0)
        if not pump.pump() and not clock.getDelayedCalls():
            clock.advance(0)
            if not pump.pump():
                break
    pump.flush()


def makeTrickyTree(root):
    """
    A tree with unicode names, spaces, an empty file and folder, deep
    nesting, an executable, links and some random data.

    @return: C{root}.
    """
    os.makedirs(os.path.join(root, "empty folder"))
    deep = os.path.join(root, *[f"level{i}" for i in range(12)])
    os.makedirs(deep)
    with open(os.path.join(deep, "deep.txt"), "w") as f:
        f.write("deep\n")
    with open(os.path.join(root, "héllo wörld ✓.txt"), "w", encoding="utf-8") as f:
        f.write("unicode ✓\n" * 100)
    open(os.path.join(root, "empty"), "wb").close()
    script = os.path.join(root, "run me.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho hi\n")
    os.chmod(script, 0o755)
    with open(os.path.join(root, "random.bin"), "wb") as f:
        f.write(os.urandom(3 * 1024 * 1024 + 17))
    with open(os.path.join(root, "text.log"), "w") as f:
        f.write("a fairly compressible line of log text\n" * 20000)
    import random

    rng = random.Random(7)
    with open(os.path.join(root, "notes.txt"), "w") as f:  # small, deflated in one go
        f.write(
            " ".join(
                rng.choice(["backup", "restore", "zip", "twisted", "tls", "snapshot"])
                for _ in range(1500)
            )
        )
    os.symlink("héllo wörld ✓.txt", os.path.join(root, "link to hello"))
    os.symlink("../outside/target", os.path.join(root, "dangling"))
    os.utime(os.path.join(root, "empty"), (1_600_000_000, 1_600_000_000))
    return root


def treeSignature(root):
    """
    A comparable description of a tree: for each path, its type, mode,
    mtime (in nanoseconds, as our zips keep it; the float C{st_mtime}
    would round a time within about 0.1 us of a second up to it) and
    content or link target.  The top folder's own mtime is left out (restoring into
    it may touch it).  A
    file's content is its length and SHA-256, so that a failed comparison
    shows which entry differs (with the bytes themselves, a tree holding a
    few MB was a diff too long to print).
    """
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            mtime = st.st_mtime_ns
            if stat.S_ISLNK(st.st_mode):
                result[rel] = ("link", os.readlink(path), mtime)
            elif stat.S_ISDIR(st.st_mode):
                result[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
            else:
                with open(path, "rb") as f:
                    data = f.read()
                result[rel] = (
                    "file",
                    stat.S_IMODE(st.st_mode),
                    mtime,
                    len(data),
                    hashlib.sha256(data).hexdigest(),
                )
    return result


def fileSource(path):
    """
    @return: C{(openSource, size)} for sending the file at C{path} with
        L{BackupClientProtocol.backup}.
    """
    path = os.path.abspath(path)
    return (lambda: open(path, "rb")), os.path.getsize(path)


class FileSink:
    """
    A L{backup_proto.wire.transfer.ChunkReceiver} sink writing into a new
    file (C{O_EXCL}, mode 0600), created at the first write.
    """

    def __init__(self, path):
        self.path = path
        self._file = None

    def _open(self):
        if self._file is None:
            self._file = os.fdopen(
                os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600),
                "wb",
            )
        return self._file

    def write(self, data):
        self._open().write(data)

    def close(self):
        self._open().close()

    def discard(self):
        if self._file is not None:
            self._file.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def zipSinks(workDir):
    """
    @return: an C{openSink} for L{BackupClientProtocol.restore} that keeps
        each attempt's zip as a file in C{workDir} (the sink's C{path}), so
        that a test can look at what the server sent.
    """

    def openSink(begin, attempt):
        return FileSink(os.path.join(os.path.abspath(workDir), f"{begin['name']}.{attempt}.zip"))

    return openSink
