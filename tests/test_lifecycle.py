"""
The snapshot lifecycle in process, with the real client protocol against
the real server over TLS in memory: forget by id and by policy, delete
protection, the trash and its grace period, scheduled retention, pins that
hold a snapshot for a restore or a backup's parent, and quotas that count
shared files once and refuse an upload before its data moves.
"""

import os
import time

from backup_proto.archive.plan import planArchive
from backup_proto.archive.stream import ArchiveStream
from backup_proto.server import catalog
from backup_proto.server.lifecycle import OPERATOR, Lifecycle
from backup_proto.server.tap import MaintenanceService
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import Msg
from backup_proto.wire.policy import KeepPolicy
from tests.helpers import (
    ManualRunner,
    clientKey,
    connectInMemory,
    makeFactory,
    treeSignature,
)
from tests.test_incremental import IncrementalCase
from tests.wire import Wire

DAY = 86400


class LifecycleCase(IncrementalCase):
    trashDays = 0

    def setUp(self):
        super().setUp()
        # snapshots are dated by the wall clock: the test clock starts there
        self.clock.advance(time.time())

    def keyed(self, register=True):
        client, _server, self.pump = connectInMemory(self.factory)
        if register:
            self.successResultOf(self.settle(client.register("alice", "pw")))
        self.successResultOf(self.settle(client.login("alice", "pw")))
        self.successResultOf(self.settle(client.exchangeKeys(clientKey())))
        return client

    def makeFactory(self, **tunables):
        factory = makeFactory(os.path.abspath("data"), **tunables)
        factory.lifecycle = Lifecycle(
            factory.store, factory.runIO, factory.clock, trashDays=self.trashDays
        )
        return factory

    @property
    def lifecycle(self):
        return self.factory.lifecycle

    def db(self, f, *args):
        return self.factory.store.db.runSync(f, *args)

    def account(self, user="alice"):
        return self.db(catalog.account, user)

    def rows(self, user="alice", state=catalog.LIVE):
        return self.db(catalog.snapshots, user, state)

    def backups(self, client, n):
        """
        C{n} full backups, each dated a day before the next.
        """
        snaps = [self.fullBackup(client) for _ in range(n)]
        for age, snap in enumerate(reversed(snaps)):
            created = time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.seconds() - age * DAY)
            )
            self.db(
                lambda c, i=snap["id"], t=created: c.execute(
                    "UPDATE snapshots SET created = ? WHERE id = ?", (t, i)
                )
            )
        return [s["id"] for s in snaps]

    def forget(self, client, *ids, policy=None, dryRun=False):
        fields = None if policy is None else policy.toFields()
        return self.settle(client.forget(ids, fields, None, dryRun))

    def usedOnDisk(self, user="alice"):
        ids = [r[0] for r in self.db(lambda c: c.execute("SELECT id FROM snapshots").fetchall())]
        return self.factory.store.countUsed(user, ids)

    def folder(self, snapshotId):
        return os.path.join(self.data, "users", "alice", snapshotId)


class ForgetTests(LifecycleCase):
    def test_forgetIds(self):
        """
        Forgetting by id removes the folder, the manifest and the row at
        once (no trash), and the session goes on.
        """
        client = self.keyed()
        first, second = self.backups(client, 2)
        decisions, state = self.successResultOf(self.forget(client, first))
        self.assertEqual(state, "removing")
        self.assertEqual([(d["id"], d["keep"]) for d in decisions], [(first, False)])
        self.assertFalse(os.path.exists(self.folder(first)))
        self.assertFalse(os.path.exists(os.path.join(self.data, "users/alice/.manifests", first)))
        listed = self.successResultOf(self.settle(client.listSnapshots()))
        self.assertEqual([s["id"] for s in listed], [second])
        self.assertEqual(self.account().used, self.usedOnDisk())

    def test_unknownIdRemovesNothing(self):
        """
        One unknown id (or another user's) among known ones: a non-fatal
        not-found, and nothing is removed.
        """
        client = self.keyed()
        first, second = self.backups(client, 2)
        failure = self.failureResultOf(self.forget(client, first, "nope"))
        self.assertEqual(failure.value.code, Code.NOT_FOUND)
        self.assertEqual(len(self.rows()), 2)
        self.assertTrue(os.path.exists(self.folder(first)))
        wire = Wire(self.factory).keyed("mallory")
        wire.received()
        wire.sendControl(Msg.FORGET, ids=[first], policy=None, source=None, dry_run=False)
        kind, fields = wire.last()
        self.assertEqual((kind, fields["code"], fields["fatal"]), (Msg.ERROR, "not-found", False))
        self.assertEqual(len(self.rows()), 2)

    def test_policy(self):
        """
        A policy's dry run says what it keeps and why, and removes nothing;
        run for real it removes the rest.
        """
        client = self.keyed()
        ids = self.backups(client, 4)
        policy = KeepPolicy(last=1, daily=2)
        decisions, state = self.successResultOf(self.forget(client, policy=policy, dryRun=True))
        self.assertIsNone(state)
        self.assertEqual(
            [(d["id"], d["keep"], d["reasons"]) for d in decisions],
            [
                (ids[3], True, ["last snapshot", "daily snapshot"]),
                (ids[2], True, ["daily snapshot"]),
                (ids[1], False, []),
                (ids[0], False, []),
            ],
        )
        self.assertEqual(len(self.rows()), 4)
        self.successResultOf(self.forget(client, policy=policy))
        self.assertEqual([r["id"] for r in self.rows()], ids[2:])
        self.assertEqual(self.account().used, self.usedOnDisk())

    def test_emptyPolicyRefused(self):
        """
        An empty policy would remove everything: bad-message, fatal.
        """
        wire = Wire(self.factory).keyed()
        wire.received()
        wire.sendControl(
            Msg.FORGET, ids=[], policy=KeepPolicy().toFields(), source=None, dry_run=True
        )
        kind, fields = wire.last()
        self.assertEqual((kind, fields["code"], fields["fatal"]), (Msg.ERROR, "bad-message", True))


class HostileForgetTests(LifecycleCase):
    def test_badForgets(self):
        """
        Ids that are not strings, a malformed policy, ids with a policy, or
        neither: bad-message, fatal, and nothing is removed.
        """
        client = self.keyed()
        (first,) = self.backups(client, 1)
        policy = KeepPolicy(last=1).toFields()
        for fields in (
            dict(ids=[1], policy=None),
            dict(ids=[{"id": first}], policy=None),
            dict(ids=[], policy={**policy, "last": "1"}),
            dict(ids=[], policy={**policy, "within": "1w"}),
            dict(ids=[], policy={"last": 1}),
            dict(ids=[first], policy=policy),
            dict(ids=[], policy=None),
            dict(ids=[first] * 2000, policy=None),
        ):
            wire = Wire(self.factory).keyed(register=False)
            wire.received()
            wire.sendControl(Msg.FORGET, source=None, dry_run=False, **fields)
            kind, answer = wire.last()
            self.assertEqual(
                (kind, answer["code"], answer["fatal"]), (Msg.ERROR, "bad-message", True)
            )
            self.assertTrue(wire.closed)
        self.assertEqual([r["id"] for r in self.rows()], [first])


class ProtectionTests(LifecycleCase):
    def test_appendOnly(self):
        """
        An append-only account's client cannot remove anything (a
        non-fatal protected); the operator can.
        """
        client = self.keyed()
        first, _second = self.backups(client, 2)
        self.db(catalog.setProtection, "alice", True, 0)
        failure = self.failureResultOf(self.forget(client, first))
        self.assertEqual(failure.value.code, Code.PROTECTED)
        failure = self.failureResultOf(self.forget(client, policy=KeepPolicy(last=1)))
        self.assertEqual(failure.value.code, Code.PROTECTED)
        self.assertTrue(os.path.exists(self.folder(first)))
        self.successResultOf(self.lifecycle.forget("alice", [first], actor=OPERATOR))
        self.assertFalse(os.path.exists(self.folder(first)))

    def test_appendOnlyPolicyOnlyWithin(self):
        """
        An append-only account's policy may only use within.
        """
        self.keyed()
        self.db(catalog.setProtection, "alice", True, 0)
        e = self.assertRaises(
            ProtocolError, self.db, catalog.setPolicy, "alice", KeepPolicy(daily=7)
        )
        self.assertEqual(e.code, Code.PROTECTED)
        self.db(
            catalog.setPolicy,
            "alice",
            KeepPolicy.fromFields({**KeepPolicy().toFields(), "within": "30d"}),
        )
        self.db(catalog.setProtection, "alice", False, 0)
        self.db(catalog.setPolicy, "alice", KeepPolicy(daily=7))
        e = self.assertRaises(ProtocolError, self.db, catalog.setProtection, "alice", True, 0)
        self.assertEqual(e.code, Code.PROTECTED)

    def test_minimumAge(self):
        """
        With a minimum age, naming a younger snapshot is refused; a policy
        keeps young snapshots and says why; once old enough, they go.
        """
        client = self.keyed()
        ids = self.backups(client, 3)
        self.db(catalog.setProtection, "alice", False, 2)
        failure = self.failureResultOf(self.forget(client, ids[1]))
        self.assertEqual(failure.value.code, Code.PROTECTED)
        self.assertIn("younger than 2 days", failure.value.message)
        decisions, _ = self.successResultOf(self.forget(client, policy=KeepPolicy(last=1)))
        self.assertEqual(
            [(d["id"], d["keep"], d["reasons"]) for d in decisions],
            [
                (ids[2], True, ["last snapshot"]),
                (ids[1], True, ["younger than 2 days (protected)"]),
                (ids[0], False, []),
            ],
        )
        self.assertEqual([r["id"] for r in self.rows()], ids[1:])
        self.clock.advance(2 * DAY)
        client = self.keyed(register=False)
        self.successResultOf(self.forget(client, ids[1]))
        self.assertEqual([r["id"] for r in self.rows()], ids[2:])


class TrashTests(LifecycleCase):
    trashDays = 7

    def test_trashGraceUndelete(self):
        """
        A forgotten snapshot goes to the trash: not listed, not restorable,
        still counted; undelete brings it back; past the grace period the
        maintenance run removes it and frees its bytes.
        """
        client = self.keyed()
        first, second = self.backups(client, 2)
        used = self.account().used
        _, state = self.successResultOf(self.forget(client, first))
        self.assertEqual(state, "trash")
        listed = self.successResultOf(self.settle(client.listSnapshots()))
        self.assertEqual([s["id"] for s in listed], [second])
        failure = self.failureResultOf(self.settle(client.restore(first, lambda *a: None)))
        self.assertEqual(failure.value.code, Code.NOT_FOUND)
        info = self.successResultOf(self.settle(client.usage()))
        self.assertEqual((info["snapshots"], info["trash"], info["used"]), (1, 1, used))
        self.successResultOf(self.lifecycle.undelete("alice", first))
        self.assertEqual(len(self.successResultOf(self.settle(client.listSnapshots()))), 2)
        self.successResultOf(self.forget(client, first))
        self.clock.advance(6 * DAY)
        self.successResultOf(self.lifecycle.maintain())
        self.assertEqual([r["id"] for r in self.rows(state=catalog.TRASH)], [first])
        self.clock.advance(2 * DAY)
        self.successResultOf(self.lifecycle.maintain())
        self.assertEqual(self.rows(state=catalog.TRASH), [])
        self.assertFalse(os.path.exists(self.folder(first)))
        self.assertLess(self.account().used, used)
        self.assertEqual(self.account().used, self.usedOnDisk())
        failure = self.failureResultOf(self.lifecycle.undelete("alice", first))
        self.assertEqual(failure.value.code, Code.NOT_FOUND)

    def test_scheduledRetention(self):
        """
        The maintenance service applies each account's policy when the
        server starts and then every interval, through the trash; each
        backup applies it too.
        """
        client = self.keyed()
        ids = self.backups(client, 3)
        self.db(catalog.setPolicy, "alice", KeepPolicy(last=1))
        service = MaintenanceService(self.lifecycle, 3600, self.clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertEqual(len(self.rows()), 3)
        self.clock.advance(0)
        self.assertEqual([r["id"] for r in self.rows()], ids[2:])
        self.assertEqual(len(self.rows(state=catalog.TRASH)), 2)
        # after a backup: the policy runs again at once
        newest = self.fullBackup(client)["id"]
        self.assertEqual([r["id"] for r in self.rows()], [newest])
        # and on the schedule: trash past the grace period goes
        self.clock.advance(8 * DAY)
        self.assertEqual(self.rows(state=catalog.TRASH), [])
        self.assertEqual(self.account().used, self.usedOnDisk())


class PinTests(LifecycleCase):
    def test_removalWaitsForRestore(self):
        """
        A snapshot being restored is only marked by a removal; its files
        go once the restore is confirmed.
        """
        client = self.keyed()
        (first,) = self.backups(client, 1)
        wire = Wire(self.factory).keyed(register=False)
        wire.received()
        wire.sendControl(Msg.RESTORE, snapshot=first, include=[])
        frames = wire.received()
        self.assertEqual(frames[0][0], Msg.RESTORE_BEGIN)
        crc = [f for k, f in frames if k is Msg.CKSUM][0]["crc"]
        decisions, state = self.successResultOf(self.forget(client, first))
        self.assertEqual(state, "removing")
        self.assertTrue(os.path.exists(self.folder(first)))
        self.assertEqual(self.db(catalog.waiting), [("alice", first)])
        wire.sendControl(Msg.COMMIT, crc=crc)
        self.assertEqual(wire.last()[0], Msg.DONE)
        self.assertFalse(os.path.exists(self.folder(first)))
        self.assertEqual(self.db(catalog.waiting), [])
        self.assertEqual(self.account().used, 0)

    def test_pinsAreNotFlushed(self):
        """
        Pins skip the flush to disk (every start drops them); everything
        else is written with synchronous=FULL still.
        """
        client = self.keyed()
        (first,) = self.backups(client, 1)
        seen = []
        db = self.factory.store.db
        original = db._connection().execute

        class Watch:
            def execute(self, sql, *args):
                seen.append(sql)
                return original(sql, *args)

        _row, token = self.db(lambda c: catalog.pin(Watch(), "alice", first, "t"))
        self.db(lambda c: catalog.unpin(Watch(), token))
        self.assertEqual(seen.count("PRAGMA synchronous=NORMAL"), 2)
        self.assertEqual(seen.count("PRAGMA synchronous=FULL"), 2)
        self.assertEqual(self.db(lambda c: c.execute("PRAGMA synchronous").fetchone()), (2,))

    def test_droppedRestoreReleases(self):
        """
        A restore whose connection drops releases its pin: a removal that
        waited for it goes ahead.
        """
        client = self.keyed()
        (first,) = self.backups(client, 1)
        wire = Wire(self.factory).keyed(register=False)
        wire.received()
        wire.sendControl(Msg.RESTORE, snapshot=first, include=[])
        self.successResultOf(self.forget(client, first))
        self.assertTrue(os.path.exists(self.folder(first)))
        wire.proto.connectionLost(None)
        self.clock.advance(0)
        self.assertFalse(os.path.exists(self.folder(first)))
        self.assertEqual(self.db(lambda c: c.execute("SELECT * FROM pins").fetchall()), [])

    def test_removalRacingIncrementalParent(self):
        """
        A parent removed while an incremental backup links from it stays
        until the backup is done: the new snapshot is whole, and the
        parent's shared files are not counted as freed.
        """
        client = self.keyed()
        parentId = self.fullBackup(client)["id"]
        parent = self.parentOf(client, parentId)
        removals = []

        def removeParent():
            removals.append(self.lifecycle.forget("alice", [parentId], actor=OPERATOR))

        _plan, d = self.incremental(client, parent, beforeSend=removeParent)
        child = self.successResultOf(d)
        self.successResultOf(removals[0])
        self.assertFalse(os.path.exists(self.folder(parentId)))
        self.assertEqual([r["id"] for r in self.rows()], [child["id"]])
        self.assertEqual(self.account().used, self.usedOnDisk())
        self.assertGreater(self.account().used, 0)
        # the child is whole
        self.assertEqual(treeSignature(self.stored(child["id"])), treeSignature(self.src))


class StagingLeakTests(LifecycleCase):
    def test_goneWhileStaging(self):
        """
        A connection that goes while its BACKUP's staging folder is being
        made leaves no folder, and no reservation, behind.
        """
        runIO = ManualRunner()
        self.factory = makeFactory(self.data, clock=self.clock, runIO=runIO)
        wire = Wire(self.factory).keyed()
        wire.received()
        wire.sendControl(Msg.BACKUP, name="x", size=10, kind="file", parent=None, manifest=None)
        self.assertEqual(len(runIO.jobs), 1)  # newStaging, held back
        wire.proto.connectionLost(None)
        runIO.runAll()
        self.clock.advance(0)
        staging = os.path.join(self.data, "users", "alice", ".staging")
        self.assertEqual(os.listdir(staging), [])
        self.assertEqual(self.factory.lifecycle.reserved, {})
        self.assertEqual(wire.received(), [])


class QuotaTests(LifecycleCase):
    def test_refusedBeforeData(self):
        """
        A BACKUP whose size would pass the quota is refused at once: no
        READY, no staging, the message names used and limit, the
        connection closes.
        """
        wire = Wire(self.factory).keyed()
        wire.received()
        self.db(catalog.setQuota, "alice", 1000)
        wire.sendControl(Msg.BACKUP, name="x", size=5000, kind="file", parent=None, manifest=None)
        frames = wire.received()
        self.assertEqual([k for k, _ in frames], [Msg.ERROR])
        fields = frames[0][1]
        self.assertEqual((fields["code"], fields["fatal"]), ("quota-exceeded", True))
        self.assertIn("0 B used of 1000 B", fields["message"])
        self.assertTrue(wire.closed)
        staging = os.path.join(self.data, "users", "alice", ".staging")
        self.assertEqual(os.listdir(staging) if os.path.exists(staging) else [], [])

    def test_uploadsUnderWayCount(self):
        """
        Two uploads of one account under way are counted together; the
        reservation goes with the connection.
        """
        self.keyed()
        self.db(catalog.setQuota, "alice", 10_000)
        wires = [Wire(self.factory).keyed(register=False) for _ in range(3)]
        for w in wires:
            w.received()
        ask = dict(name="x", size=6000, kind="file", parent=None, manifest=None)
        wires[0].sendControl(Msg.BACKUP, **ask)
        self.assertEqual(wires[0].last()[0], Msg.READY)
        wires[1].sendControl(Msg.BACKUP, **ask)
        self.assertEqual(wires[1].last()[1]["code"], "quota-exceeded")
        wires[0].proto.connectionLost(None)
        self.clock.advance(0)
        wires[2].sendControl(Msg.BACKUP, **ask)
        self.assertEqual(wires[2].last()[0], Msg.READY)
        self.assertEqual(self.lifecycle.reserved, {"alice": 6000})

    def test_unpackedOverQuota(self):
        """
        A zip within the quota that unpacks past it is refused while it
        unpacks; nothing is stored.
        """
        with open(os.path.join(self.src, "zeros"), "wb") as f:
            f.write(bytes(4 << 20))
        client = self.keyed()
        plan = planArchive(self.src, compression="deflate")
        self.db(catalog.setQuota, "alice", plan.size + 100_000)
        d = self.settle(client.backup(lambda: ArchiveStream(plan), plan.size, "src", "dir"))
        failure = self.failureResultOf(d)
        self.assertEqual(failure.value.code, Code.QUOTA_EXCEEDED)
        self.assertEqual(self.rows(), [])
        self.assertEqual(self.account().used, 0)

    def test_commitRechecks(self):
        """
        A quota lowered while an upload is under way is enforced at commit.
        """
        client = self.keyed()
        plan = planArchive(self.src)
        self.db(catalog.setQuota, "alice", plan.size * 2)

        def lower():
            self.db(catalog.setQuota, "alice", 10)
            return ArchiveStream(plan)

        failure = self.failureResultOf(self.settle(client.backup(lower, plan.size, "src", "dir")))
        self.assertEqual(failure.value.code, Code.QUOTA_EXCEEDED)
        self.assertEqual(self.rows(), [])

    def test_sharedFilesCountOnce(self):
        """
        Usage counts each stored inode once: an unchanged incremental
        backup adds only what it sent anew (links' targets), removing the
        parent frees only what the child does not share, and the catalog's
        count always equals a count from disk.
        """
        client = self.keyed()
        first = self.fullBackup(client)
        self.assertEqual(self.account().used, first["added"])
        self.assertEqual(self.account().used, self.usedOnDisk())
        _plan, d = self.incremental(client, self.parentOf(client, first["id"]))
        second = self.successResultOf(d)
        self.assertLess(second["added"], first["added"] // 10)
        self.assertEqual(self.account().used, first["added"] + second["added"])
        self.assertEqual(self.account().used, self.usedOnDisk())
        self.db(catalog.setQuota, "alice", self.account().used + 10)
        self.successResultOf(self.forget(client, first["id"]))
        self.assertEqual(self.account().used, self.usedOnDisk())
        self.assertGreater(self.account().used, first["added"] // 2)
        self.successResultOf(self.forget(client, second["id"]))
        self.assertEqual((self.account().used, self.usedOnDisk()), (0, 0))


class AccountTests(LifecycleCase):
    def test_usage(self):
        client = self.keyed()
        snap = self.fullBackup(client)
        self.db(catalog.setQuota, "alice", 1 << 30)
        self.db(catalog.setPolicy, "alice", KeepPolicy(daily=7))
        info = self.successResultOf(self.settle(client.usage()))
        self.assertEqual(
            info,
            {
                "snapshots": 1,
                "size": snap["size"],
                "used": snap["added"],
                "quota": 1 << 30,
                "newest": snap["created"],
                "trash": 0,
                "append_only": False,
                "min_age_days": 0,
                "policy": "keep 7 daily",
            },
        )

    def test_passwd(self):
        """
        PASSWD needs the old password; the next login needs the new one.
        """
        client = self.keyed()
        failure = self.failureResultOf(self.settle(client.changePassword("wrong", "new")))
        self.assertEqual(failure.value.code, Code.AUTH_FAILED)
        self.successResultOf(self.settle(client.changePassword("pw", "new")))
        wire = Wire(self.factory)
        self.assertEqual(wire.login(password="pw")[1]["code"], "auth-failed")
        self.assertEqual(wire.login(password="new")[0], Msg.OK)

    def test_disabled(self):
        """
        A disabled account's right password gets account-disabled; a wrong
        one the usual answer.
        """
        self.keyed()
        self.db(catalog.setDisabled, "alice", True)
        wire = Wire(self.factory)
        self.assertEqual(wire.login(password="nope")[1]["code"], "auth-failed")
        kind, fields = wire.login(password="pw")
        self.assertEqual((fields["code"], fields["fatal"]), ("account-disabled", False))
        self.db(catalog.setDisabled, "alice", False)
        self.assertEqual(Wire(self.factory).login()[0], Msg.OK)
