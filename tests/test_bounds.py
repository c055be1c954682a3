"""
Every connection is bounded in memory, in any state: after a fatal error
nothing more is kept (and reading stops), while frames wait for a thread
job the socket stops being read, and a client that does not read our
answers stops being read too.
"""

import json
import os
import socket
import ssl
import struct
import time
import zipfile

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from backup_proto.archive.stream import writeArchive
from backup_proto.server.session import State
from backup_proto.wire.errors import Code
from backup_proto.wire.frames import MAX_FRAME, Msg, decodeFrame
from tests.helpers import ManualRunner, TestCase, makeFactory
from tests.test_e2e import ServerProcess
from tests.wire import Wire, control, frame

PIECE = 32 * 1024  # what TLS hands the protocol at a time


class AfterFatalErrorTests(TestCase):
    def setUp(self):
        super().setUp()
        self.factory = makeFactory(os.path.abspath("data"))

    def flood(self, wire, total):
        junk = os.urandom(PIECE)
        for _ in range(total // PIECE):
            wire.proto.dataReceived(junk)
            self.assertEqual(len(wire.proto._unprocessed), 0)

    def assertCutOff(self, wire, code):
        """
        The connection got C{code}, is closing, keeps nothing of what
        followed, stopped reading once past the discard limit, and is
        aborted after the grace period.
        """
        kind, fields = wire.last()
        self.assertEqual((kind, fields["code"], fields["fatal"]), (Msg.ERROR, code, True))
        self.assertTrue(wire.transport.disconnecting)
        self.assertEqual(wire.transport.producerState, "paused")
        self.assertEqual(wire.proto._readHolds, {"closed"})
        self.assertFalse(wire.transport.disconnected)
        self.factory.clock.advance(self.factory.abortTimeout)
        self.assertTrue(wire.transport.disconnected)

    def test_oversizedFrameThenMore(self):
        """
        A 10 MB length prefix is C{bad-frame}; the 10 MB that follow are
        dropped as they arrive (they once piled up in the frame buffer,
        and were copied whole at every read).
        """
        wire = Wire(self.factory)
        wire.send(struct.pack("!I", 10 << 20) + b"\x02")
        self.flood(wire, 10 << 20)
        self.assertCutOff(wire, Code.BAD_FRAME)

    def test_unknownTypeThenMore(self):
        """
        An unknown message type followed by a large frame's worth of bytes.
        """
        wire = Wire(self.factory)
        wire.send(frame(b"\x42{}") + struct.pack("!I", MAX_FRAME) + b"\x10")
        self.flood(wire, 10 << 20)
        self.assertCutOff(wire, Code.BAD_FRAME)

    def test_fatalMidPiece(self):
        """
        Frames after the fatal one in the same read are dropped with it.
        """
        wire = Wire(self.factory)
        wire.send(frame(b"") + control(Msg.LIST) * 1000)
        self.assertEqual(len(wire.proto._unprocessed), 0)
        self.assertEqual([k for k, _ in wire.received()], [Msg.ERROR])

    def test_honestCloseSeen(self):
        """
        Below the discard limit the socket is still read, so an honest
        client's close after a fatal error is seen at once.
        """
        wire = Wire(self.factory)
        wire.send(frame(b""))
        wire.send(os.urandom(1000))
        self.assertEqual(wire.proto._readHolds, set())
        self.assertNotEqual(wire.transport.producerState, "paused")


class WhileBusyTests(TestCase):
    def test_inputHeldWhileHashing(self):
        """
        While a login is checked in a thread, a client that keeps sending
        gets one frame's worth buffered, then its socket is no longer read;
        once the job is done reading resumes and the bytes are parsed.
        """
        runCPU = ManualRunner()
        factory = makeFactory(os.path.abspath("data"), runCPU=runCPU)
        wire = Wire(factory)
        wire.sendControl(Msg.LOGIN, user="alice", password="pw")
        self.assertEqual(wire.proto.state, State.BUSY)
        junk = control(Msg.LIST) * (PIECE // len(control(Msg.LIST)))
        sent = 0
        while wire.transport.producerState != "paused":
            # a real transport delivers nothing more once paused
            self.assertLess(sent, 4 << 20)
            wire.proto.dataReceived(junk)
            sent += len(junk)
        self.assertLessEqual(len(wire.proto._unprocessed), MAX_FRAME + len(junk))
        runCPU.runAll()
        factory.clock.advance(0)
        self.assertEqual(wire.transport.producerState, "producing")
        errors = [f for k, f in wire.received() if k is Msg.ERROR]
        self.assertEqual([e["code"] for e in errors], [Code.AUTH_FAILED, Code.BAD_STATE])


class AnswerGateTests(TestCase):
    def setUp(self):
        super().setUp()
        self.factory = makeFactory(os.path.abspath("data"))
        self.wire = Wire(self.factory).keyed()
        self.wire.received()

    def test_gateHoldsReading(self):
        """
        Between restores the connection's transport has a producer that
        stops reading requests while our answers wait in the transport
        (the client does not read them), and reads again once they drain.
        """
        gate = self.wire.transport.producer
        self.assertIsNotNone(gate)
        gate.pauseProducing()
        self.assertEqual(self.wire.transport.producerState, "paused")
        gate.resumeProducing()
        self.assertEqual(self.wire.transport.producerState, "producing")

    def test_gateAndInputBothHold(self):
        """
        Reading resumes only when every reason to hold it is gone.
        """
        proto = self.wire.proto
        self.wire.transport.producer.pauseProducing()
        proto._holdReading("input")
        self.wire.transport.producer.resumeProducing()
        self.assertEqual(self.wire.transport.producerState, "paused")
        proto._releaseReading("input")
        self.assertEqual(self.wire.transport.producerState, "producing")

    def test_restoreTakesOver(self):
        """
        A restore's sender replaces the gate on the transport (releasing
        what it held), and the gate returns once the snapshot is sent.
        """
        wire = self.wire
        snapshot = self.backupSomething()
        wire.transport.producer.pauseProducing()
        wire.sendControl(Msg.RESTORE, snapshot=snapshot, include=[])
        self.assertEqual(wire.transport.producerState, "producing")
        frames = wire.received()
        self.assertEqual(frames[-1][0], Msg.CKSUM)
        self.assertIs(wire.transport.producer, wire.proto._gate)

    def test_closeUnregisters(self):
        """
        A fatal error takes the gate off, so that TLS can send its close.
        """
        self.wire.send(frame(b""))
        self.assertIsNone(self.wire.transport.producer)

    def backupSomething(self):
        os.makedirs("docs")
        with open("docs/a", "wb") as f:
            f.write(b"hello")
        writeArchive("docs", "docs.zip")
        with open("docs.zip", "rb") as f:
            kind, fields = self.wire.backup(f.read())
        self.assertIs(kind, Msg.DONE, fields)
        return fields["snapshot"]["id"]


class RefusedTests(TestCase):
    def test_refusedHoldsNothing(self):
        """
        A refused connection's protocol aborts as it is made and never
        enters the factory's counts.
        """
        factory = makeFactory(os.path.abspath("data"), maxConnections=1)
        Wire(factory)
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 1))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(len(factory.connections), 1)
        self.assertNotIn("127.0.0.2", factory.perPeer)


def _status(pid, field):
    """
    @return: a memory figure of C{/proc/PID/status} (C{VmRSS}, the peak
        C{VmHWM}) in MiB.
    """
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field}")


class SocketWire(Wire):
    """
    L{Wire}'s hand-written client over a real TLS socket (blocking).
    """

    def __init__(self, sock):
        self.sock = sock
        self.ciphers = None
        self._buffer = b""

    def send(self, data):
        self.sock.sendall(data)

    def received(self):
        return [self._next()]

    def _next(self):
        while True:
            if len(self._buffer) >= 4:
                (n,) = struct.unpack("!I", self._buffer[:4])
                if len(self._buffer) >= 4 + n:
                    kind, body = decodeFrame(self._buffer[4 : 4 + n])
                    self._buffer = self._buffer[4 + n :]
                    return kind, body if kind is Msg.DATA else json.loads(body)
            more = self.sock.recv(1 << 16)
            if not more:
                raise ConnectionResetError("server closed the connection")
            self._buffer += more


def _openFiles(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.slow
class RealServerTests(TestCase):
    """
    The findings of an independent hostile client, against a real
    C{twistd backup-server}: memory and descriptors read from C{/proc}.
    """

    def startServer(self, *args):
        base = os.path.abspath("server")
        os.makedirs(base)
        self.server = ServerProcess(base, *args)
        self.addCleanup(self.server.stop)
        self.pid = self.server.process.pid
        self.ca = os.path.join(base, "certs", "ca.pem")

    def connect(self):
        context = ssl.create_default_context(cafile=self.ca)
        raw = socket.create_connection(("127.0.0.1", self.server.port), timeout=5)
        return context.wrap_socket(raw, server_hostname="localhost")

    def honestLogin(self):
        """
        A REGISTER answered in time on a fresh connection.
        """
        with self.connect() as s:
            s.sendall(control(Msg.REGISTER, user=f"u{time.monotonic_ns()}", password="pw"))
            (length,) = struct.unpack("!I", s.recv(4))
            self.assertEqual(s.recv(length)[0], Msg.OK)

    def test_floodAfterFatalError(self):
        """
        Twenty clients each announce a 10 MB frame and keep sending: each
        gets C{bad-frame}, and the server keeps none of what follows (it
        once grew by about 9.5 MiB a connection, and kept it).
        """
        self.startServer()
        self.honestLogin()
        before = _status(self.pid, "VmRSS")
        junk = os.urandom(1 << 20)
        for _ in range(20):
            s = self.connect()
            s.settimeout(0.3)
            try:
                s.sendall(struct.pack("!I", 10 << 20) + b"\x02")
                for _ in range(10):
                    s.sendall(junk)
            except OSError:
                pass  # the server stopped reading: the send buffers are full
            s.close()
        self.honestLogin()
        grown = _status(self.pid, "VmRSS") - before
        self.assertLess(grown, 25, f"server grew by {grown:.1f} MiB")
        self.assertNotIn("Unhandled Error", self.server.logText())

    def test_overCapClosed(self):
        """
        Connections over C{--max-per-peer} are closed at once, before the
        handshake completes, with nothing in the log but a warning; the
        server's descriptors stay at the held connections' count.
        """
        self.startServer("--max-per-peer", "4")
        held = [self.connect() for _ in range(4)]
        baseline = _openFiles(self.pid)
        for _ in range(30):
            start = time.monotonic()
            with self.assertRaises((OSError, ssl.SSLError)):
                s = self.connect()
                s.settimeout(2)
                if s.recv(1) == b"":
                    raise ConnectionResetError("closed")
            self.assertLess(time.monotonic() - start, 1.0)
        self.assertEqual(_openFiles(self.pid), baseline)
        for s in held:
            s.close()
        self.honestLoginSoon()
        log = self.server.logText()
        self.assertNotIn("Unhandled Error", log)
        self.assertIn("too many from this peer", log)

    def test_manyEntries(self):
        """
        An upload of a zip with 100,000 entries (empty files in folders of
        1,000) raises the server's peak memory by a few bytes an entry: it
        kept about 350 bytes an entry (35 MiB here) while it unpacked.
        """
        self.startServer()
        count = 100_000
        with zipfile.ZipFile("many.zip", "w") as z:
            z.writestr("many/", b"")
            for i in range(count):
                if i % 1000 == 0:
                    z.writestr(f"many/d{i // 1000:03}/", b"")
                z.writestr(f"many/d{i // 1000:03}/file-name-{i:08}.txt", b"")
        with open("many.zip", "rb") as f:
            data = f.read()
        with self.connect() as s:
            s.settimeout(300)  # unpacking 100,000 files takes a while
            wire = SocketWire(s)
            wire.keyed("alice")
            before = _status(self.pid, "VmRSS")
            kind, fields = wire.backup(data, name="many")
            peak = _status(self.pid, "VmHWM")
        self.assertEqual((kind, fields["snapshot"]["files"]), (Msg.DONE, count))
        grown = peak - before
        self.assertLess(grown, 28, f"server peaked {grown:.1f} MiB above its start")

    def honestLoginSoon(self):
        """
        L{honestLogin}, once the server has seen the held connections go.
        """
        deadline = time.monotonic() + 10
        while True:
            try:
                return self.honestLogin()
            except (OSError, ssl.SSLError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
