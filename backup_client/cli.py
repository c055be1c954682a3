# -*- test-case-name: tests.test_cli_plan,tests.test_e2e -*-
"""
C{backup-client}: the command line -- its options, the dispatch to the
commands (L{backup_client.commands}), and every error turned into one line
and an exit code.

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
import os
import sys
from concurrent.futures.process import BrokenProcessPool

from twisted.internet import task
from twisted.internet.defer import ensureDeferred

import backup_proto
from backup_client.commands.account import cmdForget, cmdList, cmdPasswd, cmdRegister, cmdUsage
from backup_client.commands.backup import cmdBackup
from backup_client.commands.browse import cmdDiff, cmdFind, cmdLs
from backup_client.commands.restore import cmdRestore
from backup_client.config import ConfigError, configDir, loadConfig, resolve
from backup_client.connecting import describeLoss
from backup_client.exitcodes import (
    EXIT_AUTH,
    EXIT_ERROR,
    EXIT_LOCAL_FULL,
    EXIT_PROTECTED,
    EXIT_QUOTA,
    EXIT_STORAGE_FULL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    EXIT_VERIFY,
    Fatal,
)
from backup_client.interrupts import Interrupted, Interrupts
from backup_client.protocol import ConnectionGone, VerificationFailed
from backup_client.restoring import RestoreConflict
from backup_proto.allocator import tuneAllocator
from backup_proto.archive.compression import COMPRESSION_CHOICES
from backup_proto.archive.policy import ArchiveError
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import DEFAULT_PORT
from backup_proto.wire.policy import addPolicyOptions
from backup_proto.wire.transfer import SinkFailed, diskFull

_AUTH_CODES = {
    Code.AUTH_FAILED,
    Code.TOO_MANY_ATTEMPTS,
    Code.NAME_TAKEN,
    Code.BAD_USERNAME,
    Code.BAD_PASSWORD,
    Code.ACCOUNT_DISABLED,
}


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
        return describeLoss(error.reason)
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
