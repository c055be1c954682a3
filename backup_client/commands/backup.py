# -*- test-case-name: tests.test_cli_plan,tests.test_e2e -*-
"""
C{backup}: the plan made off the reactor (in worker processes and
threads), the parent found for an incremental backup, the zip sent as it
is made, and the summary.
"""

import json
import os
import sys
import threading

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from backup_client.connecting import interruptsOf, isQuiet, needUser, openSession, readPassword
from backup_client.excludes import Excludes
from backup_client.exitcodes import EXIT_ERROR, EXIT_OK, EXIT_USAGE, EXIT_WARNINGS, Fatal
from backup_client.planworkers import startPlanWorkers
from backup_client.progress import progressBar
from backup_client.protocol import IncrementalParent
from backup_proto.archive.plan import ParentFiles, planArchive
from backup_proto.archive.spool import Spool
from backup_proto.archive.stream import ArchiveStream
from backup_proto.units import humanSize
from backup_proto.wire.errors import Code, ProtocolError

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
    user = needUser(args)
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
    password = readPassword(args, False)
    # forked first, while the client has no other thread (planworkers)
    workers = startPlanWorkers() if kind == "dir" else None
    planner = _Planner(path, name, args.compression, workers, exclude)
    interruptsOf(args).onInterrupt(planner.interrupt)
    incremental = kind == "dir" and not args.full
    # a full backup is planned while connecting and logging in; an
    # incremental one needs its parent's manifest first
    planning = None if incremental else planner.start()
    try:
        proto = await openSession(reactor, args, user, password)
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
    quiet = isQuiet(args)
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
