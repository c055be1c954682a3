"""
Uploads and restores driven frame by frame against the real server
protocol: what is stored, what is refused, and backpressure.
"""

import os

from twisted.internet.abstract import FileDescriptor
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from backup_proto.archive.stream import writeArchive
from backup_proto.server import catalog
from backup_proto.server.resources import SendBuffers
from backup_proto.server.session import State
from backup_proto.wire import crypto
from backup_proto.wire.cksum import cksumFile
from backup_proto.wire.errors import Code
from backup_proto.wire.frames import Msg
from backup_proto.wire.transfer import (
    DEFAULT_SOCKET_BUFFER,
    READ_AHEAD,
    READ_BATCH,
    SEND_BUFFER,
    ChunkSender,
    FrameSender,
    TransferAborted,
)
from tests.helpers import ManualRunner, TestCase, makeFactory, runNow, serverTLSOptions
from tests.wire import Wire


def makeZip(name="docs", size=200_000):
    os.makedirs(name, exist_ok=True)
    with open(os.path.join(name, "data.bin"), "wb") as f:
        f.write(os.urandom(size))
    path = os.path.abspath(f"{name}_backup.zip")
    writeArchive(name, path)
    with open(path, "rb") as f:
        return path, f.read()


class WireCase(TestCase):
    """
    A server with a data folder, a zip of a 200 KB tree, and a logged-in,
    keyed wire client.
    """

    def setUp(self):
        super().setUp()
        self.data = os.path.abspath("data")
        self.factory = makeFactory(self.data)
        self.zipPath, self.zip = makeZip()
        self.wire = Wire(self.factory).keyed()


class UploadTests(WireCase):
    def begin(self, size=None, name="docs"):
        self.wire.sendControl(
            Msg.BACKUP,
            name=name,
            kind="dir",
            size=len(self.zip) if size is None else size,
            parent=None,
            manifest=None,
        )
        kind, ready = self.wire.last()
        self.assertIs(kind, Msg.READY, ready)
        return ready["transfer"]

    def beginWithHeldIO(self):
        """
        Begin an upload with the server's I/O held in a L{ManualRunner}.

        @return: the runner and the transfer number.
        """
        io = ManualRunner()
        self.factory.runIO = io
        self.wire.sendControl(
            Msg.BACKUP, name="docs", kind="dir", size=len(self.zip), parent=None, manifest=None
        )
        io.runRound()  # the staging folder
        return io, self.wire.last()[1]["transfer"]

    def writerJobs(self, io):
        return [job for job in io.jobs if job[1].__name__ == "_drain"]

    def snapshots(self):
        return self.factory.store.db.runSync(catalog.snapshots, "alice", catalog.LIVE, False)

    def stagingEmpty(self):
        staging = os.path.join(self.data, "users", "alice", ".staging")
        return not os.path.exists(staging) or os.listdir(staging) == []

    def test_upload(self):
        """
        An upload is answered with its cksum; COMMIT stores a snapshot equal
        to the source, and no zip is left.
        """
        transfer = self.begin()
        self.wire.send(b"".join(self.wire.sealedChunks(self.zip, transfer)))
        kind, ck = self.wire.last()
        self.assertEqual(
            (kind, ck["crc"], ck["size"], ck["rejected"]),
            (Msg.CKSUM, cksumFile(self.zipPath)[0], len(self.zip), 0),
        )
        self.wire.sendControl(Msg.COMMIT, crc=ck["crc"])
        kind, done = self.wire.last()
        self.assertIs(kind, Msg.DONE)
        snap = done["snapshot"]
        self.assertTrue(snap["id"].startswith("docs-"))
        self.assertEqual((snap["files"], snap["size"]), (1, 200_000))
        stored = os.path.join(self.data, "users", "alice", snap["id"], "docs", "data.bin")
        with open(stored, "rb") as f, open("docs/data.bin", "rb") as g:
            self.assertEqual(f.read(), g.read())
        self.assertTrue(self.stagingEmpty())
        self.assertEqual([s["id"] for s in self.snapshots()], [snap["id"]])
        self.assertIs(self.wire.proto.state, State.KEYED)

    def test_diskBackpressure(self):
        """
        When writes fall behind, the server stops reading the socket; it
        reads again once they drain, even if the upload ended meanwhile, so
        the COMMIT that follows is processed.
        """
        from backup_proto.wire.transfer import ChunkReceiver

        # nothing is written until the test runs the I/O, and only the last
        # chunk takes the bytes not yet written over the mark: the pause
        # comes as the upload ends
        self.patch(ChunkReceiver, "highWater", len(self.zip) - 1)
        io, transfer = self.beginWithHeldIO()
        self.wire.send(b"".join(self.wire.sealedChunks(self.zip, transfer)))
        self.assertEqual(self.wire.transport.producerState, "paused")
        frames = []
        for _ in range(50):
            io.runAll()
            self.factory.clock.advance(0)
            frames += self.wire.received()
        kind, ck = frames[-1]
        self.assertIs(kind, Msg.CKSUM)
        self.assertEqual(self.wire.transport.producerState, "producing")
        self.factory.runIO = runNow
        self.wire.sendControl(Msg.COMMIT, crc=ck["crc"])
        self.assertIs(self.wire.last()[0], Msg.DONE)

    def test_writerTakesLaterChunks(self):
        """
        The thread job that writes an upload also writes the chunks that
        arrived after it was started, instead of leaving them for another
        job once the reactor hears it ended.
        """
        io, transfer = self.beginWithHeldIO()
        chunks = self.wire.sealedChunks(self.zip, transfer)
        self.assertGreater(len(chunks), 2)
        self.wire.send(chunks[0])
        self.wire.send(b"".join(chunks[1:]))
        self.assertEqual(len(self.writerJobs(io)), 1)
        io.runRound()  # that one job
        self.assertEqual(self.writerJobs(io), [])
        io.runAll()
        self.factory.clock.advance(0)
        self.assertIs(self.wire.received()[-1][0], Msg.CKSUM)

    def test_lostWhileWriterWaits(self):
        """
        A connection lost while a write job waits for its thread: the job
        writes nothing when it runs, and the upload's staging is removed.
        """
        io, transfer = self.beginWithHeldIO()
        self.wire.send(b"".join(self.wire.sealedChunks(self.zip, transfer)[:2]))
        receiver = self.wire.proto.session.upload.receiver
        written = []
        self.patch(receiver.sink, "write", written.append)
        self.wire.proto.connectionLost(None)
        io.runAll()
        self.assertEqual(written, [])
        self.assertTrue(self.stagingEmpty())

    def test_outOfOrder(self):
        """
        Chunks sent out of order fail authentication; the server reports
        them and refuses to commit; nothing is stored.
        """
        transfer = self.begin()
        chunks = self.wire.sealedChunks(self.zip, transfer)
        chunks[0], chunks[1] = chunks[1], chunks[0]
        self.wire.send(b"".join(chunks))
        kind, ck = self.wire.last()
        self.assertEqual(ck["rejected"], 2)
        self.wire.sendControl(Msg.COMMIT, crc=ck["crc"])
        self.assertEqual(self.wire.last()[1]["code"], Code.BAD_UPLOAD)
        self.wire.proto.connectionLost(None)
        self.assertEqual(self.snapshots(), [])
        self.assertTrue(self.stagingEmpty())

    def test_replayed(self):
        """
        A chunk replayed in place of the next one fails authentication.
        """
        transfer = self.begin()
        chunks = self.wire.sealedChunks(self.zip, transfer)
        chunks[2] = chunks[1]
        self.wire.send(b"".join(chunks))
        self.assertEqual(self.wire.last()[1]["rejected"], 1)

    def test_replayFromEarlierAttempt(self):
        """
        Chunks of an earlier attempt do not authenticate in a resend.
        """
        first = self.begin()
        old = self.wire.sealedChunks(self.zip, first)
        self.wire.send(b"".join(old))
        self.wire.received()
        self.wire.sendControl(Msg.RESEND)
        kind, ready = self.wire.last()
        self.assertEqual(ready["transfer"], first + 1)
        self.wire.send(b"".join(old))
        self.assertEqual(self.wire.last()[1]["rejected"], len(old))

    def test_oversized(self):
        """
        More data than declared is refused at once.
        """
        transfer = self.begin()
        chunks = self.wire.sealedChunks(self.zip, transfer)
        extra = self.wire.sealedChunks(self.zip, transfer)[0]
        self.wire.send(b"".join(chunks) + extra)
        kinds = [k for k, _ in self.wire.received()]
        self.assertIn(Msg.ERROR, kinds)
        self.assertTrue(self.wire.closed)

    def test_declaredTooLarge(self):
        """
        A declared size over the server's limit is refused before any data.
        """
        self.factory.maxUploadSize = 1000
        self.wire.sendControl(
            Msg.BACKUP, name="docs", kind="dir", size=1001, parent=None, manifest=None
        )
        self.assertEqual(self.wire.last()[1]["code"], Code.TOO_LARGE)

    def test_badNames(self):
        """
        Backup names that are not one safe component are refused.
        """
        for name in ("", ".", "..", "a/b", "../x", "a\\b", "a\x00"):
            wire = Wire(self.factory).keyed(register=False)
            wire.sendControl(Msg.BACKUP, name=name, kind="dir", size=10, parent=None, manifest=None)
            self.assertEqual(wire.last()[1]["code"], Code.BAD_MESSAGE, name)

    def test_truncated(self):
        """
        A connection closed before the last chunk leaves no snapshot and no
        staging data.
        """
        transfer = self.begin()
        chunks = self.wire.sealedChunks(self.zip, transfer)
        self.wire.send(b"".join(chunks[:2]))
        self.wire.proto.connectionLost(None)
        self.assertEqual(self.snapshots(), [])
        self.assertTrue(self.stagingEmpty())

    def test_wrongLengthChunk(self):
        """
        A correctly sealed chunk of the wrong length is refused.
        """
        transfer = self.begin(size=10)
        from backup_proto.wire.frames import encodeData
        from tests.wire import frame

        sealed = self.wire.ciphers.upload.seal(transfer, 10, 0, b"short")
        self.wire.send(frame(encodeData(sealed)))
        self.assertEqual(self.wire.last()[1]["code"], Code.BAD_UPLOAD)

    def test_resendLimit(self):
        """
        After three resends a fourth RESEND is refused as verify-failed and
        nothing is stored.
        """
        transfer = self.begin()
        for attempt in range(4):
            bad = self.wire.sealedChunks(self.zip, transfer)
            bad[0] = bad[1]
            self.wire.send(b"".join(bad))
            self.wire.received()
            self.wire.sendControl(Msg.RESEND)
            last = self.wire.last()
            if attempt < 3:
                self.assertIs(last[0], Msg.READY)
                transfer = last[1]["transfer"]
        self.assertEqual(last[1]["code"], Code.VERIFY_FAILED)
        self.wire.proto.connectionLost(None)
        self.assertEqual(self.snapshots(), [])
        self.assertTrue(self.stagingEmpty())

    def test_badArchive(self):
        """
        An upload that is not a safe archive is refused after COMMIT and
        nothing is stored; earlier snapshots stay.
        """
        good = self.wire.backup(self.zip)[1]["snapshot"]["id"]
        junk = b"not a zip at all" * 100
        self.assertEqual(self.wire.backup(junk)[1]["code"], Code.BAD_ARCHIVE)
        self.wire.proto.connectionLost(None)
        self.assertEqual([s["id"] for s in self.snapshots()], [good])
        self.assertTrue(self.stagingEmpty())

    def test_storageFull(self):
        """
        A full disk while writing the upload is reported as storage-full,
        and the partial data is removed.
        """
        import errno

        def full(*args):
            raise OSError(errno.ENOSPC, "No space left on device")

        def failingIO(f, *args):
            if f.__name__ == "_drain":
                return runNow(full)
            return runNow(f, *args)

        self.factory.runIO = failingIO
        transfer = self.begin()
        self.wire.send(b"".join(self.wire.sealedChunks(self.zip, transfer)))
        self.assertEqual(self.wire.last()[1]["code"], Code.STORAGE_FULL)
        self.wire.proto.connectionLost(None)
        self.assertTrue(self.stagingEmpty())


class RestoreWireTests(WireCase):
    def setUp(self):
        super().setUp()
        self.snapshot = self.wire.backup(self.zip)[1]["snapshot"]

    def test_unknownAndOthers(self):
        """
        Another user's snapshot id gets exactly the answer an unknown id
        gets, and the connection stays usable.
        """
        other = Wire(self.factory).keyed(user="mallory")
        other.sendControl(Msg.RESTORE, snapshot=self.snapshot["id"], include=[])
        theirs = other.last()
        other.sendControl(Msg.RESTORE, snapshot="docs-20990101T000000Z", include=[])
        unknown = other.last()
        self.assertEqual(theirs, unknown)
        self.assertEqual(theirs[1]["code"], Code.NOT_FOUND)
        self.assertFalse(theirs[1]["fatal"])
        other.sendControl(Msg.LIST)
        self.assertEqual(other.last(), (Msg.SNAPSHOTS, {"snapshots": [], "more": False}))

    def test_stalledReader(self):
        """
        The server's restore is a registered streaming producer: while the
        transport is paused (a client that stops reading) nothing more is
        written and no more is read from disk than one batch ahead.
        """
        manualIO = ManualRunner()
        runRound = manualIO.runRound

        self.factory.runIO = manualIO
        self.wire.sendControl(Msg.RESTORE, snapshot=None, include=[])
        for _ in range(3):  # staging folder, open, first read
            runRound()
        frames = self.wire.received()
        self.assertEqual(frames[0][0], Msg.RESTORE_BEGIN)
        self.assertEqual(frames[-1][0], Msg.CKSUM)  # a small zip: one batch
        self.assertEqual(self.wire.proto.state, State.CONFIRMING)
        self.wire.sendControl(Msg.COMMIT, crc=frames[-1][1]["crc"])
        self.assertEqual(self.wire.last()[0], Msg.DONE)
        # a bigger snapshot, paused after the first batch
        with open("docs/big.bin", "wb") as f:
            f.write(os.urandom(crypto.CHUNK_SIZE * READ_BATCH * 3))
        zipPath = os.path.abspath("big.zip")
        writeArchive("docs", zipPath)
        with open(zipPath, "rb") as f:
            zipData = f.read()
        self.factory.runIO = runNow
        self.wire.backup(zipData)
        self.wire.received()
        self.factory.runIO = manualIO
        self.wire.sendControl(Msg.RESTORE, snapshot=None, include=[])
        runRound()
        runRound()
        producer = self.wire.transport.producer
        self.assertIsNotNone(producer)
        self.assertTrue(self.wire.transport.streaming)
        runRound()
        sent = len(self.wire.received())
        producer.pauseProducing()
        for _ in range(5):
            runRound()
        self.assertEqual(self.wire.received(), [])
        self.assertLessEqual(len(manualIO.jobs), 1)
        producer.resumeProducing()
        for _ in range(20):
            runRound()
        rest = self.wire.received()
        self.assertEqual(rest[-1][0], Msg.CKSUM)
        self.assertGreater(sent + len(rest), READ_BATCH * 3)

    def test_readAheadOnlyWhenWide(self):
        """
        A restore reads L{READ_AHEAD} chunks ahead only if its connection
        got the wider send buffer; beyond the policy's limit, L{READ_BATCH}.
        """
        manualIO = ManualRunner()
        self.factory.runIO = manualIO
        readAheads = []
        for wideSenders in (1, 0):
            self.factory.sendBuffers.limit = wideSenders
            self.wire.sendControl(Msg.RESTORE, snapshot=None, include=[])
            manualIO.runRound()  # staging folder
            readAheads.append(self.wire.proto.session.restore.sender._readAhead)
            manualIO.runAll()
            crc = self.wire.received()[-1][1]["crc"]
            self.wire.sendControl(Msg.COMMIT, crc=crc)
            self.assertEqual(self.wire.last()[0], Msg.DONE)
        self.assertEqual(readAheads, [READ_AHEAD, READ_BATCH])


class SenderBackpressureTests(TestCase):
    def test_pauseStopsSending(self):
        """
        A paused transport stops the L{ChunkSender}; resuming continues it,
        and the chunks and CRC come out right.
        """
        chunks = READ_BATCH * 2 + 9  # the last one short
        data = os.urandom(crypto.CHUNK_SIZE * (chunks - 1) + 3)
        with open("big", "wb") as f:
            f.write(data)
        ciphers = crypto.SessionCiphers(b"k" * 32)
        transport = StringTransport()
        deferredIO = ManualRunner()
        runReads = deferredIO.runRound

        sent = []
        sender = ChunkSender(
            lambda: open("big", "rb"),
            len(data),
            ciphers.upload,
            1,
            lambda body: (sent.append(body), transport.write(body)),
            deferredIO,
        )
        done = sender.start(transport)
        self.assertIs(transport.producer, sender)
        self.assertTrue(transport.streaming)
        runReads()  # open
        runReads()  # first batch
        self.assertEqual(len(sent), READ_BATCH)
        transport.producer.pauseProducing()
        runReads()
        self.assertEqual(len(sent), READ_BATCH)
        self.assertNoResult(done)
        sender.resumeProducing()
        for _ in range(10):
            runReads()
        self.assertEqual(len(sent), chunks)
        self.assertEqual(
            self.successResultOf(done),
            __import__("backup_proto.wire.cksum", fromlist=["cksumBytes"]).cksumBytes(data),
        )
        self.assertIsNone(transport.producer)
        plain = b"".join(
            ciphers.upload.open(1, len(data), i, body[1:]) for i, body in enumerate(sent)
        )
        self.assertEqual(plain, data)


class _Source:
    """
    A sender's source that counts the chunks read from it, and records
    whether it was closed in a thread job.
    """

    def __init__(self, data, inJob):
        self._data = data
        self._offset = 0
        self._inJob = inJob
        self.closedInJob = []
        self.chunksRead = 0

    def read(self, n):
        self.chunksRead += 1
        piece = self._data[self._offset : self._offset + n]
        self._offset += len(piece)
        return piece

    def close(self):
        self.closedInJob.append(bool(self._inJob))


class SenderSourceTests(TestCase):
    """
    How a L{ChunkSender} reads its source, and closes it in a thread job,
    never on the reactor: closing a zip stream midway waits for a disk
    read.
    """

    def sender(self, batches=None, **kwargs):
        chunks = READ_BATCH + 5 if batches is None else READ_BATCH * batches
        data = os.urandom(crypto.CHUNK_SIZE * chunks)
        runner = ManualRunner()
        inJob = []

        def runIO(f, *args):
            def job(*args):
                inJob.append(True)
                try:
                    return f(*args)
                finally:
                    inJob.pop()

            return runner(job, *args)

        source = _Source(data, inJob)
        ciphers = crypto.SessionCiphers(b"k" * 32)
        transport = StringTransport()
        sender = ChunkSender(
            lambda: source, len(data), ciphers.upload, 1, transport.write, runIO, **kwargs
        )
        return sender, sender.start(transport), runner, source

    def test_afterLastChunk(self):
        sender, done, runner, source = self.sender()
        runner.runAll()
        self.successResultOf(done)
        self.assertEqual(source.closedInJob, [True])

    def test_readsAheadWhilePaused(self):
        """
        While the transport is paused and one batch waits, the sender reads
        a second one (L{READ_AHEAD}), and no further.
        """
        sender, done, runner, source = self.sender(batches=4)
        runner.runRound()  # open, and the first read starts
        sender.pauseProducing()
        runner.runAll()
        self.assertEqual(source.chunksRead, 2 * READ_BATCH)
        sender.resumeProducing()
        runner.runAll()
        self.successResultOf(done)
        self.assertEqual(source.chunksRead, 4 * READ_BATCH)

    def test_readsLessAhead(self):
        """
        With C{readAhead=READ_BATCH} (what the server gives restores beyond
        its send buffer policy's limit), a paused sender holds one batch and reads no
        more.
        """
        sender, done, runner, source = self.sender(batches=4, readAhead=READ_BATCH)
        runner.runRound()
        sender.pauseProducing()
        runner.runAll()
        self.assertEqual(source.chunksRead, READ_BATCH)
        sender.resumeProducing()
        runner.runAll()
        self.successResultOf(done)

    def test_aborted(self):
        sender, done, runner, source = self.sender()
        runner.runRound()  # open
        runner.runRound()  # first batch; the next read is under way
        sender.stopProducing()
        self.failureResultOf(done, TransferAborted)
        runner.runAll()
        self.assertEqual(source.closedInJob, [True])


class _Socket(FileDescriptor):
    """
    A connected socket's transport that writes nowhere.
    """

    connected = True

    def getPeer(self):
        return IPv4Address("TCP", "127.0.0.1", 50000)

    def getHost(self):
        return IPv4Address("TCP", "127.0.0.1", 40445)


class _Producer:
    paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


class SendBufferTests(TestCase):
    def serverOverSocket(self, factory, port=50000):
        """
        @return: the server's protocol under real TLS over a socket
            transport, and that transport.
        """
        tls = TLSMemoryBIOFactory(serverTLSOptions(), False, factory)
        protocol = tls.buildProtocol(IPv4Address("TCP", "127.0.0.1", port))
        socket = _Socket(MemoryReactor())
        protocol.makeConnection(socket)
        return protocol.wrappedProtocol, socket

    def test_serverSocketHoldsMore(self):
        """
        While it restores, a connection's socket holds L{SEND_BUFFER} bytes
        under its TLS before pausing the sender, not Twisted's 64 KiB
        (about one chunk); beyond that, the sender is still paused.  After
        the restore it holds 64 KiB again.
        """
        factory = makeFactory(os.path.abspath("data"))
        server, socket = self.serverOverSocket(factory)
        self.assertEqual(socket.bufferSize, DEFAULT_SOCKET_BUFFER)
        factory.sendBuffers.widen(server, server.transport)
        self.assertEqual(socket.bufferSize, SEND_BUFFER)
        producer = _Producer()
        server._unregisterGate()  # as a restore does: its sender takes over
        server.transport.registerProducer(producer, True)
        socket.write(b"x" * (4 * crypto.CHUNK_SIZE))
        self.assertFalse(producer.paused)
        socket.write(b"x" * SEND_BUFFER)
        self.assertTrue(producer.paused)
        factory.sendBuffers.narrow(server, server.transport)
        self.assertEqual(socket.bufferSize, DEFAULT_SOCKET_BUFFER)

    def test_fewAtATime(self):
        """
        Only the policy's limit of connections hold the wider buffer at once: the
        next restoring connection keeps 64 KiB, and gets the wider one once
        a holder's connection is gone.
        """
        factory = makeFactory(os.path.abspath("data"), sendBuffers=SendBuffers(limit=2))
        pairs = [self.serverOverSocket(factory, 50000 + i) for i in range(3)]
        self.assertEqual(
            [factory.sendBuffers.widen(server, server.transport) for server, _ in pairs],
            [READ_AHEAD, READ_AHEAD, READ_BATCH],
        )
        self.assertEqual(
            [socket.bufferSize for _, socket in pairs],
            [SEND_BUFFER, SEND_BUFFER, DEFAULT_SOCKET_BUFFER],
        )
        factory.connectionClosed(pairs[0][0])
        self.assertEqual(factory.sendBuffers.widen(pairs[2][0], pairs[2][0].transport), READ_AHEAD)
        self.assertEqual(pairs[2][1].bufferSize, SEND_BUFFER)


class _Batches:
    """
    A L{FrameSender} source: C{count} batches of two frames each.
    """

    def __init__(self, count):
        self.count = count
        self.reads = 0
        self.closed = 0

    def read(self):
        self.reads += 1
        return [b"a%d" % self.reads, b"b%d" % self.reads], self.reads == self.count

    def close(self):
        self.closed += 1


class FrameSenderTests(TestCase):
    def test_pausedReadsNoMore(self):
        """
        While the transport is paused nothing more is read: at most one
        batch waits.  Resumed, the rest goes out in order, the sender
        leaves the transport, its L{Deferred} fires, and the source is
        closed once.
        """
        source, runner, transport = _Batches(4), ManualRunner(), StringTransport()
        touched = []
        sender = FrameSender(source, transport.write, runner, lambda: touched.append(1))
        done = sender.start(transport)
        self.assertIs(transport.producer, sender)
        runner.runRound()  # the first batch
        self.assertEqual(transport.value(), b"a1b1")
        sender.pauseProducing()
        runner.runRound()  # the second batch, read ahead
        runner.runRound()
        self.assertEqual((source.reads, transport.value()), (2, b"a1b1"))
        sender.resumeProducing()
        runner.runAll()
        self.assertEqual(transport.value(), b"a1b1a2b2a3b3a4b4")
        self.assertIsNone(self.successResultOf(done))
        self.assertIsNone(transport.producer)
        self.assertEqual((source.closed, len(touched)), (1, 4))

    def test_stopDuringRead(self):
        """
        Stopped while a read runs, the sender fails with
        L{TransferAborted} and closes the source only after the read.
        """
        source, runner, transport = _Batches(4), ManualRunner(), StringTransport()
        done = FrameSender(source, transport.write, runner).start(transport)
        transport.producer.stopProducing()
        self.failureResultOf(done, TransferAborted)
        self.assertEqual(source.closed, 0)
        runner.runAll()
        self.assertEqual((source.reads, source.closed, transport.value()), (1, 1, b""))
