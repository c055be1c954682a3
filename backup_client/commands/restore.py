# -*- test-case-name: tests.test_browse,tests.test_e2e -*-
"""
C{restore}: which snapshot, which paths, conflicts found from the manifest
before any data moves, then the zip unpacked as it arrives and placed.
"""

import json
import os
import sys

from twisted.internet.threads import deferToThread

from backup_client.browse import RestoreCheck, conflictReport, normalisePath
from backup_client.connecting import interruptsOf, isQuiet, needUser, openSession, readPassword
from backup_client.exitcodes import EXIT_ERROR, EXIT_OK, EXIT_USAGE, Fatal
from backup_client.progress import progressBar
from backup_client.restoring import RestoreStaging, placeUnpacked
from backup_proto.archive.extract import ExtractSink
from backup_proto.archive.policy import Limits
from backup_proto.wire.errors import Code, ProtocolError

#: What a restore may unpack on this machine.
RESTORE_LIMITS = Limits(maxEntries=10_000_000, maxUnpacked=1 << 44, maxRatio=200)


async def cmdRestore(reactor, args):
    user = needUser(args)
    password = readPassword(args, False)
    quiet = isQuiet(args)
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
        proto = await openSession(reactor, args, user, password)
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
        interruptsOf(args).check()  # a restore is placed whole or not at all
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
