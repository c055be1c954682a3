# -*- test-case-name: tests.test_cli_plan,tests.test_e2e -*-
"""
C{backup-client}: the terminal client.

Exit codes (stable; also in README.rst):

 0. success
 1. other error
 2. usage error
 3. authentication or account refused
 4. server unreachable or not trusted (refused, TLS verification, timeout)
 5. transfer verification failed after all resends
 6. finished with warnings
 7. server storage full
 8. over the account's quota
 9. local disk full
 10. removal refused by the account's delete protection
 130. interrupted (SIGINT); 143: stopped (SIGTERM)
"""

import argparse
import getpass
import json
import os
import re
import sys
import threading
from concurrent.futures.process import BrokenProcessPool

from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as NoAnswer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TimeoutError,
)
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.threads import deferToThread

import backup_proto
from backup_client.browse import (
    RestoreCheck,
    conflictReport,
    diff,
    entryObject,
    longLine,
    matches,
    normalisePath,
    under,
)
from backup_client.config import ConfigError, configDir, loadConfig, resolve
from backup_client.excludes import Excludes
from backup_client.exitcodes import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_LOCAL_FULL,
    EXIT_OK,
    EXIT_PROTECTED,
    EXIT_QUOTA,
    EXIT_STORAGE_FULL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_VERIFY,
    EXIT_WARNINGS,
)
from backup_client.interrupts import Interrupted, Interrupts
from backup_client.planworkers import startPlanWorkers
from backup_client.progress import progressBar
from backup_client.protocol import (
    BackupClientProtocol,
    ConnectionGone,
    IncrementalParent,
    VerificationFailed,
)
from backup_client.restoring import RestoreConflict, RestoreStaging, placeUnpacked
from backup_proto.allocator import tuneAllocator
from backup_proto.archive.compression import COMPRESSION_CHOICES
from backup_proto.archive.extract import ExtractSink
from backup_proto.archive.plan import ParentFiles, planArchive
from backup_proto.archive.policy import ArchiveError, Limits
from backup_proto.archive.spool import Spool
from backup_proto.archive.stream import ArchiveStream
from backup_proto.units import humanSize
from backup_proto.wire import crypto
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import DEFAULT_PORT
from backup_proto.wire.policy import addPolicyOptions, policyFromOptions
from backup_proto.wire.transfer import SinkFailed, diskFull

CONNECT_TIMEOUT = 15
#: Seconds to wait for the handshake and each login-phase answer (the
#: server may delay a throttled login by up to a minute).
ANSWER_TIMEOUT = 90

_AUTH_CODES = {
    Code.AUTH_FAILED,
    Code.TOO_MANY_ATTEMPTS,
    Code.NAME_TAKEN,
    Code.BAD_USERNAME,
    Code.BAD_PASSWORD,
    Code.ACCOUNT_DISABLED,
}

#: What a restore may unpack on this machine.
RESTORE_LIMITS = Limits(maxEntries=10_000_000, maxUnpacked=1 << 44, maxRatio=200)


class Fatal(Exception):
    """
    Stop with a one-line message and an exit code.
    """

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message


def parseServer(text):
    """
    @return: C{(host, port)} from C{HOST}, C{HOST:PORT} or C{[V6]:PORT}.
    """
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed [ in server address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("bad server address")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, portText = text.split(":")
        port = int(portText)
    if not host or not 0 < port < 65536:
        raise ValueError("bad server address")
    return host, port


def buildParser():
    parser = argparse.ArgumentParser(
        prog="backup-client",
        description="Back up files and folders to a backup_proto server over TLS, "
        "list your snapshots and restore them.",
        epilog="Exit codes: 0 success, 1 other error, 2 usage error, 3 authentication "
        "or account refused, 4 server unreachable or not trusted, 5 verification failed "
        "after all resends, 6 finished with warnings, 7 server storage full, 8 over the "
        "account's quota, 9 local disk full, 10 removal refused by the account's delete "
        "protection, 130 interrupted (Ctrl-C), 143 stopped by SIGTERM.",
    )
    env = os.environ.get
    parser.add_argument(
        "--version", action="version", version=f"backup-client {backup_proto.__version__}"
    )
    parser.add_argument(
        "--server",
        help=f"HOST[:PORT] (env BACKUP_SERVER, or the config file's server; default"
        f" localhost:{DEFAULT_PORT})",
    )
    parser.add_argument(
        "--ca",
        help="CA certificate(s) (PEM) to trust (env BACKUP_CA, or the config file's ca;"
        " default certs/ca.pem if present)",
    )
    parser.add_argument("--user", help="username (env BACKUP_USER, or the config file's user)")
    parser.add_argument(
        "--password-file",
        help="read the password from the first line of FILE (or env BACKUP_PASSWORD, or the"
        " config file's password_file)",
    )
    parser.add_argument(
        "--config-dir",
        default=env("BACKUP_CONFIG_DIR"),
        help="where the client keeps config.toml and its RSA key (env BACKUP_CONFIG_DIR;"
        " default ~/.config/backup-client)",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only results and errors (no progress bars)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("register", help="create an account")
    ls = sub.add_parser("list", help="list your snapshots, oldest first")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    backup = sub.add_parser("backup", help="back up a file or folder as a new snapshot")
    backup.add_argument("path", metavar="PATH")
    backup.add_argument(
        "--compression",
        choices=COMPRESSION_CHOICES,
        default="auto",
        help="auto (default: deflate what compresses, store the rest), store, or deflate",
    )
    backup.add_argument(
        "--json", action="store_true", help="print a JSON result object instead of the id"
    )
    backup.add_argument(
        "--parent",
        metavar="ID",
        help="compare with this snapshot (default: the newest of the same folder name)",
    )
    backup.add_argument(
        "--full",
        action="store_true",
        help="send every file, compared with no earlier snapshot (reads everything)",
    )
    backup.add_argument(
        "--exclude",
        metavar="PATTERN",
        action="append",
        default=[],
        help="leave out paths matching PATTERN, as in a .gitignore at the folder's top"
        " (repeatable)",
    )
    backup.add_argument(
        "--exclude-file",
        metavar="FILE",
        action="append",
        default=[],
        help="read exclude patterns from FILE, one per line (repeatable)",
    )
    backup.add_argument(
        "--exclude-caches",
        action="store_true",
        help="leave out folders holding a valid CACHEDIR.TAG",
    )
    backup.add_argument("-q", "--quiet", action="store_true", dest="quiet2", help=argparse.SUPPRESS)
    restore = sub.add_parser("restore", help="restore a snapshot into DEST")
    restore.add_argument("dest", metavar="DEST")
    restore.add_argument("--snapshot", metavar="ID", help="snapshot id")
    restore.add_argument(
        "--source",
        metavar="NAME",
        help="the newest snapshot of this folder or file name (the default, when all"
        " snapshots are of one name)",
    )
    restore.add_argument(
        "--include",
        metavar="PATH",
        action="append",
        default=[],
        help="restore only PATH (a file or folder, as 'ls' shows it) and what is below it"
        " (repeatable)",
    )
    restore.add_argument("--overwrite", action="store_true", help="replace existing files in DEST")
    restore.add_argument("--json", action="store_true", help="print a JSON result object")
    restore.add_argument(
        "-q", "--quiet", action="store_true", dest="quiet2", help=argparse.SUPPRESS
    )
    forget = sub.add_parser(
        "forget",
        help="remove snapshots by id, or those a --keep-* policy does not keep",
        description="Remove snapshots: the ones named, or those the --keep-* rules do not"
        " keep (restic's rules: each source's snapshots on their own, newest first, in UTC)."
        " The server may keep them in its trash for a while, and may refuse (exit 10) if"
        " the account is protected.",
    )
    forget.add_argument("ids", metavar="ID", nargs="*", help="snapshots to remove")
    addPolicyOptions(forget)
    forget.add_argument("--source", metavar="NAME", help="apply the policy to this source only")
    forget.add_argument(
        "--dry-run", action="store_true", help="only show what would be kept and removed"
    )
    forget.add_argument("--json", action="store_true", help="print a JSON result object")
    browse = sub.add_parser("ls", help="list a snapshot's files, from its manifest")
    browse.add_argument("id", metavar="ID", nargs="?", help="snapshot (default: the newest)")
    browse.add_argument("path", metavar="PATH", nargs="?", help="only this path and below")
    browse.add_argument("--source", metavar="NAME", help="the newest snapshot of NAME")
    browse.add_argument("--long", "-l", action="store_true", help="mode, size and time too")
    browse.add_argument("--json", action="store_true", help="print a JSON object")
    find = sub.add_parser("find", help="which snapshots hold paths matching PATTERN")
    find.add_argument(
        "pattern",
        metavar="PATTERN",
        help="shell wildcards, matched against names (or whole paths if it has a '/')",
    )
    find.add_argument("--source", metavar="NAME", help="only snapshots of NAME")
    find.add_argument("--json", action="store_true", help="print a JSON array")
    diffing = sub.add_parser("diff", help="what changed between two snapshots")
    diffing.add_argument("first", metavar="ID1")
    diffing.add_argument("second", metavar="ID2")
    diffing.add_argument("--json", action="store_true", help="print a JSON object")
    usage = sub.add_parser("usage", help="what your account stores, and its quota")
    usage.add_argument("--json", action="store_true", help="print a JSON object")
    passwd = sub.add_parser("passwd", help="change your password (the old one is asked first)")
    passwd.add_argument(
        "--new-password-file",
        metavar="FILE",
        help="read the new password from the first line of FILE (or env BACKUP_NEW_PASSWORD)",
    )
    return parser


def _firstLine(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise Fatal(EXIT_USAGE, f"cannot read {what}: {e.strerror}") from None


def _readPassword(args, confirm):
    if args.password_file:
        return _firstLine(args.password_file, "password file")
    if os.environ.get("BACKUP_PASSWORD") is not None:
        return os.environ["BACKUP_PASSWORD"]
    if not sys.stdin.isatty():
        raise Fatal(
            EXIT_USAGE,
            "no password: use --password-file or BACKUP_PASSWORD"
            " (or run on a terminal to be asked)",
        )
    with _interrupts(args).prompting():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password (again): ") != password:
            raise Fatal(EXIT_USAGE, "passwords do not match")
    return password


def _interrupts(args):
    """
    @return: the command's L{Interrupts} (L{run} sets one).
    """
    if getattr(args, "interrupts", None) is None:
        args.interrupts = Interrupts()
    return args.interrupts


def loadOrCreateKey(directory):
    """
    The client's RSA key, kept in C{directory/client_key.pem} (mode 0600)
    so that it is not generated on every run (blocking).
    """
    from cryptography.hazmat.primitives import serialization

    path = os.path.join(directory, "client_key.pem")
    try:
        with open(path, "rb") as f:
            # our own key, private to this user: its consistency checks
            # (about 90 ms for RSA-3072) would only re-prove what
            # generateClientKey made
            key = serialization.load_pem_private_key(
                f.read(), None, unsafe_skip_rsa_key_validation=True
            )
        if key.key_size >= crypto.CLIENT_RSA_BITS:
            return key
    except (FileNotFoundError, ValueError, TypeError):
        pass
    key = crypto.generateClientKey()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.replace(tmp, path)
    return key


def _trustRoot(args):
    path = args.ca or ("certs/ca.pem" if os.path.exists("certs/ca.pem") else None)
    if path is None:
        raise Fatal(EXIT_USAGE, "no CA certificate: give --ca FILE or set BACKUP_CA")
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise Fatal(EXIT_USAGE, f"cannot read CA certificate {path}: {e.strerror}") from None
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL)
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception:
        certificates = []
    if not certificates:
        raise Fatal(EXIT_USAGE, f"{path} holds no PEM certificate")
    return trustRootFromCertificates(certificates)


def _describeLoss(reason):
    """
    @return: C{(exit code, message)} for a connection that ended early.
    """
    from OpenSSL.SSL import Error as SSLError
    from service_identity import VerificationError

    value = reason.value
    if isinstance(value, (SSLError, VerificationError)):
        return EXIT_UNREACHABLE, f"server not trusted: TLS verification failed ({value})"
    return EXIT_UNREACHABLE, "connection to the server was lost"


def connectFailure(error):
    """
    @return: why a connection could not be made, for a person.
    """
    if isinstance(error, DNSLookupError):
        return "no such host (the name did not resolve)"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server running, on that port?)"
    if isinstance(error, (TimeoutError, ConnectingCancelledError)):
        return f"no answer within {CONNECT_TIMEOUT} s"
    if isinstance(error, NoRouteError):
        return "no route to the host"
    if isinstance(error, ConnectError) and isinstance(error.osError, int):
        return os.strerror(error.osError).lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return "the connection failed"


async def _connect(reactor, args):
    try:
        host, port = parseServer(args.server)
    except ValueError as e:
        raise Fatal(EXIT_USAGE, f"--server {args.server!r}: {e}") from None
    options = optionsForClientTLS(
        host,
        trustRoot=_trustRoot(args),
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3},
    )
    endpoint = wrapClientTLS(
        options, HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    )
    proto = BackupClientProtocol(deferToThread, reactor)
    connecting = connectProtocol(endpoint, proto)
    interrupts = _interrupts(args)
    interrupts.onInterrupt(connecting.cancel)
    try:
        await connecting
    except (ConnectError, ConnectingCancelledError, TimeoutError, OSError) as e:
        interrupts.check()
        raise Fatal(EXIT_UNREACHABLE, f"cannot reach {args.server}: {connectFailure(e)}") from None
    # whatever waits on the server then fails, and the server drops its
    # staging data
    interrupts.onInterrupt(proto.abort)
    return proto


async def _answered(reactor, proto, d):
    """
    Wait for an answer to a login-phase request (the TLS handshake happens
    here too): a server that accepts the connection but never answers is
    "unreachable" after L{ANSWER_TIMEOUT} seconds, not a hang.
    """
    d.addTimeout(ANSWER_TIMEOUT, reactor)
    try:
        return await d
    except NoAnswer:
        proto.transport.abortConnection()
        raise Fatal(EXIT_UNREACHABLE, f"no answer from the server in {ANSWER_TIMEOUT} s") from None


async def _session(reactor, args, user, password):
    key = await deferToThread(loadOrCreateKey, configDir(args.config_dir))
    proto = await _connect(reactor, args)
    await _answered(reactor, proto, proto.login(user, password))
    await _answered(reactor, proto, proto.exchangeKeys(key))
    return proto


def _needUser(args):
    if not args.user:
        raise Fatal(EXIT_USAGE, "no username: use --user or BACKUP_USER")
    return args.user


def _quiet(args):
    return args.quiet or getattr(args, "quiet2", False) or not sys.stderr.isatty()


async def cmdRegister(reactor, args):
    user = _needUser(args)
    password = _readPassword(args, confirm=True)
    proto = await _connect(reactor, args)
    await _answered(reactor, proto, proto.register(user, password))
    proto.transport.loseConnection()
    print(f"registered {user}")
    return EXIT_OK


async def cmdList(reactor, args):
    user = _needUser(args)
    proto = await _session(reactor, args, user, _readPassword(args, False))
    snapshots = await proto.listSnapshots()
    proto.transport.loseConnection()
    if args.json:
        print(json.dumps(snapshots, indent=2))
    elif not snapshots:
        print("no snapshots")
    else:
        # sizes for people here; list --json keeps the bytes
        print(f"{'ID':<40} {'CREATED':<21} {'FILES':>7} {'SIZE':>10} {'ADDED':>10}  SOURCE")
        for s in snapshots:
            print(
                f"{s['id']:<40} {s['created']:<21} {s['files']:>7} {humanSize(s['size']):>10}"
                f" {humanSize(s['added']):>10}  {s['source']}"
            )
    return EXIT_OK


#: Seconds between LIST requests that keep a connection alive while the
#: client plans a large tree (the server closes it after 120 s idle).
KEEPALIVE = 50


def _planDone(reactor, planning, seconds):
    """
    @return: a L{Deferred} firing with C{True} once C{planning} has fired
        (whatever its result), or C{False} after C{seconds}.
    """
    d = Deferred()

    def timeout():
        if not d.called:
            d.callback(False)

    call = reactor.callLater(seconds, timeout)

    def done(result):
        if call.active():
            call.cancel()
        if not d.called:
            d.callback(True)
        return result

    planning.addBoth(done)
    return d


#: The interpreter's switch interval while a backup is planned.  The plan's
#: threads release the GIL around each file's read and deflate, and then
#: wait to take it back; at Python's default (5 ms) they wait longer for it,
#: while the tree walker holds it.  Set only while planning: nothing else
#: gained from it (C{docs/performance.rst}).
PLAN_SWITCH_INTERVAL = 0.0005


def _planInThread(runInThread, *args, **kwargs):
    """
    Plan a zip (L{planArchive}) in a thread, with the interpreter's switch
    interval at L{PLAN_SWITCH_INTERVAL} until the plan is done.

    @param runInThread: C{deferToThread}, or a stand-in.
    @return: a L{Deferred} that fires with the plan.
    """
    previous = sys.getswitchinterval()
    sys.setswitchinterval(PLAN_SWITCH_INTERVAL)

    def planned(result):
        sys.setswitchinterval(previous)
        return result

    return runInThread(planArchive, *args, **kwargs).addBoth(planned)


class _Planner:
    """
    The plans of one backup: the first may use the forked worker processes
    (L{startPlanWorkers}), any later one (a full backup after a refused
    incremental) runs in threads; L{close} waits for every plan and drops
    its spool.
    """

    def __init__(self, path, name, compression, workers, exclude=None):
        self.path = path
        self.name = name
        self.compression = compression
        self.exclude = exclude
        self.stop = threading.Event()
        self._workers = workers
        self._plans = []
        self._spools = []

    def start(self, parent=None):
        """
        @return: a L{Deferred} firing with the L{ArchivePlan}.
        """
        spool = Spool()
        self._spools.append(spool)
        workers, self._workers = self._workers, None
        planning = _planInThread(
            deferToThread,
            self.path,
            self.name,
            self.compression,
            spool,
            stop=self.stop,
            workers=None if workers is None else workers.pool,
            parent=parent,
            exclude=self.exclude or None,
        )
        if workers is not None:
            planning.addBoth(_stopWorkers, workers)
        self._plans.append(planning)
        return planning

    def interrupt(self):
        """
        Stop planning now (a signal arrived): the plans fail and the workers
        end; L{close} still waits for them.
        """
        self.stop.set()
        if self._workers is not None:
            self._workers.stop()

    async def close(self):
        self.stop.set()
        if self._workers is not None:
            self._workers.stop()
        for planning in self._plans:
            try:
                await planning  # then no plan thread writes to the spool
            except Exception:
                pass
        for spool in self._spools:
            spool.close()


def _stopWorkers(result, workers):
    workers.stop()
    return result


async def cmdBackup(reactor, args):
    user = _needUser(args)
    path = os.path.abspath(args.path)
    if not os.path.exists(path):
        raise Fatal(EXIT_USAGE, f"{args.path}: no such file or folder")
    if not (os.path.isdir(path) or os.path.isfile(path)):
        raise Fatal(EXIT_USAGE, f"{args.path}: not a regular file or folder")
    name = os.path.basename(path.rstrip(os.sep))
    if not name:
        raise Fatal(EXIT_USAGE, "cannot back up the root folder as a whole")
    if not os.access(path, os.R_OK):
        raise Fatal(EXIT_ERROR, f"{args.path}: permission denied")
    kind = "dir" if os.path.isdir(path) else "file"
    if args.parent and (args.full or kind != "dir"):
        raise Fatal(EXIT_USAGE, "--parent needs a folder to back up, and not --full")
    try:
        exclude = Excludes.fromOptions(args.exclude, args.exclude_file, args.exclude_caches)
    except OSError as e:
        raise Fatal(EXIT_USAGE, f"cannot read exclude file {e.filename}: {e.strerror}") from None
    if exclude and kind != "dir":
        raise Fatal(EXIT_USAGE, "--exclude options need a folder to back up")
    password = _readPassword(args, False)
    # forked first, while the client has no other thread (planworkers)
    workers = startPlanWorkers() if kind == "dir" else None
    planner = _Planner(path, name, args.compression, workers, exclude)
    _interrupts(args).onInterrupt(planner.interrupt)
    incremental = kind == "dir" and not args.full
    # a full backup is planned while connecting and logging in; an
    # incremental one needs its parent's manifest first
    planning = None if incremental else planner.start()
    try:
        proto = await _session(reactor, args, user, password)
        try:
            return await _sendBackup(reactor, args, proto, planner, planning, name, kind)
        finally:
            proto.transport.loseConnection()
    finally:
        await planner.close()


async def _findParent(proto, args, name):
    """
    Pick the parent of an incremental backup (C{--parent}, else the newest
    snapshot of the same folder name) and read its manifest.

    @return: a L{ParentFiles}, or C{None} for a full backup.
    """
    snapshots = await proto.listSnapshots()
    if args.parent:
        rows = [s for s in snapshots if s["id"] == args.parent]
        if not rows:
            raise Fatal(EXIT_USAGE, f"--parent {args.parent}: no such snapshot")
        if rows[0]["source"] != name or rows[0]["kind"] != "dir":
            raise Fatal(
                EXIT_USAGE, f"--parent {args.parent}: it is a backup of another file or folder"
            )
    else:
        rows = [s for s in snapshots if s["source"] == name and s["kind"] == "dir"]
        if not rows:
            return None
    parent = ParentFiles(rows[-1]["id"])
    try:
        parent.digest = await proto.fetchManifest(parent.snapshotId, parent.add)
    except ProtocolError as e:
        if e.code != Code.NOT_FOUND:
            raise
        print(
            f"warning: snapshot {parent.snapshotId} has no manifest (made by an older server):"
            " sending a full backup",
            file=sys.stderr,
        )
        return None
    return parent


async def _sendBackup(reactor, args, proto, planner, planning, name, kind):
    quiet = _quiet(args)
    parent = None
    if planning is None:
        parent = await _findParent(proto, args, name)
        planning = planner.start(parent)
    plan = await _awaitPlan(reactor, proto, planning)
    report = plan.report
    for line in report.skipped + report.unreadable:
        print(f"warning: {line}", file=sys.stderr)
    sent = 0
    while True:
        streams = []

        def openStream(plan=plan, streams=streams):
            # each attempt reads the files anew, with the same plan
            streams.append(ArchiveStream(plan))
            return streams[-1]

        incremental = None
        if parent is not None:
            incremental = IncrementalParent(parent.snapshotId, parent.digest, plan.keep.pages())
            sent += incremental.bytesSent
        try:
            with progressBar(f"send {name}", plan.size, quiet) as bar:
                snapshot = await proto.backup(
                    openStream, plan.size, name, kind, progress=bar, parent=incremental
                )
        except ProtocolError as e:
            if e.code != Code.PARENT_CHANGED:
                raise
            print(
                f"warning: parent snapshot {parent.snapshotId} changed: sending a full backup",
                file=sys.stderr,
            )
            sent += plan.size * len(streams)
            parent = None
            plan = await _awaitPlan(reactor, proto, planner.start())
            continue
        sent += plan.size * len(streams)
        break
    changed = streams[-1].changed
    for line in changed:
        print(f"warning: {line}", file=sys.stderr)
    result = backupResult(snapshot, sent, plan.report, parent)
    if args.json:
        print(json.dumps(result))
    else:
        if not (args.quiet or args.quiet2):
            # the summary is a result, shown off a terminal too (unlike bars)
            print(backupSummary(result), file=sys.stderr)
        print(snapshot["id"])
    return EXIT_WARNINGS if report.skipped or report.unreadable or changed else EXIT_OK


async def _awaitPlan(reactor, proto, planning):
    while not await _planDone(reactor, planning, KEEPALIVE):
        # keep the connection from idling out while a large tree is planned
        await proto.listSnapshots()
    return await planning


def backupResult(snapshot, sent, report, parent):
    """
    @param sent: the bytes sent for the upload: the zip over every attempt
        and the keep list.
    @param parent: the L{ParentFiles} of an incremental backup, or C{None}
        for a full one (whose files are then all new).
    @return: what C{backup --json} prints for a stored snapshot.
    """
    if parent is None:
        new, changed, unchanged, deleted = snapshot["files"], 0, 0, 0
    else:
        new, changed = report.filesNew, report.filesChanged
        unchanged = report.filesUnchanged
        deleted = len(parent.files) - unchanged - changed
    return {
        "id": snapshot["id"],
        "parent": snapshot["parent"],
        "files_new": new,
        "files_changed": changed,
        "files_unchanged": unchanged,
        "files_deleted": deleted,
        "excluded": report.excluded,
        "hardlinks": report.hardlinks,
        "bytes_sent": sent,
        "bytes_stored": snapshot["added"],
        "snapshot": snapshot,
    }


def backupSummary(result):
    """
    @return: the one line a person reads after a backup (L{backupResult}).
    """
    parent = result["parent"] or "none, full backup"
    excluded = f" {result['excluded']} excluded;" if result.get("excluded") else ""
    if result.get("hardlinks"):
        excluded += f" {result['hardlinks']} sent as hard links;"
    return (
        f"{result['id']}: {result['files_new']} new, {result['files_changed']} changed,"
        f" {result['files_unchanged']} unchanged, {result['files_deleted']} deleted files;"
        f"{excluded} sent {humanSize(result['bytes_sent'])},"
        f" stored {humanSize(result['bytes_stored'])} (parent: {parent})"
    )


async def cmdRestore(reactor, args):
    user = _needUser(args)
    password = _readPassword(args, False)
    quiet = _quiet(args)
    dest = os.path.abspath(args.dest)
    if os.path.lexists(dest) and not os.path.isdir(dest):
        raise Fatal(EXIT_USAGE, f"{args.dest} exists and is not a folder")
    bars = []

    def began(fields):
        for bar in bars:
            bar.close()
        bars[:] = [progressBar(f"receive {fields['name']}", fields["size"], quiet)]

    # unpacked as it arrives, into a hidden folder inside DEST
    staging = RestoreStaging(dest)

    def openSink(fields, attempt):
        # owners and setuid/setgid/sticky bits only as root, as tar does
        return ExtractSink(
            os.path.join(staging.path, str(attempt)), RESTORE_LIMITS, ownership=os.geteuid() == 0
        )

    try:
        proto = await _session(reactor, args, user, password)
        row = pickSnapshot(await proto.listSnapshots(), args.snapshot, args.source)
        include = [includePath(row["source"], p) for p in args.include]
        if not quiet:
            print(
                f"restoring {row['id']} ({row['source']}, {row['created']})",
                file=sys.stderr,
            )
        await _checkRestore(proto, row, dest, args.overwrite, include)
        try:
            begin, sink = await proto.restore(
                row["id"],
                openSink,
                progress=lambda n: bars[0](n),
                beginHook=began,
                include=include,
            )
        finally:
            for bar in bars:
                bar.close()
        proto.transport.loseConnection()
        _interrupts(args).check()  # a restore is placed whole or not at all
        index = await deferToThread(
            placeUnpacked, sink, dest, begin["name"], begin["kind"], args.overwrite
        )
    finally:
        await deferToThread(staging.remove)
    target = os.path.join(dest, begin["name"])
    if sink.droppedSpecial:
        print(
            f"dropped the setuid, setgid or sticky bits of {sink.droppedSpecial} entries"
            " (only a restore as root keeps them)",
            file=sys.stderr,
        )
    if args.json:
        print(
            json.dumps(
                {
                    "snapshot": begin["snapshot"],
                    "path": target,
                    "bytes": index.size,
                    "files": index.files,
                    "dropped_special": sink.droppedSpecial,
                }
            )
        )
    else:
        print(f"restored {begin['snapshot']} to {target}")
    return EXIT_OK


def pickSnapshot(snapshots, snapshotId, source):
    """
    The snapshot a restore (or C{ls}) means: C{--snapshot}, else the newest
    of C{--source}, else the newest if all are of one source.

    @raise Fatal: none fits, or several sources and neither option.
    """
    if snapshotId is not None:
        rows = [s for s in snapshots if s["id"] == snapshotId]
        if not rows:
            raise Fatal(EXIT_ERROR, f"no such snapshot: {snapshotId}")
        return rows[0]
    if source is not None:
        rows = [s for s in snapshots if s["source"] == source]
        if not rows:
            raise Fatal(EXIT_ERROR, f"no snapshot of {source!r}")
        return rows[-1]
    if not snapshots:
        raise Fatal(EXIT_ERROR, "no snapshots")
    sources = sorted({s["source"] for s in snapshots})
    if len(sources) > 1:
        names = ", ".join(sources[:10]) + (", ..." if len(sources) > 10 else "")
        raise Fatal(
            EXIT_USAGE,
            f"snapshots of {len(sources)} sources ({names}): name one with --source NAME"
            " or --snapshot ID",
        )
    return snapshots[-1]


def includePath(source, path):
    """
    @return: an C{--include} path as the manifest spells it: relative to
        the snapshot's top-level name, which may be given or left out.
    """
    path = normalisePath(path)
    if path == source or path.startswith(source + "/"):
        return path
    return f"{source}/{path}" if path else source


async def _checkRestore(proto, row, dest, overwrite, include):
    """
    Before any data moves: read the snapshot's manifest and refuse a
    restore that would meet paths in the way in DEST (naming them), or
    C{--include} paths the snapshot lacks.  Skipped when nothing is in the
    way and nothing included (most restores: no manifest to read).
    """
    if not include and not os.path.lexists(os.path.join(dest, row["source"])):
        return
    check = RestoreCheck(dest, overwrite, include)
    try:
        await proto.fetchManifest(row["id"], check.add)
    except ProtocolError as e:
        if e.code != Code.NOT_FOUND:
            raise
        if include:
            raise Fatal(
                EXIT_ERROR,
                f"snapshot {row['id']} has no manifest (an older server stored it):"
                " only a whole restore is possible",
            ) from None
        return  # checked after the download instead
    if check.unmatched:
        missing = ", ".join(sorted(check.unmatched))
        raise Fatal(EXIT_ERROR, f"not in snapshot {row['id']}: {missing}")
    if check.conflicts:
        raise Fatal(EXIT_ERROR, "refusing to restore: " + conflictReport(check.conflicts))


async def cmdLs(reactor, args):
    user = _needUser(args)
    proto = await _session(reactor, args, user, _readPassword(args, False))
    snapshotId, path = args.id, args.path
    if args.source is not None and path is None:
        snapshotId, path = None, snapshotId  # ls --source NAME [PATH]
    row = pickSnapshot(await proto.listSnapshots(), snapshotId, args.source)
    entries = []
    await _manifestOf(proto, row, entries.append)
    proto.transport.loseConnection()
    chosen = under(entries, includePath(row["source"], path) if path else "")
    if path and not chosen:
        raise Fatal(EXIT_ERROR, f"not in snapshot {row['id']}: {path}")
    if args.json:
        print(json.dumps({"snapshot": row, "entries": [entryObject(e) for e in chosen]}))
        return EXIT_OK
    if not _quiet(args):
        print(f"snapshot {row['id']} ({row['source']}, {row['created']})", file=sys.stderr)
    for entry in chosen:
        print(longLine(entry) if args.long else entry[0] + ("/" if entry[1] == "dir" else ""))
    return EXIT_OK


async def _manifestOf(proto, row, consume):
    try:
        await proto.fetchManifest(row["id"], consume)
    except ProtocolError as e:
        if e.code != Code.NOT_FOUND:
            raise
        raise Fatal(
            EXIT_ERROR,
            f"snapshot {row['id']} has no manifest (an older server stored it): nothing to show",
        ) from None


async def cmdFind(reactor, args):
    user = _needUser(args)
    proto = await _session(reactor, args, user, _readPassword(args, False))
    snapshots = await proto.listSnapshots()
    if args.source is not None:
        snapshots = [s for s in snapshots if s["source"] == args.source]
    found = []
    for row in reversed(snapshots):
        hits = []

        def consume(entry, hits=hits):
            if matches(args.pattern, entry[0]):
                hits.append(entry)

        try:
            await proto.fetchManifest(row["id"], consume)
        except ProtocolError as e:
            if e.code != Code.NOT_FOUND:
                raise
            continue  # no manifest, or removed meanwhile
        if hits:
            found.append((row, sorted(hits, key=lambda e: e[0])))
    proto.transport.loseConnection()
    if args.json:
        print(
            json.dumps(
                [
                    {"snapshot": row, "matches": [entryObject(e) for e in hits]}
                    for row, hits in found
                ]
            )
        )
        return EXIT_OK
    for row, hits in found:
        print(f"{row['id']} ({row['created']}):")
        for entry in hits:
            print(f"  {longLine(entry)}")
    if not found:
        print(f"no snapshot holds a path matching {args.pattern!r}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


async def cmdDiff(reactor, args):
    user = _needUser(args)
    proto = await _session(reactor, args, user, _readPassword(args, False))
    snapshots = await proto.listSnapshots()
    rows = [pickSnapshot(snapshots, i, None) for i in (args.first, args.second)]
    sides = []
    for row in rows:
        entries = []
        await _manifestOf(proto, row, entries.append)
        sides.append(entries)
    proto.transport.loseConnection()
    added, removed, changed = diff(*sides)
    if args.json:
        print(
            json.dumps(
                {
                    "from": rows[0]["id"],
                    "to": rows[1]["id"],
                    "added": added,
                    "removed": removed,
                    "changed": [{"path": p, "what": what} for p, what in changed],
                }
            )
        )
        return EXIT_OK
    lines = [(p, f"+ {p}") for p in added] + [(p, f"- {p}") for p in removed]
    lines += [(p, f"M {p} ({', '.join(what)})") for p, what in changed]
    for _path, line in sorted(lines):
        print(line)
    print(
        f"{len(added)} added, {len(removed)} removed, {len(changed)} changed",
        file=sys.stderr,
    )
    return EXIT_OK


async def cmdForget(reactor, args):
    user = _needUser(args)
    try:
        policy = policyFromOptions(vars(args))
    except ValueError as e:
        raise Fatal(EXIT_USAGE, str(e)) from None
    if args.ids and not policy.empty:
        raise Fatal(EXIT_USAGE, "give snapshot ids or --keep-* rules, not both")
    if not args.ids and policy.empty:
        raise Fatal(
            EXIT_USAGE,
            "no snapshot ids and no --keep-* rule: refusing to remove everything",
        )
    if args.ids and args.source:
        raise Fatal(EXIT_USAGE, "--source goes with --keep-* rules, not with ids")
    proto = await _session(reactor, args, user, _readPassword(args, False))
    decisions, state = await proto.forget(
        args.ids,
        None if args.ids else policy.toFields(),
        args.source,
        args.dry_run,
    )
    proto.transport.loseConnection()
    kept = [d for d in decisions if d["keep"]]
    removed = [d for d in decisions if not d["keep"]]
    if args.json:
        print(
            json.dumps(
                {"dry_run": args.dry_run, "state": state, "keep": kept, "remove": removed},
                indent=2,
            )
        )
        return EXIT_OK
    if not args.ids:
        print(f"policy: {policy.describe()}")
        print(f"keep {len(kept)} snapshots:")
        for d in kept:
            print(f"  {d['id']:<40} {d['created']:<21} {', '.join(d['reasons'])}")
    verb = "would remove" if args.dry_run else "remove"
    print(f"{verb} {len(removed)} snapshots:")
    for d in removed:
        print(f"  {d['id']:<40} {d['created']}")
    if removed and state == "trash":
        print("moved to the server's trash: the operator can bring them back for a while")
    return EXIT_OK


async def cmdUsage(reactor, args):
    user = _needUser(args)
    proto = await _session(reactor, args, user, _readPassword(args, False))
    info = await proto.usage()
    proto.transport.loseConnection()
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    quota = "none" if info["quota"] is None else humanSize(info["quota"])
    lines = [
        ("snapshots", str(info["snapshots"])),
        ("size", f"{humanSize(info['size'])} (all snapshots, as restored)"),
        ("on disk", f"{humanSize(info['used'])} (files shared between snapshots once)"),
        ("quota", quota),
        ("newest backup", info["newest"] or "none"),
        ("in trash", str(info["trash"])),
        ("policy", info["policy"] or "none"),
    ]
    protection = []
    if info["append_only"]:
        protection.append("append-only")
    if info["min_age_days"]:
        protection.append(f"minimum age {info['min_age_days']} days")
    lines.append(("protection", ", ".join(protection) or "none"))
    for name, value in lines:
        print(f"{name + ':':<15}{value}")
    return EXIT_OK


async def cmdPasswd(reactor, args):
    user = _needUser(args)
    old = _readPassword(args, False)
    if args.new_password_file:
        new = _firstLine(args.new_password_file, "new password file")
    elif os.environ.get("BACKUP_NEW_PASSWORD") is not None:
        new = os.environ["BACKUP_NEW_PASSWORD"]
    elif sys.stdin.isatty():
        with _interrupts(args).prompting():
            new = getpass.getpass("New password: ")
            if getpass.getpass("New password (again): ") != new:
                raise Fatal(EXIT_USAGE, "passwords do not match")
    else:
        raise Fatal(
            EXIT_USAGE,
            "no new password: use --new-password-file or BACKUP_NEW_PASSWORD"
            " (or run on a terminal to be asked)",
        )
    proto = await _session(reactor, args, user, old)
    await proto.changePassword(old, new)
    proto.transport.loseConnection()
    print(f"password changed for {user}")
    return EXIT_OK


COMMANDS = {
    "register": cmdRegister,
    "list": cmdList,
    "backup": cmdBackup,
    "restore": cmdRestore,
    "forget": cmdForget,
    "ls": cmdLs,
    "find": cmdFind,
    "diff": cmdDiff,
    "usage": cmdUsage,
    "passwd": cmdPasswd,
}


def _errorResult(error):
    """
    @return: C{(exit code, message)} for an exception that ended a command.
    """
    if isinstance(error, Fatal):
        return error.code, error.message
    if isinstance(error, ProtocolError):
        if error.code in _AUTH_CODES:
            return EXIT_AUTH, error.message
        if error.code == Code.VERIFY_FAILED:
            return EXIT_VERIFY, error.message
        if error.code == Code.STORAGE_FULL:
            return EXIT_STORAGE_FULL, error.message
        if error.code == Code.QUOTA_EXCEEDED:
            return EXIT_QUOTA, error.message
        if error.code == Code.PROTECTED:
            return EXIT_PROTECTED, error.message
        if error.code in (Code.TIMEOUT, Code.SHUTTING_DOWN):
            return EXIT_UNREACHABLE, f"server closed the connection: {error.message}"
        return EXIT_ERROR, error.message
    if isinstance(error, SinkFailed):
        error = error.error
        if not isinstance(error, OSError):
            return EXIT_ERROR, f"cannot write the restore: {error}"
    if diskFull(error):
        where = f" ({error.filename})" if error.filename else ""
        return EXIT_LOCAL_FULL, f"local disk full{where}: {error.strerror or error}"
    if isinstance(error, VerificationFailed):
        return EXIT_VERIFY, str(error)
    if isinstance(error, ConnectionGone):
        return _describeLoss(error.reason)
    if isinstance(error, RestoreConflict):
        return EXIT_ERROR, f"refusing to restore: {error}"
    if isinstance(error, ArchiveError):
        return EXIT_ERROR, f"archive refused: {error}"
    if isinstance(error, BrokenProcessPool):
        return EXIT_ERROR, (
            "a process planning the backup ended unexpectedly (out of memory?); nothing was sent"
        )
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return EXIT_ERROR, f"{error.strerror or error}{where}"
    return EXIT_ERROR, f"unexpected error: {error!r}"


def run(argv=None, reactorRunner=task.react):
    """
    Parse C{argv}, run the command, and exit with its code.
    """
    args = buildParser().parse_args(argv)
    try:
        config = loadConfig(configDir(args.config_dir))
    except ConfigError as e:
        print(f"backup-client: {e}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    resolve(args, os.environ, config, f"localhost:{DEFAULT_PORT}")
    command = COMMANDS[args.command]
    interrupts = args.interrupts = Interrupts()

    async def go(reactor):
        interrupts.install(reactor)
        try:
            code = await command(reactor, args)
        except Exception as e:
            code, message = _errorResult(e)
            if interrupts.signum is None:
                print(f"backup-client: {message}", file=sys.stderr)
        if interrupts.signum is not None:
            # whatever the command ended with, it ended because of this
            print("backup-client: interrupted", file=sys.stderr)
            raise SystemExit(Interrupted(interrupts.signum).exitCode)
        if code:
            raise SystemExit(code)

    reactorRunner(lambda reactor: ensureDeferred(go(reactor)))


def main():
    """
    Run the command line of this process (see L{backup_client.entry}).
    """
    tuneAllocator()
    run(sys.argv[1:])
