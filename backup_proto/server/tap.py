# -*- test-case-name: tests.test_tap -*-
"""
C{twistd backup-server}: command-line options and the service they build.
"""

import os
import resource
import sqlite3
import tempfile

from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.error import VerifyError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.server import Site

from backup_proto.allocator import tuneAllocator
from backup_proto.archive.compression import COMPRESSION_CHOICES
from backup_proto.archive.policy import Limits
from backup_proto.server.accounts import DEFAULT_ITERATIONS, AccountStore
from backup_proto.server.database import Database
from backup_proto.server.drain import ServerService
from backup_proto.server.lifecycle import Lifecycle
from backup_proto.server.metrics import MetricsResource, StateCollector
from backup_proto.server.protocol import BackupServerFactory
from backup_proto.server.resources import RestoreArchives, SendBuffers
from backup_proto.server.scrub import ScrubService
from backup_proto.server.storage import SnapshotStore
from backup_proto.server.threads import WorkerPools
from backup_proto.server.throttle import LoginThrottle
from backup_proto.units import parseSize
from backup_proto.wire.frames import DEFAULT_PORT, MAX_FRAME

DEFAULT_LISTEN = f"ssl:{DEFAULT_PORT}:privateKey=certs/server.key:certKey=certs/server.pem"

log = Logger()


def _positive(kind):
    def convert(value):
        number = kind(value)
        if number <= 0:
            raise ValueError("must be positive")
        return number

    convert.__doc__ = f"a positive {kind.__name__}"
    return convert


def _notNegative(kind):
    def convert(value):
        number = kind(value)
        if number < 0:
            raise ValueError("must not be negative")
        return number

    convert.__doc__ = f"a {kind.__name__} of 0 or more"
    return convert


class Options(usage.Options):
    """
    Options of C{twistd backup-server}.
    """

    synopsis = "[options]"
    longdesc = (
        "TLS backup server. Clients register, log in, back up a file or "
        "folder as a new snapshot, list their snapshots and restore them. "
        "Create development certificates first with the backup-certs command."
    )
    optParameters = [
        ["data-dir", "d", "backup-data", "Folder for user.db and the users' snapshots."],
        [
            "pbkdf2-iterations",
            None,
            DEFAULT_ITERATIONS,
            "PBKDF2-HMAC-SHA256 iterations for new accounts.",
            _positive(int),
        ],
        [
            "idle-timeout",
            None,
            120.0,
            "Seconds without a complete frame before a connection is closed.",
            _positive(float),
        ],
        [
            "login-timeout",
            None,
            30.0,
            "Seconds a connection has to log in and exchange keys.",
            _positive(float),
        ],
        ["max-connections", None, 2000, "Open connections at most.", _positive(int)],
        ["max-per-peer", None, 100, "Open connections per client address at most.", _positive(int)],
        ["max-upload-size", None, 1 << 40, "Largest upload (zip) in bytes.", _positive(int)],
        ["max-entries", None, 1_000_000, "Most entries in one archive.", _positive(int)],
        [
            "max-unpacked-size",
            None,
            1 << 40,
            "Most bytes one archive may unpack to.",
            _positive(int),
        ],
        [
            "max-ratio",
            None,
            200,
            "Most an archive entry over 1 MiB may expand (uncompressed/compressed).",
            _positive(int),
        ],
        [
            "max-frame",
            None,
            MAX_FRAME,
            f"Largest frame in bytes (at least {MAX_FRAME}, the size of a full DATA frame).",
            _positive(int),
        ],
        [
            "login-free-failures",
            None,
            3,
            "Failed logins in a row an account gets before each login is delayed.",
            _positive(int),
        ],
        [
            "login-max-delay",
            None,
            60.0,
            "Longest delay, in seconds, before a throttled account's login is checked"
            " (it doubles from 1 s per failure).",
            _positive(float),
        ],
        [
            "max-hash-queue",
            None,
            256,
            "Password checks allowed to wait for a CPU thread; more are refused as busy.",
            _positive(int),
        ],
        [
            "restore-compression",
            None,
            "store",
            "How restores are zipped: store (the default: snapshots are kept unpacked, so"
            " deflating costs CPU on every restore), auto (deflate what compresses: for"
            " slow links) or deflate.",
        ],
        [
            "trash-days",
            None,
            0,
            "Days a snapshot a client forgets (or the account's policy drops) stays in the"
            " trash, from which backup-admin undelete brings it back (0: removed at once).",
            _notNegative(int),
        ],
        [
            "maintenance-interval",
            None,
            3600.0,
            "Seconds between runs of the accounts' retention policies and the emptying of"
            " expired trash (also run at start).",
            _positive(float),
        ],
        [
            "metrics",
            None,
            None,
            "A Twisted endpoint (e.g. tcp:9464:interface=127.0.0.1) on which to serve"
            " Prometheus metrics over HTTP (default: none).",
        ],
        [
            "metrics-per-user",
            None,
            "yes",
            "yes: per-user figures carry a user label; no: summed over the accounts"
            " (privacy, fewer series).",
        ],
        [
            "scrub-interval",
            None,
            0.0,
            "Seconds between background scrubs, which re-read every stored file against its"
            " manifest's CRC-32 (0, the default: none; backup-admin check runs one by hand).",
            _notNegative(float),
        ],
        [
            "scrub-rate",
            None,
            "50M",
            "Most bytes a second a background scrub reads (binary units: 50M, 1G).",
        ],
        [
            "shutdown-grace",
            None,
            30.0,
            "Seconds that uploads and restores under way get to finish when the server is"
            " told to stop (SIGTERM); the rest are then aborted.",
            _notNegative(float),
        ],
        [
            "cpu-threads",
            None,
            os.cpu_count() or 2,
            "Threads for hashing, planning restores and finishing unpacks.",
            _positive(int),
        ],
    ]

    def __init__(self):
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description):
        """A Twisted ssl: server endpoint string to listen on (repeatable). Default: ssl:40445:privateKey=certs/server.key:certKey=certs/server.pem"""  # noqa: E501 (the --help text)
        self["listen"].append(description)

    opt_l = opt_listen

    def postOptions(self):
        if self["max-frame"] < MAX_FRAME:
            raise usage.UsageError(f"--max-frame must be at least {MAX_FRAME}")
        try:
            self["scrub-rate"] = parseSize(self["scrub-rate"])
        except ValueError as e:
            raise usage.UsageError(f"--scrub-rate: {e}") from None
        if self["metrics-per-user"] not in ("yes", "no"):
            raise usage.UsageError("--metrics-per-user must be yes or no")
        if self["restore-compression"] not in COMPRESSION_CHOICES:
            raise usage.UsageError(
                "--restore-compression must be one of " + ", ".join(COMPRESSION_CHOICES)
            )
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
            for path in ("certs/server.key", "certs/server.pem"):
                if not os.path.exists(path):
                    raise usage.UsageError(
                        f"{path} not found: create development certificates with"
                        " 'backup-certs' (or give --listen with your own)"
                    )


def requireTLS13(endpoint, description):
    """
    Raise the TLS floor of an C{ssl:} endpoint to TLS 1.3.

    The C{ssl:} string parser builds a L{CertificateOptions} whose floor is
    TLS 1.2 and offers no option to raise it; its (cached) context is shared
    by every connection, so raising the floor on it once is enough.

    @raise usage.UsageError: for an endpoint that is not C{ssl:}.
    """
    contextFactory = getattr(endpoint, "_sslContextFactory", None)
    if not isinstance(endpoint, SSL4ServerEndpoint) or contextFactory is None:
        raise usage.UsageError(f"--listen {description}: only ssl: endpoints are allowed")
    contextFactory.getContext().set_min_proto_version(SSL.TLS1_3_VERSION)
    return endpoint


#: Descriptors a connection may hold at once: its socket, and while it
#: uploads or restores the file and folder being read or written.
FILES_PER_CONNECTION = 4
#: Descriptors beyond the connections': the catalog, pools, logs, listeners.
SPARE_FILES = 64


def raiseOpenFileLimit(maxConnections, getrlimit=resource.getrlimit, setrlimit=resource.setrlimit):
    """
    Raise the soft limit on open files toward what C{maxConnections} may
    need, as far as the hard limit allows: at the common default of 1,024
    the server would run out of descriptors (C{EMFILE}, refusing everyone)
    long before its connection caps.

    @return: the soft limit now in force.
    """
    wanted = maxConnections * FILES_PER_CONNECTION + SPARE_FILES
    soft, hard = getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if new > soft:
            setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warn(
            "open files are limited to {limit}, fewer than --max-connections {connections}"
            " may need ({wanted}): raise the hard limit (ulimit -Hn, LimitNOFILE=)",
            limit=soft,
            connections=maxConnections,
            wanted=wanted,
        )
    return soft


class MaintenanceService(Service):
    """
    Run L{Lifecycle.maintain} every C{interval} seconds, the first time
    once the reactor runs (a removal left waiting by the last run is
    finished at start).  A run that fails is logged; the schedule goes on,
    and a run never overlaps the one before.
    """

    def __init__(self, lifecycle, interval, clock):
        self.lifecycle = lifecycle
        self.interval = interval
        self.clock = clock
        self._loop = None
        self._first = None

    def _run(self):
        d = self.lifecycle.maintain()
        d.addErrback(lambda f: log.failure("maintenance failed", f))
        return d

    def startService(self):
        super().startService()
        self._loop = LoopingCall(self._run)
        self._loop.clock = self.clock
        self._first = self.clock.callLater(0, self._loop.start, self.interval)

    def stopService(self):
        super().stopService()
        if self._first.active():
            self._first.cancel()
        if self._loop.running:
            self._loop.stop()


class StartupError(SystemExit):
    """
    The server cannot start: one line, printed by twistd before it exits
    with status 1 (before it forks, so an init system sees the failure).
    """

    def __init__(self, message):
        super().__init__(f"backup-server: {message}")


def checkDataDir(dataDir):
    """
    Make the data folder if need be and check that files can be created
    in it.

    @raise StartupError: it cannot be made or written.
    """
    try:
        os.makedirs(dataDir, mode=0o700, exist_ok=True)
        with tempfile.TemporaryFile(dir=dataDir):
            pass
    except OSError as e:
        raise StartupError(
            f"cannot write to the data folder {dataDir}: {e.strerror or e}"
        ) from None


def listenNow(endpoint, factory, description):
    """
    Listen on C{endpoint} at once, while the server is built (an C{ssl:}
    endpoint binds synchronously), rather than once the reactor runs: a
    port in use then stops the start with one line, instead of a server
    that runs without listening.

    @raise StartupError: the port cannot be bound.
    @return: the listening port.
    """
    outcome = []
    endpoint.listen(factory).addBoth(outcome.append)
    if not outcome or isinstance(outcome[0], Failure):
        reason = outcome[0].value if outcome else "no answer"
        raise StartupError(f"cannot listen on {description}: {reason}")
    return outcome[0]


class ListeningService(Service):
    """
    Holds a port bound by L{listenNow}; stopping the service stops
    listening (first of all, on a graceful stop).
    """

    def __init__(self, port):
        self.port = port

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()


def makeService(options, reactor=None):
    """
    Build the server: pools, database, crash recovery, listeners.  What
    stops it from serving (a data folder it cannot write, a catalog it
    cannot open, a bad certificate or key, a port in use) is a
    L{StartupError}.
    """
    tuneAllocator()
    raiseOpenFileLimit(options["max-connections"])
    if reactor is None:
        from twisted.internet import reactor
    dataDir = os.path.abspath(options["data-dir"])
    checkDataDir(dataDir)
    pools = WorkerPools(reactor, cpuThreads=options["cpu-threads"])
    db = Database(os.path.join(dataDir, "user.db"), pools.runDB)
    store = SnapshotStore(dataDir, db)
    try:
        staging, folders, rows = store.recover()
    except sqlite3.Error as e:
        raise StartupError(f"cannot open the catalog {db.path}: {e}") from None
    finally:
        db.close()
    if staging or folders or rows:
        log.info(
            "recovered: removed {staging} staging folders, {folders} unconfirmed"
            " snapshots, {rows} catalog rows without data",
            staging=staging,
            folders=folders,
            rows=rows,
        )
    accounts = AccountStore(
        db,
        pools.runCPU,
        iterations=options["pbkdf2-iterations"],
        concurrency=options["cpu-threads"],
        maxQueued=options["max-hash-queue"],
    )
    limits = Limits(
        maxEntries=options["max-entries"],
        maxUnpacked=options["max-unpacked-size"],
        maxRatio=options["max-ratio"],
    )
    throttle = LoginThrottle(
        reactor,
        freeFailures=options["login-free-failures"],
        maxDelay=options["login-max-delay"],
    )
    lifecycle = Lifecycle(store, pools.runIO, reactor, trashDays=options["trash-days"])
    factory = BackupServerFactory(
        accounts,
        store,
        pools.runCPU,
        pools.runIO,
        reactor,
        limits,
        throttle=throttle,
        flushAhead=pools.flushAhead,
        restores=RestoreArchives(dataDir, pools.readAhead, pools.plan),
        sendBuffers=SendBuffers(),
        lifecycle=lifecycle,
        idleTimeout=options["idle-timeout"],
        loginTimeout=options["login-timeout"],
        maxConnections=options["max-connections"],
        maxPerPeer=options["max-per-peer"],
        maxUploadSize=options["max-upload-size"],
        restoreCompression=options["restore-compression"],
        maxFrame=options["max-frame"],
    )
    top = ServerService(factory, reactor, options["shutdown-grace"])
    if options["metrics"]:
        top.addListener(_metricsListener(reactor, options, factory, db, dataDir))
    pools.setServiceParent(top)
    MaintenanceService(lifecycle, options["maintenance-interval"], reactor).setServiceParent(top)
    if options["scrub-interval"]:
        ScrubService(
            dataDir, options["scrub-interval"], options["scrub-rate"], reactor
        ).setServiceParent(top)
    endpoints = []
    for description in options["listen"]:
        endpoint = parseEndpoint(reactor, description, "--listen")
        try:
            requireTLS13(endpoint, description)
        except SSL.Error as e:
            raise StartupError(f"bad --listen {description!r}: {_reason(e)}") from None
        except usage.UsageError as e:
            raise StartupError(str(e)) from None
        endpoints.append((endpoint, description))
    for endpoint, description in endpoints:
        top.addListener(ListeningService(listenNow(endpoint, factory, description)))
    return top


def _metricsListener(reactor, options, factory, db, dataDir):
    """
    @return: a L{ListeningService} serving the metrics over HTTP.
    """
    description = options["metrics"]
    collector = StateCollector(factory, dataDir, perUser=options["metrics-per-user"] == "yes")
    site = Site(MetricsResource(factory.metrics, collector, db))
    site.noisy = False
    endpoint = parseEndpoint(reactor, description, "--metrics")
    return ListeningService(listenNow(endpoint, site, description))


def parseEndpoint(reactor, description, option):
    """
    @return: the server endpoint C{description} names (an C{ssl:} one
        reads its certificate and key now).
    @raise StartupError: it is malformed, or its certificate or key
        cannot be read or do not match.
    """
    try:
        return serverFromString(reactor, description)
    except (ValueError, OSError, KeyError, SSL.Error, crypto.Error, VerifyError) as e:
        raise StartupError(f"bad {option} {description!r}: {_reason(e)}") from None


def _reason(error):
    """
    @return: an exception in words: OpenSSL's errors are lists of tuples.
    """
    if isinstance(error, (SSL.Error, crypto.Error)) and error.args and error.args[0]:
        return "; ".join(str(item[-1]) for item in error.args[0]) + " (certificate or key)"
    return str(error)
