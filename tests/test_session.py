"""
The real client protocol against the real server over real TLS, in memory
(L{TLSMemoryBIOFactory} and iosim), with a L{Clock}.
"""

import errno
import os
import zipfile

from OpenSSL.SSL import Error as SSLError
from service_identity import VerificationError

from backup_client import protocol as clientModule
from backup_client.cli import EXIT_LOCAL_FULL, _errorResult
from backup_client.protocol import ConnectionGone, VerificationFailed
from backup_client.restoring import placeRestore
from backup_proto.archive.flushahead import FlushAhead
from backup_proto.archive.plan import planArchive
from backup_proto.archive.policy import Limits
from backup_proto.archive.spool import Spool
from backup_proto.archive.stream import ArchiveStream
from backup_proto.server.resources import RestoreArchives, SendBuffers
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import Msg
from backup_proto.wire.transfer import DEFAULT_SOCKET_BUFFER, SEND_BUFFER, SinkFailed
from tests.helpers import (
    TEST_READ_AHEAD,
    FileSink,
    TestCase,
    certificates,
    clientKey,
    clientTLSOptions,
    connectInMemory,
    flush,
    makeFactory,
    makeTrickyTree,
    treeSignature,
    zipSinks,
)
from tests.test_spool import textTree


class SessionTests(TestCase):
    def setUp(self):
        super().setUp()
        self.data = os.path.abspath("data")
        self.factory = makeFactory(self.data)
        self.clock = self.factory.clock

    def connect(self, options=None):
        client, server, pump = connectInMemory(self.factory, options)
        self.pump = pump
        return client, server

    def settle(self, d):
        flush(self.pump, self.clock)
        return d

    def keyed(self, user="alice", register=True):
        client, server = self.connect()
        if register:
            self.successResultOf(self.settle(client.register(user, "pw")))
        self.successResultOf(self.settle(client.login(user, "pw")))
        self.successResultOf(self.settle(client.exchangeKeys(clientKey())))
        return client, server

    def planTree(self):
        """
        @return: the tricky tree's path, and C{(openSource, size)} for
            L{BackupClientProtocol.backup}: its zip made as it is sent, as
            the command-line client does.
        """
        src = makeTrickyTree(os.path.abspath("src"))
        plan = planArchive(src)
        return src, ((lambda: ArchiveStream(plan)), plan.size)

    def test_fullRoundTrip(self):
        """
        Register, log in, exchange keys, back up, list, restore: the restored
        tree equals the source, and both sides' zips are gone.
        """
        client, server = self.keyed()
        self.assertEqual(self.successResultOf(self.settle(client.listSnapshots())), [])
        src, source = self.planTree()
        snap = self.successResultOf(self.settle(client.backup(*source, "src", "dir")))
        listed = self.successResultOf(self.settle(client.listSnapshots()))
        self.assertEqual([s["id"] for s in listed], [snap["id"]])
        os.mkdir("work")
        begin, sink = self.successResultOf(self.settle(client.restore(None, zipSinks("work"))))
        restored = sink.path
        self.assertEqual(begin["snapshot"], snap["id"])
        placeRestore(restored, "dest", "src", "dir", Limits())
        self.assertEqual(treeSignature(src), treeSignature("dest/src"))
        staging = os.path.join(self.data, "users", "alice", ".staging")
        self.assertEqual(os.listdir(staging), [])

    def test_listPages(self):
        """
        Sixty snapshots come back in pages of 25, oldest first, and the
        client joins the pages.
        """
        client, server = self.keyed()

        def add(conn):
            for i in range(60):
                conn.execute(
                    "INSERT INTO snapshots (username, id, source, kind, created,"
                    " zip_size, size, files) VALUES ('alice', ?, 'src', 'dir', ?, 1, 2, 3)",
                    (f"src-{i:03d}", f"2026-01-01T00:00:{i:02d}Z"),
                )

        self.factory.store.db.runSync(add)
        pages = []
        original = client._deliver
        client._deliver = lambda kind, body: (pages.append(kind), original(kind, body))
        listed = self.successResultOf(self.settle(client.listSnapshots()))
        self.assertEqual([s["id"] for s in listed], [f"src-{i:03d}" for i in range(60)])
        self.assertEqual(len(pages), 3)

    def test_sessionKeysDiffer(self):
        """
        Each connection gets a new session key.
        """
        a, _ = self.keyed()
        b, _ = self.keyed(register=False)
        # same position and plaintext: equal only if the keys were equal
        self.assertNotEqual(
            a._ciphers.upload.seal(1, 1, 0, b"x"), b._ciphers.upload.seal(1, 1, 0, b"x")
        )

    def test_corruptedChunkResent(self):
        """
        A chunk corrupted in transit on the first attempt is caught (it
        fails authentication, so the server's checksum differs) and the
        client resends; the second attempt is stored.
        """
        client, server = self.keyed()
        src, source = self.planTree()
        corrupt = corruptFirstData(client, attempts=1)
        snap = self.successResultOf(self.settle(client.backup(*source, "src", "dir")))
        self.assertEqual(corrupt.count, 1)
        self.assertEqual(corrupt.readies, 2)
        stored = os.path.join(self.data, "users", "alice", snap["id"], "src")
        self.assertEqual(treeSignature(src), treeSignature(stored))

    def test_damageAfterDecryptionRefused(self):
        """
        Bytes damaged after decryption, on their way into the unpacked
        files, fail that entry's CRC-32: the server refuses the upload
        (bad-archive) and stores nothing, rather than keep a damaged file.
        """
        client, server = self.keyed()
        src, source = self.planTree()
        from tests.helpers import runNow

        damaged = []

        def damagingIO(f, *args):
            if f.__name__ == "_drain" and not damaged:
                queue = f.__self__._queue  # the chunks the writer is about to write
                middle = queue[-1]
                at = len(middle) // 2
                queue[-1] = middle[:at] + bytes([middle[at] ^ 1]) + middle[at + 1 :]
                damaged.append(f.__self__.sink)
            return runNow(f, *args)

        self.factory.runIO = damagingIO
        failure = self.failureResultOf(
            self.settle(client.backup(*source, "src", "dir")), ProtocolError
        )
        self.assertEqual(failure.value.code, Code.BAD_ARCHIVE)
        self.assertEqual(len(damaged), 1)
        self.assertEqual(os.listdir(os.path.join(self.data, "users", "alice")), [".staging"])

    def test_threeResendsFail(self):
        """
        If every attempt is corrupted, the client gives up after three
        resends (exit code 5 in the CLI) and nothing is stored.
        """
        client, server = self.keyed()
        src, source = self.planTree()
        corrupt = corruptFirstData(client, attempts=99)
        self.failureResultOf(self.settle(client.backup(*source, "src", "dir")), VerificationFailed)
        self.assertEqual(corrupt.count, 4)
        client.transport.loseConnection()
        flush(self.pump, self.clock)
        self.assertEqual(self.successResultOf(self.factory.store.list("alice")), [])
        staging = os.path.join(self.data, "users", "alice", ".staging")
        self.assertEqual(os.listdir(staging), [])

    def test_disconnectMidUpload(self):
        """
        A client that goes away mid-upload leaves nothing behind, and the
        server goes on serving others.
        """
        client, server = self.keyed()
        src, source = self.planTree()
        d = client.backup(*source, "src", "dir")
        self.pump.pump()
        self.clock.advance(0)
        self.pump.pump()
        client.transport.abortConnection()
        flush(self.pump, self.clock)
        self.failureResultOf(d)
        staging = os.path.join(self.data, "users", "alice", ".staging")
        self.assertEqual(os.listdir(staging), [])
        other, _ = self.keyed(user="bob")
        self.assertEqual(self.successResultOf(self.settle(other.listSnapshots())), [])

    def test_restoreCorruptedResent(self):
        """
        A restore chunk corrupted in transit is caught by the client, which
        asks for a resend and gets a good copy.
        """
        client, server, src = self.backedUp()
        original = server.sendString
        state = {"corrupted": 0, "begins": 0}

        def corrupting(body):
            kind = body[0]
            if kind == Msg.RESTORE_BEGIN:
                state["begins"] += 1
            if kind == Msg.DATA and state["begins"] == 1 and not state["corrupted"]:
                body = body[:-1] + bytes([body[-1] ^ 1])
                state["corrupted"] += 1
            original(body)

        server.sendString = corrupting
        os.mkdir("work")
        begin, sink = self.successResultOf(self.settle(client.restore(None, zipSinks("work"))))
        restored = sink.path
        self.assertEqual((state["corrupted"], state["begins"]), (1, 2))
        self.assertEqual(os.listdir("work"), [os.path.basename(restored)])
        placeRestore(restored, "dest", "src", "dir", Limits())
        self.assertEqual(treeSignature(src), treeSignature("dest/src"))

    def backedUp(self):
        """
        @return: C{(client, server, src)}: a keyed session whose user has
            backed up the tricky tree at C{src} once.
        """
        client, server = self.keyed()
        src, source = self.planTree()
        self.successResultOf(self.settle(client.backup(*source, "src", "dir")))
        return client, server, src

    def restoreCutAt(self, client, server, chunk, beforeCut=None):
        """
        Restore into a new folder C{work}, with the connection aborted by
        the server when it would send DATA chunk number C{chunk} (from 1),
        after calling C{beforeCut}; the restore fails with L{ConnectionGone}.
        """
        original = server.sendString
        sent = []

        def cutting(body):
            if body[0] == Msg.DATA:
                sent.append(1)
                if len(sent) == chunk:
                    if beforeCut is not None:
                        beforeCut()
                    server.transport.abortConnection()
                    return
            original(body)

        server.sendString = cutting
        os.mkdir("work")
        self.failureResultOf(self.settle(client.restore(None, zipSinks("work"))), ConnectionGone)

    def test_restoreTruncated(self):
        """
        A restore stream cut off midway fails, and the partial zip is
        removed.
        """
        client, server, _ = self.backedUp()
        self.restoreCutAt(client, server, 3)
        self.assertEqual(os.listdir("work"), [])

    def test_localDiskFullDuringRestore(self):
        """
        A full disk on the client while it writes a restore fails the
        restore with the neutral L{SinkFailed} (not the server's
        "storage full"), which the command words as a full local disk,
        exit code 9; the server keeps serving.
        """
        client, server, _ = self.backedUp()

        class FullSink(FileSink):
            def write(self, data):
                raise OSError(errno.ENOSPC, "No space left on device", "work/x.zip")

        os.mkdir("work")
        d = self.settle(client.restore(None, lambda begin, attempt: FullSink("work/x.zip")))
        failure = self.failureResultOf(d, SinkFailed)
        self.assertEqual(
            _errorResult(failure.value),
            (EXIT_LOCAL_FULL, "local disk full (work/x.zip): No space left on device"),
        )
        self.assertEqual(self.factory.connections, set())
        self.keyed(register=False)

    def test_flushAheadDuringUpload(self):
        """
        While an upload arrives the server asks for its tree to be flushed
        to disk ahead of the commit.
        """
        flushed = []
        self.factory.flushAhead = FlushAhead(every=1000, flush=flushed.append)
        client, server, _ = self.backedUp()
        self.factory.flushAhead.stop()  # runs the flushes asked for, then ends
        staging = os.path.join(self.data, "users", "alice", ".staging")
        self.assertTrue(flushed[0].startswith(staging + os.sep), flushed)

    def spooledRestores(self):
        """
        Make the server deflate restores, and record the spools their plans
        keep streams in.
        """
        self.factory.restoreCompression = "auto"
        spools = []

        class RecordingSpool(Spool):
            def __init__(self, *args):
                super().__init__(*args)
                self.reads = 0
                spools.append(self)

            def read(self, where, length):
                self.reads += 1
                return super().read(where, length)

        self.factory.restores = RestoreArchives(
            self.factory.store.dataDir, TEST_READ_AHEAD, spool=RecordingSpool
        )
        return spools

    def test_deflatedRestoreSpooled(self):
        """
        A deflated restore sends the deflate streams its plan kept: the tree
        arrives whole, and the spool is closed once the restore is done.
        """
        spools = self.spooledRestores()
        client, server = self.keyed()
        src, source = self.planTree()
        textTree(os.path.join(src, "texts"))
        plan = planArchive(src)
        source = (lambda: ArchiveStream(plan)), plan.size
        self.successResultOf(self.settle(client.backup(*source, "src", "dir")))
        os.mkdir("work")
        begin, sink = self.successResultOf(self.settle(client.restore(None, zipSinks("work"))))
        with zipfile.ZipFile(sink.path) as zf:
            self.assertIn(zipfile.ZIP_DEFLATED, {i.compress_type for i in zf.infolist()})
        placeRestore(sink.path, "dest", "src", "dir", Limits())
        self.assertEqual(treeSignature(src), treeSignature("dest/src"))
        [spool] = spools
        self.assertGreater(spool.reads, 20)
        self.assertEqual(spool._files, [])
        self.assertIsNone(spool.keeper())

    def test_spoolClosedWhenRestoreCut(self):
        """
        A restore cut off midway closes its spool too.
        """
        spools = self.spooledRestores()
        client, server = self.keyed()
        src = textTree(os.path.abspath("src"))
        plan = planArchive(src)
        self.successResultOf(
            self.settle(client.backup(lambda: ArchiveStream(plan), plan.size, "src", "dir"))
        )
        kept = []
        self.restoreCutAt(client, server, 1, lambda: kept.append(len(spools[0]._files)))
        [spool] = spools
        self.assertGreater(kept[0], 0)
        self.assertEqual(spool._files, [])
        self.assertIsNone(spool.keeper())

    def recordServerBuffers(self):
        """
        @return: a list that gets each size that the server's send buffer
            policy sets its sockets' buffers to.
        """
        sizes = []
        self.factory.sendBuffers = SendBuffers(setBuffer=lambda transport, size: sizes.append(size))
        return sizes

    def recordSocketBuffers(self, module):
        """
        @return: a list that gets each size that C{module} (the server's or
            the client's) sets its sockets' buffers to (the in-memory
            transports have no socket).
        """
        sizes = []
        self.patch(module, "setSocketBuffer", lambda transport, size: sizes.append(size))
        return sizes

    def test_sendBufferWhileRestoring(self):
        """
        A restoring connection's socket holds L{SEND_BUFFER} while it sends,
        and Twisted's default again once the restore is done; a backup
        leaves it alone.
        """
        sizes = self.recordServerBuffers()
        client, server, _ = self.backedUp()
        self.assertEqual(sizes, [])
        os.mkdir("work")
        self.successResultOf(self.settle(client.restore(None, zipSinks("work"))))
        self.assertEqual(sizes, [SEND_BUFFER, DEFAULT_SOCKET_BUFFER])
        self.assertEqual(self.factory.sendBuffers.holders, set())

    def test_sendBufferFreedWhenRestoreCut(self):
        """
        A restore cut off midway gives its place among the wider buffers
        back.
        """
        sizes = self.recordServerBuffers()
        client, server, _ = self.backedUp()
        held = []
        self.restoreCutAt(
            client, server, 2, lambda: held.append(set(self.factory.sendBuffers.holders))
        )
        self.assertEqual(held, [{server}])
        self.assertEqual(sizes, [SEND_BUFFER])
        self.assertEqual(self.factory.sendBuffers.holders, set())

    def test_clientReadsMoreWhileRestoring(self):
        """
        The client's socket reads L{RECEIVE_BUFFER} at a time while a
        restore runs, and Twisted's default again after it, whether it
        ends well or is cut off.
        """
        sizes = self.recordSocketBuffers(clientModule)
        client, server, _ = self.backedUp()
        self.assertEqual(sizes, [])
        os.mkdir("whole")
        self.successResultOf(self.settle(client.restore(None, zipSinks("whole"))))
        self.assertEqual(sizes, [clientModule.RECEIVE_BUFFER, clientModule.DEFAULT_SOCKET_BUFFER])
        del sizes[:]
        self.restoreCutAt(client, server, 2)
        self.assertEqual(sizes, [clientModule.RECEIVE_BUFFER, clientModule.DEFAULT_SOCKET_BUFFER])

    def test_restoreUnknown(self):
        """
        Restoring an unknown id fails with not-found.
        """
        client, server = self.keyed()
        os.mkdir("work")
        f = self.failureResultOf(
            self.settle(client.restore("nope-1", zipSinks("work"))), ProtocolError
        )
        self.assertEqual(f.value.code, Code.NOT_FOUND)

    def test_wrongCA(self):
        """
        A client that trusts another CA refuses the server.
        """
        other = certificates("elsewhere.test")["ca.pem"]
        client, server = self.connect(clientTLSOptions(ca=other))
        f = self.failureResultOf(self.settle(client.login("alice", "pw")), ConnectionGone)
        self.assertIsInstance(f.value.reason.value, SSLError)

    def test_wrongHostName(self):
        """
        A client that expects another host name refuses the server.
        """
        client, server = self.connect(clientTLSOptions(host="other.test"))
        f = self.failureResultOf(self.settle(client.login("alice", "pw")), ConnectionGone)
        self.assertIsInstance(f.value.reason.value, (VerificationError, SSLError))


class corruptFirstData:
    """
    Flip a bit in the first DATA frame of the first C{attempts} uploads.
    """

    def __init__(self, client, attempts):
        self.count = 0
        self.readies = 0
        self._attempts = attempts
        self._original = client.sendString
        self._seen = set()
        client.sendString = self.send
        originalDeliver = client._deliver

        def deliver(kind, body):
            if kind is Msg.READY:
                self.readies += 1
            originalDeliver(kind, body)

        client._deliver = deliver

    def send(self, body):
        if body[0] == Msg.DATA and self.readies not in self._seen and self.count < self._attempts:
            self._seen.add(self.readies)
            body = body[:5] + bytes([body[5] ^ 0x40]) + body[6:]
            self.count += 1
        self._original(body)
