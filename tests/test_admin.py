"""
C{backup-admin}: each command against a data folder a server is using
(in process), then against a running C{twistd backup-server} through the
installed commands, and a removal killed with SIGKILL midway.
"""

import contextlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from backup_proto.server import catalog
from backup_proto.server.accounts import insertUser
from backup_proto.server.admin import run
from backup_proto.server.database import Database
from backup_proto.server.storage import SnapshotStore
from backup_proto.wire.errors import Code
from backup_proto.wire.frames import Msg
from tests.helpers import TestCase, runNow
from tests.test_e2e import EndToEndCase, command
from tests.test_lifecycle import LifecycleCase
from tests.wire import Wire


class AdminCase(LifecycleCase):
    def admin(self, *argv):
        """
        @return: C{(exit code, stdout, stderr)} of C{backup-admin}.
        """
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run(["--data-dir", self.data, *argv])
        return code, out.getvalue(), err.getvalue()

    def ok(self, *argv):
        code, out, err = self.admin(*argv)
        self.assertEqual(code, 0, err)
        return out


class AdminTests(AdminCase):
    trashDays = 7

    def test_usersAndSettings(self):
        client = self.keyed()
        snap = self.fullBackup(client)
        self.ok("quota", "alice", "10G")
        self.ok("policy", "alice", "--keep-daily", "7", "--keep-within", "1m")
        self.ok("protect", "alice", "--min-age", "3")
        (row,) = json.loads(self.ok("users", "--json"))
        self.assertEqual(
            row,
            {
                "user": "alice",
                "snapshots": 1,
                "trash": 0,
                "used": snap["added"],
                "quota": 10 << 30,
                "last_backup": snap["created"],
                "policy": {
                    "last": 0,
                    "hourly": 0,
                    "daily": 7,
                    "weekly": 0,
                    "monthly": 0,
                    "yearly": 0,
                    "within": "1m",
                },
                "append_only": False,
                "min_age_days": 3,
                "disabled": False,
            },
        )
        table = self.ok("users")
        self.assertIn("10.0 GiB", table)
        self.assertIn("keep 7 daily; all within 1m of the newest", table)
        # an append-only account's policy may only use within
        code, _, err = self.admin("protect", "alice", "--append-only")
        self.assertEqual(code, 1)
        self.assertIn("may only use --keep-within", err)
        self.ok("policy", "alice", "none")
        self.ok("protect", "alice", "--append-only")
        self.ok("quota", "alice", "none")
        self.assertEqual(self.account().quota, None)
        self.assertTrue(self.account().appendOnly)
        self.ok("protect", "alice", "none")
        self.assertEqual((self.account().appendOnly, self.account().minAgeDays), (False, 0))
        log = [json.loads(line) for line in open(os.path.join(self.data, "admin.log"))]
        self.assertEqual(
            [e["command"] for e in log],
            ["quota", "policy", "protect", "policy", "protect", "quota", "protect"],
        )

    def test_usageErrors(self):
        self.keyed()
        for argv, code, text in (
            (["quota", "bob", "1G"], 1, "no account 'bob'"),
            (["quota", "alice", "lots"], 2, "bad size"),
            (["policy", "alice"], 2, "give --keep-* rules"),
            (["policy", "alice", "--keep-within", "1w"], 2, "bad duration"),
            (["protect", "alice"], 2, "--append-only"),
            (["forget", "alice"], 2, "give snapshot ids or --keep-* rules"),
            (["undelete", "alice", "nope"], 1, "no snapshot nope in the trash"),
            (["delete-user", "alice"], 2, "--yes"),
        ):
            got, out, err = self.admin(*argv)
            self.assertEqual(got, code, (argv, err))
            self.assertIn(text, err, argv)
            self.assertNotIn("Traceback", err)
        got, _, err = run(["--data-dir", "nowhere", "users"]), None, None
        self.assertEqual(got, 1)

    def test_disableAndResetPassword(self):
        self.keyed()
        self.ok("disable", "alice")
        kind, fields = Wire(self.factory).login()
        self.assertEqual(fields["code"], Code.ACCOUNT_DISABLED)
        self.ok("enable", "alice")
        with open("new.pw", "w") as f:
            f.write("fresh\n")
        self.ok("reset-password", "alice", "--password-file", "new.pw", "--pbkdf2-iterations", "10")
        self.assertEqual(Wire(self.factory).login(password="pw")[1]["code"], "auth-failed")
        self.assertEqual(Wire(self.factory).login(password="fresh")[0], Msg.OK)

    def test_trashUndeleteForget(self):
        """
        The client's removal goes to the trash, the operator lists it and
        brings it back; the operator's own forget bypasses protection and
        trash, and is logged.
        """
        client = self.keyed()
        first, second = self.backups(client, 2)
        self.successResultOf(self.forget(client, first))
        trashed = json.loads(self.ok("trash", "alice", "--json"))
        self.assertEqual([t["id"] for t in trashed], [first])
        self.ok("undelete", "alice", first)
        self.assertEqual(len(self.rows()), 2)
        self.ok("protect", "alice", "--append-only")
        out = self.ok("forget", "alice", "--keep-last", "1", "--dry-run")
        self.assertIn(f"would remove {first}", out)
        self.assertEqual(len(self.rows()), 2)
        self.ok("forget", "alice", first)
        self.assertEqual([r["id"] for r in self.rows()], [second])
        self.assertFalse(os.path.exists(self.folder(first)))
        self.assertEqual(self.rows(state=catalog.TRASH), [])
        self.assertEqual(self.account().used, self.usedOnDisk())
        entry = json.loads(open(os.path.join(self.data, "admin.log")).readlines()[-1])
        self.assertEqual((entry["command"], entry["removed"]), ("forget", [first]))

    def test_forgetLeavesPinned(self):
        """
        The operator's removal of a snapshot a restore reads is left to the
        server, which removes it when the restore ends.
        """
        client = self.keyed()
        (first,) = self.backups(client, 1)
        wire = Wire(self.factory).keyed(register=False)
        wire.received()
        wire.sendControl(Msg.RESTORE, snapshot=first, include=[])
        crc = [f for k, f in wire.received() if k is Msg.CKSUM][0]["crc"]
        out = self.ok("forget", "alice", first)
        self.assertIn("1 in use by the server", out)
        self.assertTrue(os.path.exists(self.folder(first)))
        wire.sendControl(Msg.COMMIT, crc=crc)
        self.assertEqual(wire.last()[0], Msg.DONE)
        self.assertFalse(os.path.exists(self.folder(first)))

    def test_deleteUser(self):
        client = self.keyed()
        self.backups(client, 2)
        out = self.ok("delete-user", "alice", "--yes")
        self.assertIn("alice deleted with 2 snapshots", out)
        self.assertIsNone(self.account())
        self.assertFalse(os.path.exists(os.path.join(self.data, "users", "alice")))
        self.assertEqual(Wire(self.factory).login()[1]["code"], "auth-failed")

    def test_recount(self):
        client = self.keyed()
        snap = self.fullBackup(client)
        self.db(catalog.addUsed, "alice", 12345)
        out = self.ok("recount")
        self.assertIn("alice: ", out)
        self.assertEqual(self.account().used, snap["added"])
        self.assertIn("unchanged", self.ok("recount", "alice"))


@pytest.mark.slow
class RunningServerTests(EndToEndCase):
    def admin(self, *args):
        return subprocess.run(
            [command("backup-admin"), "--data-dir", self.server.dataDir, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_againstRunningServer(self):
        """
        Quotas, protection and removal set with the installed backup-admin
        take effect on a running server at once.
        """
        os.makedirs("src")
        with open("src/big", "wb") as f:
            f.write(os.urandom(300_000))
        self.ok("register")
        first = self.ok("backup", "src").stdout.strip()
        self.assertEqual(self.admin("quota", "alice", "400K").returncode, 0)
        with open("src/more", "wb") as f:
            f.write(os.urandom(200_000))
        refused = self.client("backup", "src", "--full")
        self.assertEqual(refused.returncode, 8, refused.stderr)
        self.assertIn("would exceed the quota", refused.stderr)
        self.assertIn("of 400.0 KiB", refused.stderr)
        usage = json.loads(self.ok("usage", "--json").stdout)
        self.assertEqual((usage["snapshots"], usage["quota"]), (1, 400 << 10))
        self.assertEqual(self.admin("protect", "alice", "--append-only").returncode, 0)
        denied = self.client("forget", first)
        self.assertEqual(denied.returncode, 10, denied.stderr)
        self.assertIn("append-only", denied.stderr)
        removed = self.admin("forget", "alice", first)
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertIn("no snapshots", self.ok("list").stdout)
        users = json.loads(self.admin("users", "--json").stdout)
        self.assertEqual((users[0]["snapshots"], users[0]["used"]), (0, 0))
        self.assertEqual(self.admin("disable", "alice").returncode, 0)
        disabled = self.client("list")
        self.assertEqual(disabled.returncode, 3)
        self.assertIn("disabled", disabled.stderr)


@pytest.mark.slow
class KilledRemovalTests(TestCase):
    def test_sigkillDuringRemoval(self):
        """
        backup-admin killed with SIGKILL while it removes a large snapshot:
        the next start finishes the removal, the catalog and the disk
        agree, the other snapshot is whole and the usage is recounted.
        """
        data = os.path.abspath("data")
        db = Database(os.path.join(data, "user.db"), runNow)
        store = SnapshotStore(data, db)
        store.recover()
        db.runSync(insertUser, "alice", b"", b"", 1)
        for snapshotId, count in (("big-1", 40_000), ("small-1", 10)):
            top = os.path.join(data, "users", "alice", snapshotId, "tree")
            for d in range(count // 1000 + 1):
                os.makedirs(os.path.join(top, str(d)))
            for i in range(count):
                with open(os.path.join(top, str(i // 1000), str(i)), "wb") as f:
                    f.write(b"x" * 10)
            db.runSync(
                lambda c, i=snapshotId, n=count: c.execute(
                    "INSERT INTO snapshots (username, id, source, kind, created, zip_size, size,"
                    " files, added) VALUES ('alice', ?, 'tree', 'dir', '2026-01-01T00:00:00Z',"
                    " 1, ?, ?, ?)",
                    (i, n * 10, n, n * 10),
                )
            )
        db.runSync(catalog.addUsed, "alice", 400_100)
        db.close()
        proc = subprocess.Popen(
            [command("backup-admin"), "--data-dir", data, "forget", "alice", "big-1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        watcher = sqlite3.connect(os.path.join(data, "user.db"), timeout=10)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = watcher.execute("SELECT state FROM snapshots WHERE id = 'big-1'").fetchone()
            if state == ("purging",):
                break
            time.sleep(0.005)
        time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        watcher.close()
        self.assertEqual(state, ("purging",))
        left = sum(len(files) for _d, _s, files in os.walk(os.path.join(data, "users/alice/big-1")))
        self.assertTrue(0 < left < 40_000, left)

        db = Database(os.path.join(data, "user.db"), runNow)
        store = SnapshotStore(data, db)
        store.recover()
        self.assertEqual(
            db.runSync(lambda c: c.execute("SELECT id, state FROM snapshots").fetchall()),
            [("small-1", "live")],
        )
        self.assertFalse(os.path.exists(os.path.join(data, "users/alice/big-1")))
        self.assertEqual(len(os.listdir(os.path.join(data, "users/alice/small-1/tree/0"))), 10)
        self.assertEqual(db.runSync(catalog.account, "alice").used, 100)
        db.close()


@pytest.mark.slow
class ClientCommandTests(EndToEndCase):
    serverArgs = ("--trash-days", "7")

    def test_forgetUsagePasswd(self):
        """
        forget (dry run, JSON, through the trash), usage and passwd through
        the installed client.
        """
        os.makedirs("src")
        with open("src/a", "wb") as f:
            f.write(b"a" * 1000)
        self.ok("register")
        refused = self.client("forget")
        self.assertEqual(refused.returncode, 2)
        self.assertIn("refusing to remove everything", refused.stderr)
        first = self.ok("backup", "src").stdout.strip()
        second = self.ok("backup", "src").stdout.strip()
        dry = self.ok("forget", "--keep-last", "1", "--dry-run").stdout
        self.assertIn("policy: keep 1 last", dry)
        self.assertIn(f"{second}", dry)
        self.assertIn(f"would remove 1 snapshots:\n  {first}", dry)
        result = json.loads(self.ok("forget", "--keep-last", "1", "--json").stdout)
        self.assertEqual(
            ([d["id"] for d in result["keep"]], [d["id"] for d in result["remove"]]),
            ([second], [first]),
        )
        self.assertEqual(result["state"], "trash")
        usage = json.loads(self.ok("usage", "--json").stdout)
        self.assertEqual((usage["snapshots"], usage["trash"]), (1, 1))
        self.assertIn("in trash:      1", self.ok("usage").stdout)
        gone = self.client("forget", first)
        self.assertEqual(gone.returncode, 1)
        self.assertIn(f"no such snapshot: {first}", gone.stderr)
        os.environ["BACKUP_NEW_PASSWORD"] = "second"
        self.addCleanup(os.environ.pop, "BACKUP_NEW_PASSWORD", None)
        self.ok("passwd")
        self.assertEqual(self.client("list").returncode, 3)
        self.assertIn(second, self.ok("list", password="second").stdout)
