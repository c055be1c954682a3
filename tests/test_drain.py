"""
A graceful stop (L{backup_proto.server.drain}): in memory on a L{Clock},
and through a real C{twistd} sent SIGTERM during an upload.
"""

import os
import signal

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock

from backup_proto.server import catalog
from backup_proto.server.drain import Drain, ServerService
from backup_proto.server.protocol import RefusedConnection
from backup_proto.wire.frames import Msg
from tests.helpers import TestCase, makeFactory
from tests.test_e2e import EndToEndCase
from tests.wire import Wire


def zipOf(size=300_000):
    """
    A real zip of one folder holding C{size} random bytes (several chunks).
    """
    import zipfile

    with zipfile.ZipFile("upload.zip", "w") as zf:
        zf.writestr("docs/", b"")
        zf.writestr("docs/data.bin", os.urandom(size))
    with open("upload.zip", "rb") as f:
        return f.read()


class DrainTests(TestCase):
    def setUp(self):
        super().setUp()
        self.clock = Clock()
        self.factory = makeFactory("data", self.clock)
        self.data = zipOf()

    def startUpload(self, wire):
        """
        Send BACKUP and the first chunk only.

        @return: the chunks not sent yet.
        """
        wire.sendControl(
            Msg.BACKUP, name="docs", kind="dir", size=len(self.data), parent=None, manifest=None
        )
        transfer = wire.last()[1]["transfer"]
        chunks = wire.sealedChunks(self.data, transfer)
        self.assertGreater(len(chunks), 2)
        wire.send(chunks[0])
        return chunks[1:]

    def stored(self):
        return self.factory.store.db.runSync(catalog.snapshots, "alice")

    def closeLost(self, wire):
        """
        What a real transport does once closed: tell the protocol.
        """
        if wire.closed and wire.proto in self.factory.connections:
            wire.proto.connectionLost(None)

    def test_uploadFinishes(self):
        """
        A connection that moves nothing is closed at once; an upload under
        way finishes (its connection closed once it is done), and new
        connections are refused meanwhile.
        """
        idle = Wire(self.factory).keyed(user="bob")
        busy = Wire(self.factory).keyed()
        rest = self.startUpload(busy)
        done = Drain(self.factory, self.clock, grace=30).run()
        self.assertTrue(idle.closed)
        kind, fields = idle.last()
        self.assertEqual(
            (kind, fields["code"], fields["fatal"]), (Msg.ERROR, "shutting-down", True)
        )
        self.assertFalse(busy.closed)
        self.closeLost(idle)
        self.assertIsInstance(
            self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)), RefusedConnection
        )
        self.clock.advance(5)
        self.assertNoResult(done)
        busy.send(b"".join(rest))
        kind, fields = busy.last()
        self.assertIs(kind, Msg.CKSUM)
        busy.sendControl(Msg.COMMIT, crc=fields["crc"])
        self.assertIs(busy.last()[0], Msg.DONE)
        self.clock.advance(0.1)
        self.assertTrue(busy.closed)
        self.closeLost(busy)
        self.clock.advance(0.1)
        self.successResultOf(done)
        self.assertEqual(len(self.stored()), 1)

    def test_graceRunsOut(self):
        """
        An upload still under way when the grace period ends is aborted:
        its staging is removed and nothing is stored.
        """
        busy = Wire(self.factory).keyed()
        self.startUpload(busy)
        staging = os.path.join("data", "users", "alice", ".staging")
        self.assertEqual(len(os.listdir(staging)), 1)
        drain = Drain(self.factory, self.clock, grace=2)
        done = drain.run()
        self.clock.advance(1.9)
        self.assertFalse(busy.closed)
        self.clock.advance(0.2)
        self.assertEqual(drain.aborted, 1)
        self.assertTrue(busy.transport.disconnecting)
        self.closeLost(busy)
        self.clock.advance(0.1)
        self.successResultOf(done)
        self.assertEqual(self.stored(), [])
        self.assertEqual(os.listdir(staging), [])

    def test_serviceOrder(self):
        """
        L{ServerService} stops its listeners, then drains, then stops the
        rest.
        """
        events = []

        class Recorder:
            def __init__(self, name):
                self.name = name
                self.running = 0

            def setServiceParent(self, parent):
                parent.addService(self)

            def privilegedStartService(self):
                pass

            def startService(self):
                self.running = 1

            def stopService(self):
                events.append(f"stop {self.name}")
                self.running = 0

        top = ServerService(self.factory, self.clock, grace=5)
        Recorder("pools").setServiceParent(top)
        top.addListener(Recorder("listener"))
        busy = Wire(self.factory).keyed()
        self.startUpload(busy)
        top.startService()
        d = top.stopService()
        self.assertEqual(events, ["stop listener"])
        self.clock.advance(5.1)
        self.closeLost(busy)
        self.clock.advance(0.1)
        self.successResultOf(d)
        self.assertEqual(events[-1], "stop pools")


@pytest.mark.slow
class SigtermEndToEndTests(EndToEndCase):
    serverArgs = ("--shutdown-grace", "60")

    def test_uploadFinishesThenExits(self):
        """
        SIGTERM during an upload: the server stops accepting, the upload
        is committed, then the server ends as twistd ends on SIGTERM
        (killed by it once shut down: a clean stop for systemd); after a
        restart the snapshot is there and nothing half-made is.
        """
        self.makeBigSource()
        self.ok("register")
        client = self.spawnClient("backup", "src")
        self.waitForServerLog("backup of")
        self.server.process.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=120)
        self.assertEqual(client.returncode, 0, err)
        self.assertEqual(self.server.process.wait(60), -signal.SIGTERM)
        self.assertIn("Server Shut Down.", self.server.logText())
        self.assertIn("transfers under way get up to 60.0 s to finish", self.server.logText())
        self.server.start()
        self.assertIn("src", self.ok("list").stdout)
        staging = os.path.join(self.server.dataDir, "users", "alice", ".staging")
        self.assertEqual(os.listdir(staging) if os.path.isdir(staging) else [], [])


class ClientSideTests(TestCase):
    def test_shuttingDownExitCode(self):
        """
        The client reports a server that is stopping as unreachable
        (exit 4), with the server's words.
        """
        from backup_client.cli import _errorResult
        from backup_client.exitcodes import EXIT_UNREACHABLE
        from backup_proto.wire.errors import Code, ProtocolError

        error = ProtocolError(Code.SHUTTING_DOWN, "the server is shutting down; try again later")
        self.assertEqual(
            _errorResult(error),
            (
                EXIT_UNREACHABLE,
                "server closed the connection: the server is shutting down; try again later",
            ),
        )
