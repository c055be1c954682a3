"""
Incremental backups in process: the real client protocol and plan against
the real server over TLS in memory (the parent's manifest, the keep list,
the snapshot built from hard links), the link fallback, the parent race,
and hostile keep lists on the wire.
"""

import errno
import grp
import os
import pwd
import shutil
import sqlite3
import zlib

from twisted.logger import globalLogPublisher

from backup_client.protocol import IncrementalParent
from backup_client.restoring import placeRestore
from backup_proto.archive.manifest import KeepList, ManifestWriter, readEntries
from backup_proto.archive.plan import ParentFiles, planArchive, planFromManifest
from backup_proto.archive.policy import Limits
from backup_proto.archive.stream import ArchiveStream
from backup_proto.server import catalog
from backup_proto.server.storage import ManifestPages
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import Msg, decodeFrame, parseControl
from tests.helpers import (
    TestCase,
    clientKey,
    connectInMemory,
    flush,
    makeFactory,
    makeTrickyTree,
    treeSignature,
    zipSinks,
)
from tests.test_archive import D, F, L, craft
from tests.wire import Wire


class IncrementalCase(TestCase):
    def setUp(self):
        super().setUp()
        self.data = os.path.abspath("data")
        self.factory = self.makeFactory()
        self.clock = self.factory.clock
        self.src = makeTrickyTree(os.path.abspath("src"))

    def makeFactory(self, **tunables):
        return makeFactory(os.path.abspath("data"), **tunables)

    def settle(self, d):
        flush(self.pump, self.clock)
        return d

    def keyed(self):
        client, _server, self.pump = connectInMemory(self.factory)
        self.successResultOf(self.settle(client.register("alice", "pw")))
        self.successResultOf(self.settle(client.login("alice", "pw")))
        self.successResultOf(self.settle(client.exchangeKeys(clientKey())))
        return client

    def fullBackup(self, client):
        plan = planArchive(self.src)
        return self.successResultOf(
            self.settle(client.backup(lambda: ArchiveStream(plan), plan.size, "src", "dir"))
        )

    def parentOf(self, client, snapshotId):
        parent = ParentFiles(snapshotId)
        parent.digest = self.successResultOf(
            self.settle(client.fetchManifest(snapshotId, parent.add))
        )
        return parent

    def incremental(self, client, parent, beforeSend=None):
        plan = planArchive(self.src, parent=parent)

        def openSource():
            if beforeSend is not None:
                beforeSend()
            return ArchiveStream(plan)

        incremental = IncrementalParent(parent.snapshotId, parent.digest, plan.keep.pages())
        d = client.backup(openSource, plan.size, "src", "dir", parent=incremental)
        return plan, self.settle(d)

    def stored(self, snapshotId, *path):
        return os.path.join(self.data, "users", "alice", snapshotId, "src", *path)


class ManifestTests(IncrementalCase):
    def test_manifestOfFullBackup(self):
        """
        A stored snapshot's manifest lists every entry of its tree with
        kind, size, time to the nanosecond, mode, link target and content
        CRC-32; its digest is the catalog's.
        """
        client = self.keyed()
        snap = self.fullBackup(client)
        entries = []
        digest = self.successResultOf(self.settle(client.fetchManifest(snap["id"], entries.append)))
        byPath = {e[0]: e for e in entries}
        self.assertEqual(len(byPath), len(entries))
        expected = {"src"} | {
            "src/" + os.path.relpath(os.path.join(d, n), self.src)
            for d, dirs, files in os.walk(self.src)
            for n in dirs + files
        }
        self.assertEqual(set(byPath), expected)
        for path, kind, size, mtimeNs, mode, target, crc, owner, link in entries:
            st = os.lstat(os.path.join(os.path.dirname(self.src), path))
            self.assertEqual(mtimeNs, st.st_mtime_ns, path)
            self.assertEqual(owner[:2], (st.st_uid, st.st_gid), path)
            self.assertEqual(
                owner[2:], (pwd.getpwuid(st.st_uid).pw_name, grp.getgrgid(st.st_gid).gr_name)
            )
            self.assertIsNone(link)
            if kind == "file":
                with open(os.path.join(os.path.dirname(self.src), path), "rb") as f:
                    content = f.read()
                self.assertEqual(
                    (size, crc, mode), (len(content), zlib.crc32(content), st.st_mode & 0o777)
                )
            elif kind == "link":
                self.assertEqual(target, os.readlink(os.path.join(os.path.dirname(self.src), path)))
            else:
                self.assertEqual((size, target, crc, mode), (0, None, None, st.st_mode & 0o777))
        stored = self.factory.store.db.runSync(
            lambda c: c.execute("SELECT manifest, entries FROM snapshots").fetchone()
        )
        self.assertEqual(stored, (digest, len(entries)))

    def test_manifestNotFound(self):
        """
        An unknown id, or another user's, is a non-fatal not-found.
        """
        client = self.keyed()
        snap = self.fullBackup(client)
        failure = self.failureResultOf(self.settle(client.fetchManifest("nope", list)))
        self.assertEqual(failure.value.code, Code.NOT_FOUND)
        wire = Wire(self.factory).keyed("mallory")
        wire.received()
        wire.sendControl(Msg.MANIFEST, snapshot=snap["id"])
        kind, fields = wire.last()
        self.assertEqual(
            (kind, fields["code"], fields["fatal"]), (Msg.ERROR, Code.NOT_FOUND, False)
        )
        self.assertFalse(wire.closed)


class ComposeTests(IncrementalCase):
    def test_keptFilesAreLinks(self):
        """
        The second backup sends only the changed file; the new snapshot is
        whole, its unchanged files share the parent's inodes, and the
        parent is untouched.
        """
        client = self.keyed()
        first = self.fullBackup(client)
        before = treeSignature(self.src)
        with open(os.path.join(self.src, "notes.txt"), "a") as f:
            f.write("more")
        parent = self.parentOf(client, first["id"])
        plan, d = self.incremental(client, parent)
        second = self.successResultOf(d)
        self.assertEqual(plan.report.filesChanged, 1)
        self.assertEqual(plan.report.filesUnchanged, 6)
        self.assertEqual(second["parent"], first["id"])
        self.assertEqual(second["files"], first["files"])
        self.assertEqual(treeSignature(self.stored(second["id"])), treeSignature(self.src))
        self.assertEqual(treeSignature(self.stored(first["id"])), before)
        for name, shared in (("random.bin", True), ("notes.txt", False)):
            same = (
                os.stat(self.stored(first["id"], name)).st_ino
                == os.stat(self.stored(second["id"], name)).st_ino
            )
            self.assertEqual(same, shared, name)
        self.assertLess(second["added"], 20_000)

    def test_linkRefused(self):
        """
        Where the file system refuses a link (EMLINK here), the kept file is
        copied with its mode and time, the snapshot is still whole, the
        bytes copied count as added, and the server logs it.
        """
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def refuse(*args, **kwargs):
            raise OSError(errno.EMLINK, "Too many links")

        self.factory = self.makeFactory(linkFile=refuse)
        self.clock = self.factory.clock
        client = self.keyed()
        first = self.fullBackup(client)
        parent = self.parentOf(client, first["id"])
        _plan, d = self.incremental(client, parent)
        second = self.successResultOf(d)
        self.assertEqual(treeSignature(self.stored(second["id"])), treeSignature(self.src))
        self.assertNotEqual(
            os.stat(self.stored(first["id"], "random.bin")).st_ino,
            os.stat(self.stored(second["id"], "random.bin")).st_ino,
        )
        self.assertGreater(second["added"], 3 << 20)
        logged = [e for e in events if "hard links refused" in e.get("log_format", "")]
        self.assertEqual(len(logged), 1)
        self.assertEqual(logged[0]["why"], "EMLINK")
        self.assertEqual(logged[0]["n"], 7)


class RaceTests(IncrementalCase):
    def removeParentRow(self, snapshotId):
        self.factory.store.db.runSync(
            lambda c: c.execute("DELETE FROM snapshots WHERE id = ?", (snapshotId,))
        )

    def assertNothingStaged(self):
        staging = os.path.join(self.data, "users", "alice", ".staging")
        self.assertEqual(os.listdir(staging), [])

    def test_parentGoneBeforeBackup(self):
        """
        A parent gone between reading its manifest and BACKUP: after the
        keep list the server answers a non-fatal parent-changed, and the
        connection goes on.
        """
        client = self.keyed()
        first = self.fullBackup(client)
        parent = self.parentOf(client, first["id"])
        self.removeParentRow(first["id"])
        _plan, d = self.incremental(client, parent)
        failure = self.failureResultOf(d, ProtocolError)
        self.assertEqual(failure.value.code, Code.PARENT_CHANGED)
        self.assertNothingStaged()
        self.assertEqual(self.successResultOf(self.settle(client.listSnapshots())), [])

    def test_parentGoneBeforeCommit(self):
        """
        A parent removed while the upload runs: the COMMIT is answered with
        a non-fatal parent-changed, nothing is stored, and a full backup on
        the same connection succeeds.
        """
        client = self.keyed()
        first = self.fullBackup(client)
        parent = self.parentOf(client, first["id"])
        _plan, d = self.incremental(client, parent, lambda: self.removeParentRow(first["id"]))
        failure = self.failureResultOf(d, ProtocolError)
        self.assertEqual(failure.value.code, Code.PARENT_CHANGED)
        self.assertNothingStaged()
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.data, "users", "alice"))),
            sorted([".staging", ".manifests", first["id"]]),
        )
        again = self.fullBackup(client)
        self.assertIsNone(again["parent"])
        self.assertEqual(treeSignature(self.stored(again["id"])), treeSignature(self.src))

    def test_parentFilesChanged(self):
        """
        A parent whose stored file no longer matches its manifest is not
        linked from: parent-changed, nothing stored.
        """
        client = self.keyed()
        first = self.fullBackup(client)
        parent = self.parentOf(client, first["id"])

        def damage():
            path = self.stored(first["id"], "random.bin")
            os.chmod(path, 0o600)
            with open(path, "ab") as f:
                f.write(b"x")

        _plan, d = self.incremental(client, parent, damage)
        self.assertEqual(self.failureResultOf(d, ProtocolError).value.code, Code.PARENT_CHANGED)
        self.assertNothingStaged()


class KeepWireCase(IncrementalCase):
    """
    Mallory, on the wire, with a parent snapshot C{x} holding C{x/sub/f}.
    """

    def setUp(self):
        super().setUp()
        os.makedirs("sentinel")
        self.sentinel = treeSignature("sentinel")
        self.wire = Wire(self.factory).keyed("mallory")
        self.wire.received()
        honest = craft(
            os.path.abspath("honest.zip"),
            [("x/", b"", D), ("x/sub/", b"", D), ("x/sub/f", b"kept", F)],
        )
        with open(honest, "rb") as f:
            kind, done = self.wire.backup(f.read(), name="x")
        self.assertIs(kind, Msg.DONE, done)
        self.parentId = done["snapshot"]["id"]
        self.wire.sendControl(Msg.MANIFEST, snapshot=self.parentId)
        kind, page = self.wire.last()
        self.digest = page["manifest"]
        self.entries = [e[0] for e in page["entries"]]

    def keepOf(self, *paths):
        keep = KeepList(len(self.entries))
        for path in paths:
            keep.keep(self.entries.index(path))
        return keep

    def send(self, entries, keep, **fields):
        with open(craft(os.path.abspath("evil.zip"), entries), "rb") as f:
            data = f.read()
        wire = self.wire
        backup = {"name": "x", "kind": "dir", "size": len(data), "parent": self.parentId}
        backup["manifest"] = self.digest
        backup.update(fields)
        wire.sendControl(Msg.BACKUP, **backup)
        pages = keep if isinstance(keep, list) else keep.pages()
        for i, page in enumerate(pages):
            wire.sendControl(Msg.KEEP, bits=page, more=i + 1 < len(pages))
        frames = wire.received()
        if frames and frames[-1][0] is Msg.READY:
            wire.send(b"".join(wire.sealedChunks(data, frames[-1][1]["transfer"])))
            kind, cksum = wire.last()
            wire.sendControl(Msg.COMMIT, crc=cksum["crc"])
            frames = wire.received()
        return frames[-1]

    def assertRefused(self, answer, code):
        kind, fields = answer
        self.assertIs(kind, Msg.ERROR, fields)
        self.assertEqual(fields["code"], code, fields)
        self.assertTrue(self.wire.closed)
        self.wire.proto.connectionLost(None)
        self.clock.advance(0)
        self.assertEqual(treeSignature("sentinel"), self.sentinel)
        mallory = os.path.join(self.data, "users", "mallory")
        self.assertEqual(os.listdir(os.path.join(mallory, ".staging")), [])
        self.assertEqual(sorted(os.listdir(mallory)), [".manifests", ".staging", self.parentId])


class HostileKeepTests(KeepWireCase):
    """
    A client that sends keep lists and zips that do not fit together: each
    is refused, and nothing is written outside the user's area.
    """

    def test_honest(self):
        """
        The same exchange, honest: the kept file is linked in.
        """
        kind, done = self.send([("x/", b"", D), ("x/sub/", b"", D)], self.keepOf("x/sub/f"))
        self.assertIs(kind, Msg.DONE, done)
        self.assertEqual(done["snapshot"]["files"], 1)

    def test_keepsAFolder(self):
        self.assertRefused(
            self.send([("x/", b"", D), ("x/sub/", b"", D)], self.keepOf("x/sub")), Code.BAD_ARCHIVE
        )

    def test_folderMadeALink(self):
        """
        The upload turns the kept file's folder into a link to a folder
        outside: the file is not placed through it.
        """
        target = os.path.abspath("sentinel").encode()
        self.assertRefused(
            self.send([("x/", b"", D), ("x/sub", target, L)], self.keepOf("x/sub/f")),
            Code.BAD_ARCHIVE,
        )

    def test_folderMissing(self):
        self.assertRefused(self.send([("x/", b"", D)], self.keepOf("x/sub/f")), Code.BAD_ARCHIVE)

    def test_sentAndKept(self):
        self.assertRefused(
            self.send(
                [("x/", b"", D), ("x/sub/", b"", D), ("x/sub/f", b"new", F)], self.keepOf("x/sub/f")
            ),
            Code.BAD_ARCHIVE,
        )

    def test_badKeepList(self):
        self.assertRefused(self.send([("x/", b"", D)], ["@@@"]), Code.BAD_MESSAGE)

    def test_keepListTooLong(self):
        self.assertRefused(self.send([("x/", b"", D)], KeepList(100)), Code.BAD_MESSAGE)

    def test_parentOnAFile(self):
        self.assertRefused(
            self.send([("x", b"data", F)], self.keepOf("x/sub/f"), kind="file"), Code.BAD_MESSAGE
        )

    def test_parentWithoutManifest(self):
        self.assertRefused(
            self.send([("x/", b"", D)], self.keepOf("x/sub/f"), manifest=None), Code.BAD_MESSAGE
        )

    def test_otherSourceName(self):
        """
        A parent of another name is not used: parent-changed, non-fatal.
        """
        kind, fields = self.send([("y/", b"", D)], self.keepOf("x/sub/f"), name="y")
        self.assertEqual(
            (kind, fields["code"], fields["fatal"]), (Msg.ERROR, Code.PARENT_CHANGED, False)
        )
        self.assertFalse(self.wire.closed)


class RestoreAttributesTests(IncrementalCase):
    def test_modesAndTimesFromManifest(self):
        """
        A restore gives entries the modes and times of the snapshot's
        manifest, not those of the stored files (which hard links share
        between snapshots); a damaged manifest still restores, with the
        files' own.
        """
        client = self.keyed()
        snap = self.fullBackup(client)
        expected = treeSignature(self.src)
        stored = self.stored(snap["id"], "notes.txt")
        os.chmod(stored, 0o600)
        os.utime(stored, ns=(1, 1))
        os.makedirs("work")
        begin, sink = self.successResultOf(
            self.settle(client.restore(snap["id"], zipSinks("work")))
        )
        placeRestore(sink.path, "dest", "src", "dir", Limits())
        self.assertEqual(treeSignature("dest/src"), expected)
        manifest = self.factory.store.manifestPath("alice", snap["id"])
        with open(manifest, "r+b") as f:
            f.truncate(10)
        os.makedirs("work2")
        begin, sink = self.successResultOf(
            self.settle(client.restore(snap["id"], zipSinks("work2")))
        )
        placeRestore(sink.path, "dest2", "src", "dir", Limits())
        self.assertEqual(os.stat("dest2/src/notes.txt").st_mtime_ns, 1)


class CatalogTests(TestCase):
    def test_olderCatalogMigrated(self):
        """
        A catalog made before manifests gains the new columns at start-up;
        its snapshots have no parent and no manifest, and added all their
        bytes; its accounts' usage is theirs, with no quota or protection.
        """
        os.makedirs("data")
        conn = sqlite3.connect("data/user.db")
        conn.executescript(
            """
            CREATE TABLE users (username TEXT PRIMARY KEY, salt BLOB NOT NULL,
                key BLOB NOT NULL, iterations INTEGER NOT NULL, created TEXT NOT NULL);
            INSERT INTO users VALUES ('alice', x'00', x'00', 1, 't');
            CREATE TABLE snapshots (username TEXT NOT NULL, id TEXT NOT NULL,
                source TEXT NOT NULL, kind TEXT NOT NULL, created TEXT NOT NULL,
                zip_size INTEGER NOT NULL, size INTEGER NOT NULL, files INTEGER NOT NULL,
                PRIMARY KEY (username, id));
            INSERT INTO snapshots VALUES ('alice', 'old-1', 'old', 'dir', 't', 10, 7, 1);
            """
        )
        conn.commit()
        conn.close()
        os.makedirs("data/users/alice/old-1/old")
        factory = makeFactory(os.path.abspath("data"))
        [row] = self.successResultOf(factory.store.list("alice"))
        self.assertEqual((row["parent"], row["added"]), (None, 7))
        self.assertIsNone(self.successResultOf(factory.store.manifestOf("alice", "old-1")))
        account = factory.store.db.runSync(catalog.account, "alice")
        self.assertEqual(
            (account.used, account.quota, account.policy, account.appendOnly, account.disabled),
            (7, None, None, False, False),
        )

    def test_recoveryRemovesOrphanManifests(self):
        """
        At start-up a manifest without a catalog row goes, and so does the
        manifest of a row whose folder is gone.
        """
        factory = makeFactory(os.path.abspath("data"))
        wire = Wire(factory).keyed("alice")
        path = craft(os.path.abspath("a.zip"), [("x/", b"", D), ("x/f", b"data", F)])
        with open(path, "rb") as f:
            data = f.read()
        kept = wire.backup(data, name="x")[1]["snapshot"]["id"]
        gone = wire.backup(data, name="x")[1]["snapshot"]["id"]
        manifests = os.path.join("data", "users", "alice", ".manifests")
        open(os.path.join(manifests, "orphan-1"), "wb").close()
        shutil.rmtree(os.path.join("data", "users", "alice", gone))
        factory.store.recover()
        self.assertEqual(os.listdir(manifests), [kept])


class ManifestPlanTests(IncrementalCase):
    def test_sameZipAsWalking(self):
        """
        For a full backup's snapshot, the manifest lists the entries in the
        order a walk of its tree finds them: the zip planned from the
        manifest, without looking at the files, is byte for byte the zip
        planned by walking the tree (stored).
        """
        client = self.keyed()
        snap = self.fullBackup(client)
        stored = self.stored(snap["id"])
        found = self.successResultOf(self.factory.store.manifestOf("alice", snap["id"]))
        entries = (entry for _line, entry in readEntries(found[1], found[2]))

        def zipOf(plan):
            stream = ArchiveStream(plan)
            try:
                return b"".join(iter(lambda: stream.read(1 << 20), b""))
            finally:
                stream.close()

        walked = planArchive(stored, "src", "store")
        fromManifest = planFromManifest(stored, "src", entries)
        self.assertEqual(fromManifest.size, walked.size)
        self.assertEqual(zipOf(fromManifest), zipOf(walked))


class ManifestPagesTests(TestCase):
    def write(self, count):
        writer = ManifestWriter("m")
        for i in range(count):
            writer.add(
                f"root/folder {i // 100}/file {i}" + "x" * (i % 300), "file", i, i, 0o644, None, i
            )
        return writer.close()

    def test_batches(self):
        """
        Pages hold whole entries within the page limit, in order, all of
        them; batches are about L{ManifestPages.BATCH} bytes; only the last
        page says C{more} false, and then the file is closed.
        """
        digest = self.write(5000)
        pages = ManifestPages("m", digest, limit=20_000)
        pages.BATCH = 50_000
        self.assertTrue(pages.open())
        frames, batches, last = [], 0, False
        while not last:
            batch, last = pages.read()
            batches += 1
            self.assertLess(sum(len(f) for f in batch), 50_000 + 20_000)
            frames.extend(batch)
        entries = []
        for i, frame in enumerate(frames):
            self.assertLessEqual(len(frame) - 1, 20_000)
            kind, body = decodeFrame(frame)
            fields = parseControl(kind, body)
            self.assertEqual(fields["more"], i + 1 < len(frames))
            self.assertEqual(fields["manifest"], digest)
            entries.extend(fields["entries"])
        self.assertEqual([e[2] for e in entries], list(range(5000)))
        self.assertGreater(batches, 5)
        self.assertIsNone(pages._lines)

    def test_emptyAndDamaged(self):
        """
        An empty manifest is one empty last page; a manifest that is not
        the one its digest names does not open.
        """
        digest = self.write(0)
        pages = ManifestPages("m", digest)
        self.assertTrue(pages.open())
        [frame], last = pages.read()
        self.assertTrue(last)
        self.assertEqual(parseControl(*decodeFrame(frame))["entries"], [])
        self.assertFalse(ManifestPages("m", "0" * 64).open())
        self.assertFalse(ManifestPages("missing", digest).open())


class ManifestStreamTests(IncrementalCase):
    def test_manyBatches(self):
        """
        A manifest sent one page per batch (each read in its own thread
        job, as the transport drains) arrives whole, and the connection
        goes on.
        """
        self.patch(ManifestPages, "BATCH", 1)
        for i in range(400):
            with open(os.path.join(self.src, f"extra {i} " + "n" * 200), "w") as f:
                f.write("x")
        client = self.keyed()
        snap = self.fullBackup(client)
        entries = []
        self.successResultOf(self.settle(client.fetchManifest(snap["id"], entries.append)))
        self.assertEqual(len(entries), snap["files"] + 16)  # folders and links too
        self.assertEqual(len(self.successResultOf(self.settle(client.listSnapshots()))), 1)


class ChangeDetectionTests(TestCase):
    def test_whatCounts(self):
        """
        A file is kept when its size, time to the nanosecond, mode and
        owner ids are the parent's: one nanosecond, one mode bit, another
        group or one byte more makes it changed; content rewritten with
        size and time put back is kept (it is never read: the documented
        limit); a path the parent did not have as a file is new.
        """
        os.makedirs("src/sub")
        names = ("same", "ns", "mode", "size", "rewritten", "owner")
        for name in names:
            with open(f"src/sub/{name}", "w") as f:
                f.write("data")
            os.utime(f"src/sub/{name}", ns=(10**18 + 7, 10**18 + 7))
        parent = ParentFiles("src-1")
        parent.add(("src", "dir", 0, 0, 0o755, None, None, None, None))
        parent.add(("src/sub", "dir", 0, 0, 0o755, None, None, None, None))
        for name in names:
            st = os.stat(f"src/sub/{name}")
            # the parent's "owner" had another group
            owner = (st.st_uid, st.st_gid + (name == "owner"), None, None)
            parent.add(
                (f"src/sub/{name}", "file", 4, st.st_mtime_ns, st.st_mode & 0o777, None, 0)
                + (owner, None)
            )
        parent.add(("src/sub/new", "link", 1, 0, 0o777, "x", 0, None, None))
        os.utime("src/sub/ns", ns=(10**18 + 8, 10**18 + 8))
        os.chmod("src/sub/mode", 0o600)
        with open("src/sub/size", "a") as f:
            f.write("!")
        os.utime("src/sub/size", ns=(10**18 + 7, 10**18 + 7))
        with open("src/sub/rewritten", "w") as f:
            f.write("DATA")
        os.utime("src/sub/rewritten", ns=(10**18 + 7, 10**18 + 7))
        with open("src/sub/new", "w") as f:
            f.write("a file where the parent had a link")
        plan = planArchive(os.path.abspath("src"), parent=parent)
        report = plan.report
        self.assertEqual((report.filesNew, report.filesChanged, report.filesUnchanged), (1, 4, 2))
        kept = [i for i in range(parent.entries) if i in plan.keep]
        self.assertEqual(kept, [2, 6])  # same, rewritten
        sent = sorted(e.name.decode() for e in plan.entries if e.content is None)
        self.assertEqual(
            sent, ["src/sub/mode", "src/sub/new", "src/sub/ns", "src/sub/owner", "src/sub/size"]
        )


class IncrementalWireTests(KeepWireCase):
    """
    The honest paths of an incremental upload at the wire: a resend, and a
    connection lost while the keep list arrives.
    """

    def test_resend(self):
        """
        An attempt with a damaged chunk is resent; the keep list given once
        still holds, and the committed snapshot has the kept file.
        """
        wire = self.wire
        with open(
            craft(os.path.abspath("inc.zip"), [("x/", b"", D), ("x/sub/", b"", D)]), "rb"
        ) as f:
            data = f.read()
        wire.sendControl(
            Msg.BACKUP,
            name="x",
            kind="dir",
            size=len(data),
            parent=self.parentId,
            manifest=self.digest,
        )
        [page] = self.keepOf("x/sub/f").pages()
        wire.sendControl(Msg.KEEP, bits=page, more=False)
        kind, ready = wire.last()
        self.assertIs(kind, Msg.READY, ready)
        chunks = wire.sealedChunks(data, ready["transfer"])
        damaged = bytearray(chunks[0])
        damaged[-1] ^= 1
        wire.send(bytes(damaged) + b"".join(chunks[1:]))
        kind, cksum = wire.last()
        self.assertEqual((kind, cksum["rejected"]), (Msg.CKSUM, 1))
        wire.sendControl(Msg.RESEND)
        kind, ready = wire.last()
        self.assertEqual((kind, ready["attempt"]), (Msg.READY, 2))
        wire.send(b"".join(wire.sealedChunks(data, ready["transfer"])))
        kind, cksum = wire.last()
        wire.sendControl(Msg.COMMIT, crc=cksum["crc"])
        kind, done = wire.last()
        self.assertIs(kind, Msg.DONE, done)
        stored = os.path.join(
            self.data, "users", "mallory", done["snapshot"]["id"], "x", "sub", "f"
        )
        with open(stored, "rb") as f:
            self.assertEqual(f.read(), b"kept")
        self.assertEqual(os.listdir(os.path.join(self.data, "users", "mallory", ".staging")), [])

    def test_lostWhileKeeping(self):
        """
        A connection lost between BACKUP and the keep list's last page
        leaves no staging behind.
        """
        wire = self.wire
        wire.sendControl(
            Msg.BACKUP, name="x", kind="dir", size=100, parent=self.parentId, manifest=self.digest
        )
        [page] = self.keepOf("x/sub/f").pages()
        wire.sendControl(Msg.KEEP, bits=page[:5], more=True)
        self.assertIs(wire.proto.session.state.name, "KEEPING")
        wire.proto.connectionLost(None)
        self.clock.advance(0)
        self.assertEqual(os.listdir(os.path.join(self.data, "users", "mallory", ".staging")), [])
