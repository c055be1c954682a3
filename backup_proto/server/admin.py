# -*- test-case-name: tests.test_admin -*-
"""
C{backup-admin}: the operator's command, acting on a server's data folder
(its catalog and snapshots) while the server runs or not.

It shares the server's rules (L{backup_proto.server.lifecycle},
L{backup_proto.server.catalog}): a removal claims the snapshot in the
catalog and leaves alone one that a server has pinned (a restore reads it,
or a backup links from it; that server removes it when done).  Every
command that changes something is appended to C{<data-dir>/admin.log}.

Exit codes: 0 done, 1 failed (no such account or snapshot, refused), 2
usage error.
"""

import argparse
import datetime
import getpass
import json
import os
import shutil
import sqlite3
import sys
import time

from twisted.internet.defer import maybeDeferred

import backup_proto
from backup_proto.server import catalog
from backup_proto.server.accounts import (
    DEFAULT_ITERATIONS,
    checkPassword,
    checkUsername,
    newKey,
)
from backup_proto.server.catalog import LIVE, TRASH, transaction
from backup_proto.server.database import Database
from backup_proto.server.lifecycle import OPERATOR, Lifecycle
from backup_proto.server.scrub import Scrubber, writeStatus
from backup_proto.server.storage import SnapshotStore
from backup_proto.units import humanSize, parseSize
from backup_proto.wire.errors import ProtocolError
from backup_proto.wire.policy import KeepPolicy, addPolicyOptions, policyFromOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class Failed(Exception):
    """
    Stop with a one-line message and an exit code.
    """

    def __init__(self, message, code=EXIT_FAILED):
        super().__init__(message)
        self.code = code


class _WallClock:
    @staticmethod
    def seconds():
        return time.time()


def _runHere(f, *args):
    return maybeDeferred(f, *args)


def wait(d):
    """
    @return: the result of a L{Deferred} that has fired (everything here
        runs in place); its failure is raised.
    """
    out = []
    d.addBoth(out.append)
    result = out[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


class Operator:
    """
    The data folder, opened for C{backup-admin}.
    """

    def __init__(self, dataDir):
        self.dataDir = os.path.abspath(dataDir)
        path = os.path.join(self.dataDir, "user.db")
        if not os.path.exists(path):
            raise Failed(f"{path} not found: is --data-dir the server's data folder?")
        self.db = Database(path, lambda f: maybeDeferred(f))
        self.store = SnapshotStore(self.dataDir, self.db)
        self.lifecycle = Lifecycle(self.store, _runHere, _WallClock(), holder="backup-admin")

    def run(self, f, *args):
        try:
            return self.db.runSync(f, *args)
        except ProtocolError as e:
            raise Failed(e.message) from None

    def audit(self, command, **details):
        """
        Append what was done to C{admin.log}: when, by whom, what.
        """
        line = {
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "operator": getpass.getuser(),
            "command": command,
            **details,
        }
        path = os.path.join(self.dataDir, "admin.log")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")

    def close(self):
        self.db.close()


def _user(op, name):
    try:
        checkUsername(name)
    except ProtocolError as e:
        raise Failed(e.message, EXIT_USAGE) from None
    found = op.run(catalog.account, name)
    if found is None:
        raise Failed(f"no account {name!r}")
    return found


def cmdUsers(op, args):
    rows = op.run(catalog.accounts)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no accounts")
        return EXIT_OK
    print(
        f"{'USER':<20} {'SNAPSHOTS':>9} {'TRASH':>5} {'ON DISK':>10} {'QUOTA':>10}"
        f"  {'LAST BACKUP':<20} FLAGS / POLICY"
    )
    for row in rows:
        flags = []
        if row["disabled"]:
            flags.append("disabled")
        if row["append_only"]:
            flags.append("append-only")
        if row["min_age_days"]:
            flags.append(f"min-age {row['min_age_days']}d")
        if row["policy"] is not None:
            flags.append(_policyText(row["policy"]))
        quota = "-" if row["quota"] is None else humanSize(row["quota"])
        print(
            f"{row['user']:<20} {row['snapshots']:>9} {row['trash']:>5}"
            f" {humanSize(row['used']):>10} {quota:>10}  {row['last_backup'] or 'never':<20}"
            f" {'; '.join(flags) or '-'}"
        )
    return EXIT_OK


def _policyText(fields):
    return KeepPolicy.fromFields(fields).describe()


def cmdQuota(op, args):
    _user(op, args.user)
    if args.size == "none":
        quota = None
    else:
        try:
            quota = parseSize(args.size)
        except ValueError as e:
            raise Failed(str(e), EXIT_USAGE) from None
    op.run(catalog.setQuota, args.user, quota)
    op.audit("quota", user=args.user, quota=quota)
    print(f"{args.user}: quota {'none' if quota is None else humanSize(quota)}")
    return EXIT_OK


def _policyOption(args):
    try:
        return policyFromOptions(vars(args))
    except ValueError as e:
        raise Failed(str(e), EXIT_USAGE) from None


def cmdPolicy(op, args):
    _user(op, args.user)
    policy = _policyOption(args)
    if bool(args.none) == (not policy.empty):
        raise Failed("give --keep-* rules, or 'none' to remove the policy", EXIT_USAGE)
    policy = None if args.none else policy
    op.run(catalog.setPolicy, args.user, policy)
    op.audit("policy", user=args.user, policy=None if policy is None else policy.toFields())
    print(f"{args.user}: {'no policy' if policy is None else policy.describe()}")
    return EXIT_OK


def cmdProtect(op, args):
    _user(op, args.user)
    if args.none and (args.append_only or args.min_age):
        raise Failed("'none' takes no other option", EXIT_USAGE)
    if not args.none and not (args.append_only or args.min_age):
        raise Failed("give --append-only and/or --min-age DAYS, or 'none'", EXIT_USAGE)
    op.run(catalog.setProtection, args.user, args.append_only, args.min_age or 0)
    op.audit("protect", user=args.user, append_only=args.append_only, min_age=args.min_age or 0)
    print(f"{args.user}: {_protectionText(args.append_only, args.min_age)}")
    return EXIT_OK


def _protectionText(appendOnly, minAge):
    parts = (["append-only"] if appendOnly else []) + (
        [f"minimum age {minAge} days"] if minAge else []
    )
    return ", ".join(parts) or "no protection"


def cmdDisable(op, args, disabled=True):
    _user(op, args.user)
    op.run(catalog.setDisabled, args.user, disabled)
    op.audit("disable" if disabled else "enable", user=args.user)
    print(f"{args.user}: {'disabled' if disabled else 'enabled'}")
    return EXIT_OK


def cmdEnable(op, args):
    return cmdDisable(op, args, disabled=False)


def _newPassword(args):
    if args.password_file:
        try:
            with open(args.password_file, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise Failed(f"cannot read {args.password_file}: {e.strerror}", EXIT_USAGE) from None
    elif sys.stdin.isatty():
        password = getpass.getpass("New password: ")
        if getpass.getpass("New password (again): ") != password:
            raise Failed("passwords do not match", EXIT_USAGE)
    else:
        raise Failed("no password: use --password-file (or run on a terminal)", EXIT_USAGE)
    try:
        return checkPassword(password)
    except ProtocolError as e:
        raise Failed(e.message, EXIT_USAGE) from None


def cmdResetPassword(op, args):
    _user(op, args.user)
    data = _newPassword(args)
    salt, key = newKey(data, args.pbkdf2_iterations)
    op.run(catalog.setPassword, args.user, salt, key, args.pbkdf2_iterations)
    op.audit("reset-password", user=args.user)
    print(f"{args.user}: password reset")
    return EXIT_OK


def cmdTrash(op, args):
    _user(op, args.user)
    rows = op.run(catalog.snapshots, args.user, TRASH)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("trash is empty")
    for row in rows:
        print(f"{row['id']:<40} {row['created']:<21} trashed {row['changed']}")
    return EXIT_OK


def cmdUndelete(op, args):
    _user(op, args.user)
    try:
        wait(op.lifecycle.undelete(args.user, args.id))
    except ProtocolError:
        raise Failed(f"{args.user} has no snapshot {args.id} in the trash") from None
    op.audit("undelete", user=args.user, id=args.id)
    print(f"{args.user}: {args.id} is back")
    return EXIT_OK


def cmdForget(op, args):
    _user(op, args.user)
    policy = _policyOption(args)
    if bool(args.ids) == (not policy.empty):
        raise Failed("give snapshot ids or --keep-* rules (not both, not neither)", EXIT_USAGE)
    try:
        result = wait(
            op.lifecycle.forget(
                args.user,
                args.ids,
                None if args.ids else policy,
                args.source,
                args.dry_run,
                actor=OPERATOR,
            )
        )
    except ProtocolError as e:
        raise Failed(e.message) from None
    removed = [d.row["id"] for d in result.decisions if not d.keep]
    if not args.dry_run:
        op.audit("forget", user=args.user, removed=removed)
    left = op.run(
        lambda conn: [
            i
            for i in removed
            if conn.execute(
                "SELECT 1 FROM snapshots WHERE username = ? AND id = ?", (args.user, i)
            ).fetchone()
        ]
    )
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": args.dry_run,
                    "keep": [d.row["id"] for d in result.decisions if d.keep],
                    "remove": removed,
                    "pending": [] if args.dry_run else left,
                }
            )
        )
        return EXIT_OK
    for d in result.decisions:
        what = "keep  " if d.keep else ("would remove" if args.dry_run else "remove")
        print(f"{what} {d.row['id']:<40} {d.row['created']:<21} {', '.join(d.reasons)}")
    if left and not args.dry_run:
        print(
            f"{len(left)} in use by the server (a restore, or a backup's parent):"
            " it removes them when done"
        )
    return EXIT_OK


def cmdDeleteUser(op, args):
    _user(op, args.user)
    if not args.yes:
        if not sys.stdin.isatty():
            raise Failed("delete-user needs --yes when not run on a terminal", EXIT_USAGE)
        answer = input(f"Delete {args.user} and all its snapshots? Type the name to confirm: ")
        if answer.strip() != args.user:
            raise Failed("not confirmed: nothing deleted")

    def drop(conn):
        with transaction(conn):
            conn.execute("DELETE FROM users WHERE username = ?", (args.user,))
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM snapshots WHERE username = ? AND state IN (?, ?)",
                    (args.user, LIVE, TRASH),
                )
            ]
            when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            catalog.setState(conn, args.user, ids, catalog.REMOVING, when, (LIVE, TRASH))
            return ids

    ids = op.run(drop)
    op.audit("delete-user", user=args.user, snapshots=len(ids))
    for snapshotId in ids:
        wait(op.lifecycle.purge(args.user, snapshotId))
    left = op.run(
        lambda conn: conn.execute(
            "SELECT COUNT(*) FROM snapshots WHERE username = ?", (args.user,)
        ).fetchone()[0]
    )
    if left:
        print(f"{args.user} deleted; {left} snapshots in use are removed by the server when done")
    else:
        shutil.rmtree(op.store.userDir(args.user), ignore_errors=True)
        print(f"{args.user} deleted with {len(ids)} snapshots")
    return EXIT_OK


def cmdRecount(op, args):
    names = [args.user] if args.user else [row["user"] for row in op.run(catalog.accounts)]
    for name in names:
        before = _user(op, name).used
        after = op.store.recount(name)
        if after is None:
            raise Failed(f"{name}: its usage kept changing; try again")
        op.audit("recount", user=name, before=before, after=after)
        change = "unchanged" if after == before else f"was {humanSize(before)}"
        print(f"{name}: {humanSize(after)} on disk ({change})")
    return EXIT_OK


def cmdCheck(op, args):
    """
    Check that catalog, manifests and files agree (with C{--read-data},
    every stored file's content too, each inode once): exit 1 if anything
    is wrong, one line per problem.
    """
    if args.user:
        _user(op, args.user)
    scrubber = Scrubber(op.dataDir, readData=args.read_data)
    report = op.run(scrubber.run, [args.user] if args.user else None)
    writeStatus(op.dataDir, report)
    if args.json:
        print(json.dumps(report.toJSON(), indent=2))
    else:
        for problem in report.problems:
            print(problem.line())
        read = (
            f", {report.filesRead} files read ({humanSize(report.bytesRead)})"
            if args.read_data
            else ""
        )
        print(
            f"checked {report.snapshots} snapshots of {report.accounts} accounts,"
            f" {report.entries} entries{read}: {len(report.problems)} problems",
            file=sys.stderr,
        )
    return EXIT_FAILED if report.problems else EXIT_OK


COMMANDS = {
    "check": cmdCheck,
    "users": cmdUsers,
    "quota": cmdQuota,
    "policy": cmdPolicy,
    "protect": cmdProtect,
    "disable": cmdDisable,
    "enable": cmdEnable,
    "delete-user": cmdDeleteUser,
    "reset-password": cmdResetPassword,
    "trash": cmdTrash,
    "undelete": cmdUndelete,
    "forget": cmdForget,
    "recount": cmdRecount,
}


def buildParser():
    parser = argparse.ArgumentParser(
        prog="backup-admin",
        description="Manage a backup server's accounts and snapshots (its data folder),"
        " while the server runs or not.",
        epilog="Exit codes: 0 done, 1 failed, 2 usage error. Changes are logged to"
        " <data-dir>/admin.log.",
    )
    parser.add_argument(
        "--version", action="version", version=f"backup-admin {backup_proto.__version__}"
    )
    parser.add_argument(
        "--data-dir",
        "-d",
        default=os.environ.get("BACKUP_DATA_DIR", "backup-data"),
        help="the server's --data-dir (env BACKUP_DATA_DIR; default backup-data)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    users = sub.add_parser("users", help="list accounts: snapshots, usage, quota, last backup")
    users.add_argument("--json", action="store_true")
    quota = sub.add_parser("quota", help="set an account's quota (e.g. 10G) or none")
    quota.add_argument("user", metavar="USER")
    quota.add_argument("size", metavar="SIZE|none")
    policy = sub.add_parser("policy", help="set the retention policy the server applies")
    policy.add_argument("user", metavar="USER")
    policy.add_argument("none", nargs="?", choices=["none"], help="remove the policy")
    addPolicyOptions(policy)
    protect = sub.add_parser("protect", help="set an account's delete protection, or none")
    protect.add_argument("user", metavar="USER")
    protect.add_argument("none", nargs="?", choices=["none"], help="remove the protection")
    protect.add_argument(
        "--append-only", action="store_true", help="the account's client may never remove"
    )
    protect.add_argument(
        "--min-age",
        type=int,
        metavar="DAYS",
        help="the client may not remove snapshots younger than DAYS",
    )
    for name, what in (("disable", "refuse the account's logins"), ("enable", "allow them")):
        sub.add_parser(name, help=what).add_argument("user", metavar="USER")
    delete = sub.add_parser("delete-user", help="delete an account and all its snapshots")
    delete.add_argument("user", metavar="USER")
    delete.add_argument("--yes", action="store_true", help="do not ask")
    reset = sub.add_parser("reset-password", help="set a new password for an account")
    reset.add_argument("user", metavar="USER")
    reset.add_argument("--password-file", metavar="FILE", help="read it from FILE's first line")
    reset.add_argument(
        "--pbkdf2-iterations", type=int, default=DEFAULT_ITERATIONS, help=argparse.SUPPRESS
    )
    trash = sub.add_parser("trash", help="list an account's trashed snapshots")
    trash.add_argument("user", metavar="USER")
    trash.add_argument("--json", action="store_true")
    undelete = sub.add_parser("undelete", help="bring a snapshot back from the trash")
    undelete.add_argument("user", metavar="USER")
    undelete.add_argument("id", metavar="ID")
    forget = sub.add_parser(
        "forget", help="remove snapshots at once (ignores protection and trash; logged)"
    )
    forget.add_argument("user", metavar="USER")
    forget.add_argument("ids", metavar="ID", nargs="*")
    addPolicyOptions(forget)
    forget.add_argument("--source", metavar="NAME")
    forget.add_argument("--dry-run", action="store_true")
    forget.add_argument("--json", action="store_true")
    recount = sub.add_parser("recount", help="count usage again from disk and store it")
    recount.add_argument("user", metavar="USER", nargs="?")
    check = sub.add_parser(
        "check", help="check that catalog, manifests and stored files agree (exit 1 if not)"
    )
    check.add_argument("user", metavar="USER", nargs="?")
    check.add_argument(
        "--read-data",
        action="store_true",
        help="also re-read every stored file against its manifest's CRC-32 (each inode once)",
    )
    check.add_argument("--json", action="store_true")
    return parser


def run(argv=None):
    """
    @return: the exit code.
    """
    args = buildParser().parse_args(argv)
    try:
        op = Operator(args.data_dir)
        try:
            return COMMANDS[args.command](op, args)
        finally:
            op.close()
    except Failed as e:
        print(f"backup-admin: {e}", file=sys.stderr)
        return e.code
    except sqlite3.Error as e:
        print(f"backup-admin: the catalog could not be used: {e}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        print(f"backup-admin: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_FAILED


def main():
    """
    Console-script entry point.
    """
    raise SystemExit(run(sys.argv[1:]))
