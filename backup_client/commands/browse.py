# -*- test-case-name: tests.test_browse -*-
"""
C{ls}, C{find} and C{diff}: snapshots looked into from their manifests
(L{backup_client.browse}), nothing downloaded.
"""

import json
import sys

from backup_client.browse import diff, entryObject, longLine, matches, under
from backup_client.commands.restore import includePath, pickSnapshot
from backup_client.connecting import isQuiet, needUser, openSession, readPassword
from backup_client.exitcodes import EXIT_ERROR, EXIT_OK, Fatal
from backup_proto.wire.errors import Code, ProtocolError


async def cmdLs(reactor, args):
    user = needUser(args)
    proto = await openSession(reactor, args, user, readPassword(args, False))
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
    if not isQuiet(args):
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
    user = needUser(args)
    proto = await openSession(reactor, args, user, readPassword(args, False))
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
    user = needUser(args)
    proto = await openSession(reactor, args, user, readPassword(args, False))
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
