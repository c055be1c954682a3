# -*- test-case-name: tests.test_e2e,tests.test_lifecycle -*-
"""
The account's commands: C{register}, C{list}, C{forget}, C{usage},
C{passwd}.
"""

import getpass
import json
import os
import sys

from backup_client.connecting import (
    answered,
    connect,
    firstLine,
    interruptsOf,
    needUser,
    openSession,
    readPassword,
)
from backup_client.exitcodes import EXIT_OK, EXIT_USAGE, Fatal
from backup_proto.units import humanSize
from backup_proto.wire.policy import policyFromOptions


async def cmdRegister(reactor, args):
    user = needUser(args)
    password = readPassword(args, confirm=True)
    proto = await connect(reactor, args)
    await answered(reactor, proto, proto.register(user, password))
    proto.transport.loseConnection()
    print(f"registered {user}")
    return EXIT_OK


async def cmdList(reactor, args):
    user = needUser(args)
    proto = await openSession(reactor, args, user, readPassword(args, False))
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


async def cmdForget(reactor, args):
    user = needUser(args)
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
    proto = await openSession(reactor, args, user, readPassword(args, False))
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
    user = needUser(args)
    proto = await openSession(reactor, args, user, readPassword(args, False))
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
    user = needUser(args)
    old = readPassword(args, False)
    if args.new_password_file:
        new = firstLine(args.new_password_file, "new password file")
    elif os.environ.get("BACKUP_NEW_PASSWORD") is not None:
        new = os.environ["BACKUP_NEW_PASSWORD"]
    elif sys.stdin.isatty():
        with interruptsOf(args).prompting():
            new = getpass.getpass("New password: ")
            if getpass.getpass("New password (again): ") != new:
                raise Fatal(EXIT_USAGE, "passwords do not match")
    else:
        raise Fatal(
            EXIT_USAGE,
            "no new password: use --new-password-file or BACKUP_NEW_PASSWORD"
            " (or run on a terminal to be asked)",
        )
    proto = await openSession(reactor, args, user, old)
    await proto.changePassword(old, new)
    proto.transport.loseConnection()
    print(f"password changed for {user}")
    return EXIT_OK
