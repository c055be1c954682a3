"""
The server state machine over a L{StringTransport}: transitions, refusals,
frame limits and timeouts.
"""

import os
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from backup_proto.server.protocol import BackupServerProtocol, RefusedConnection
from backup_proto.server.session import TRANSITIONS, State
from backup_proto.wire.errors import Code
from backup_proto.wire.frames import MAX_FRAME, Msg
from tests.helpers import TestCase, makeFactory, serverTLSOptions
from tests.wire import Wire, control, frame


class StateMachineTests(TestCase):
    def setUp(self):
        super().setUp()
        self.factory = makeFactory(os.path.abspath("data"))

    def assertRefused(self, wire, code):
        kind, fields = wire.last()
        self.assertIs(kind, Msg.ERROR)
        self.assertEqual(fields["code"], code)
        self.assertTrue(fields["fatal"])
        self.assertTrue(wire.closed)
        return fields

    def test_happyTransitions(self):
        """
        REGISTER and LOGIN lead to AUTHED, PUBKEY to KEYED.
        """
        wire = Wire(self.factory)
        self.assertEqual(wire.register(), (Msg.OK, {"user": "alice"}))
        self.assertIs(wire.proto.state, State.UNAUTH)
        self.assertEqual(wire.login(), (Msg.OK, {"user": "alice"}))
        self.assertIs(wire.proto.state, State.AUTHED)
        wire.key()
        self.assertIs(wire.proto.state, State.KEYED)
        wire.sendControl(Msg.LIST)
        self.assertEqual(wire.last(), (Msg.SNAPSHOTS, {"snapshots": [], "more": False}))

    def test_wrongStateEverywhere(self):
        """
        Every message not allowed in a state gets a bad-state error and the
        connection is closed, in UNAUTH, AUTHED and KEYED.
        """
        allowed = {
            name: {kind for (state, kind) in TRANSITIONS if state.name == name}
            for name in ("UNAUTH", "AUTHED", "KEYED")
        }
        self.assertEqual(allowed["AUTHED"], {Msg.PUBKEY})
        for state, ok in allowed.items():
            for kind in Msg:
                if kind in ok:
                    continue
                wire = Wire(self.factory)
                if state != "UNAUTH":
                    wire.register(user="u" + str(len(self.factory.connections)))
                    wire.login(user="u" + str(len(self.factory.connections)))
                if state == "KEYED":
                    wire.key()
                wire.received()
                wire.send(frame(bytes((kind,)) + b"{}"))
                fields = self.assertRefused(wire, Code.BAD_STATE)
                self.assertIn(kind.name, fields["message"])

    def test_serverMessagesFromClient(self):
        """
        A client sending a server-only message (SESSION_KEY) is refused.
        """
        wire = Wire(self.factory)
        wire.sendControl(Msg.SESSION_KEY, wrapped="x")
        self.assertRefused(wire, Code.BAD_STATE)

    def test_oversizedFrame(self):
        """
        A length prefix over the maximum is refused before the body comes.
        """
        wire = Wire(self.factory)
        wire.send(struct.pack("!I", MAX_FRAME + 1))
        self.assertRefused(wire, Code.BAD_FRAME)

    def test_garbage(self):
        """
        Non-protocol bytes (here an HTTP request) are refused.
        """
        wire = Wire(self.factory)
        wire.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertRefused(wire, Code.BAD_FRAME)

    def test_unknownType(self):
        """
        An unknown message type is refused.
        """
        wire = Wire(self.factory)
        wire.send(frame(b"\x77{}"))
        self.assertRefused(wire, Code.BAD_FRAME)

    def test_malformedFields(self):
        """
        Wrong field types and missing fields are refused as bad-message.
        """
        for body in (b'{"user": 1, "password": "x"}', b'{"user": "a"}', b"[]", b"\xff"):
            wire = Wire(self.factory)
            wire.send(frame(bytes((Msg.LOGIN,)) + body))
            self.assertRefused(wire, Code.BAD_MESSAGE)

    def test_missingFieldEveryMessage(self):
        """
        In the state that accepts it, every client message without one of
        its fields is a fatal bad-message: C{RESTORE {}} is no longer
        served as "the newest".
        """
        Wire(self.factory).register("u2")
        for kind in (Msg.REGISTER, Msg.LOGIN, Msg.PUBKEY, Msg.BACKUP, Msg.RESTORE):
            wire = Wire(self.factory)
            if kind is Msg.PUBKEY:
                wire.login("u2")
            elif kind not in (Msg.REGISTER, Msg.LOGIN):
                wire.keyed("u2", register=False)
            wire.received()
            wire.send(frame(bytes((kind,)) + b"{}"))
            fields = self.assertRefused(wire, Code.BAD_MESSAGE)
            self.assertIn("lacks the field", fields["message"])
        wire = Wire(self.factory).keyed("u2", register=False)
        wire.received()
        wire.sendControl(Msg.BACKUP, name="docs", kind="dir", size=3, parent=None, manifest=None)
        wire.received()
        wire.send(frame(bytes((Msg.DATA,)) + b"x" * 19))
        wire.received()
        wire.send(frame(bytes((Msg.COMMIT,)) + b"{}"))
        self.assertRefused(wire, Code.BAD_MESSAGE)

    def test_framesAfterErrorIgnored(self):
        """
        Once a connection failed, later frames in the same read are not
        processed.
        """
        wire = Wire(self.factory)
        wire.send(frame(b"\x77") + control(Msg.REGISTER, user="bob", password="pw"))
        self.assertRefused(wire, Code.BAD_FRAME)
        self.assertEqual(wire.received(), [])
        self.assertIsNone(
            self.factory.accounts._db.runSync(
                lambda c: c.execute("SELECT 1 FROM users WHERE username='bob'").fetchone()
            )
        )

    def test_pipelinedFramesRunOnce(self):
        """
        LOGIN and PUBKEY in one segment are each handled exactly once, in
        order, although LOGIN pauses input while the password is checked.
        """
        Wire(self.factory).register()
        from backup_proto.wire import crypto
        from tests.helpers import clientKey

        wire = Wire(self.factory)
        wire.send(
            control(Msg.LOGIN, user="alice", password="pw")
            + control(Msg.PUBKEY, key=crypto.publicKeyPEM(clientKey()).decode())
        )
        kinds = [k for k, _ in wire.received()]
        self.assertEqual(kinds, [Msg.OK, Msg.SESSION_KEY])
        self.assertIs(wire.proto.state, State.KEYED)

    def test_threeFailedLogins(self):
        """
        Two failed logins leave the connection open; the third closes it.
        Unknown users and wrong passwords get the same message.
        """
        Wire(self.factory).register()
        wire = Wire(self.factory)
        kind, wrong = wire.login(password="nope")
        self.assertEqual(
            (kind, wrong["code"], wrong["fatal"]), (Msg.ERROR, Code.AUTH_FAILED, False)
        )
        kind, unknown = wire.login(user="nobody")
        self.assertEqual(wrong["message"], unknown["message"])
        self.assertFalse(wire.closed)
        kind, fields = wire.login(password="again")
        self.assertEqual(
            (kind, fields["code"], fields["fatal"]), (Msg.ERROR, Code.TOO_MANY_ATTEMPTS, True)
        )
        self.assertTrue(wire.closed)

    def test_badKey(self):
        """
        A weak key is refused and the connection closed.
        """
        from tests.test_crypto import _fakeRSA, _pem

        wire = Wire(self.factory)
        wire.register()
        wire.login()
        wire.sendControl(Msg.PUBKEY, key=_pem(_fakeRSA(1024)).decode())
        self.assertRefused(wire, Code.BAD_KEY)


class TimeoutTests(TestCase):
    def setUp(self):
        super().setUp()
        self.factory = makeFactory(os.path.abspath("data"), idleTimeout=60, loginTimeout=20)

    def test_idle(self):
        """
        A keyed connection that sends nothing for C{idleTimeout} seconds is
        told so and closed; it is aborted if it does not go away.
        """
        wire = Wire(self.factory).keyed()
        wire.received()
        self.factory.clock.advance(59)
        self.assertFalse(wire.closed)
        self.factory.clock.advance(1)
        kind, fields = wire.last()
        self.assertEqual(fields["code"], Code.TIMEOUT)
        self.assertTrue(wire.transport.disconnecting)
        self.factory.clock.advance(self.factory.abortTimeout)
        self.assertTrue(wire.transport.disconnected)

    def test_framesResetIdle(self):
        """
        Each complete frame resets the idle timer.
        """
        wire = Wire(self.factory).keyed()
        for _ in range(5):
            self.factory.clock.advance(50)
            wire.sendControl(Msg.LIST)
        self.assertFalse(wire.closed)

    def test_loginDeadline(self):
        """
        A connection that does not finish login and key exchange within
        C{loginTimeout} is closed, even if it keeps sending frames (a
        dripping client cannot hold it).
        """
        Wire(self.factory).register()
        wire = Wire(self.factory)
        for i in range(3):
            self.factory.clock.advance(6)
            self.assertEqual(wire.register(user=f"new{i}")[0], Msg.OK)
        self.factory.clock.advance(2)
        kind, fields = wire.last()
        self.assertEqual(fields["code"], Code.TIMEOUT)
        self.assertTrue(wire.closed)

    def test_partialFrameDoesNotReset(self):
        """
        Bytes that never complete a frame do not keep the connection alive.
        """
        wire = Wire(self.factory).keyed()
        wire.send(struct.pack("!I", 100))
        for _ in range(59):
            self.factory.clock.advance(1)
            wire.send(b"x")
        self.factory.clock.advance(1)
        self.assertTrue(wire.closed)


class ConnectionLimitTests(TestCase):
    def test_perPeer(self):
        """
        Connections over the per-address or total limit get a
        L{RefusedConnection} (never C{None}, which the TLS wrapper cannot
        take) and count toward nothing; others and freed slots are fine.
        """
        factory = makeFactory(os.path.abspath("data"), maxPerPeer=2, maxConnections=3)
        a, b = Wire(factory), Wire(factory)
        self.assertIsInstance(
            factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)), RefusedConnection
        )
        c = Wire(factory, host="10.0.0.9")
        self.assertIsInstance(
            factory.buildProtocol(IPv4Address("TCP", "10.0.0.8", 1)), RefusedConnection
        )
        self.assertEqual(
            (len(factory.connections), factory.perPeer, factory.refused),
            (3, {"127.0.0.1": 2, "10.0.0.9": 1}, 2),
        )
        a.proto.connectionLost(None)
        self.assertIsInstance(
            factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1)), BackupServerProtocol
        )
        del b, c

    def test_refusedUnderTLS(self):
        """
        Under TLS an over-cap connection is aborted as it is made, before
        the handshake: the client's hello and what follows reach no
        protocol, and nothing is logged as an error.
        """
        factory = makeFactory(os.path.abspath("data"), maxPerPeer=1)
        Wire(factory)
        tls = TLSMemoryBIOFactory(serverTLSOptions(), False, factory)
        proto = tls.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        transport = StringTransport()
        proto.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"\x16\x03\x01" + os.urandom(500))
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(factory.connections), 1)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_refusalsLoggedOncePerSecond(self):
        """
        A flood of refused connections logs one warning a second, which
        counts the refusals it stands for.
        """
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        factory = makeFactory(os.path.abspath("data"), maxPerPeer=1)
        Wire(factory)
        for _ in range(50):
            factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        factory.clock.advance(1)
        for _ in range(7):
            factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 2))
        warnings = [e for e in observer if "refusing" in e.get("log_format", "")]
        self.assertEqual([e["count"] for e in warnings], [1, 50])
