"""
The server's session state machine on its own, with no transport: its
table against docs/protocol.rst, and its answers through a recording peer.
"""

import os
import re

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from backup_proto.server.session import TRANSITIONS, Event, Session, State, Transition
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import Msg
from tests.helpers import TestCase, clientKey, makeFactory

PROTOCOL_RST = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "protocol.rst")


def documentedTransitions():
    """
    @return: C{{(state, input): {next states}}} from the table of
        docs/protocol.rst's "States" section.
    """
    text = open(PROTOCOL_RST, encoding="utf-8").read()
    section = text[text.index("States\n------\n") :]
    rules = [m.start() for m in re.finditer(r"^=+ =+.*$", section, re.M)]
    body = section[section.index("\n", rules[1]) + 1 : rules[2]]
    rows = {}
    for line in body.splitlines():
        if not line or line.startswith(" "):
            continue  # a continuation of the row above
        state, kind, rest = line.split(None, 2)
        targets = re.match(r"([A-Z]+(?:, [A-Z]+)*)", rest).group(1)
        key = (State[state], Event.SENT if kind == "*sent*" else Msg[kind])
        rows[key] = {State[name] for name in targets.split(", ")}
    return rows


class RecordingPeer:
    """
    A L{backup_proto.server.session.SessionPeer} that records what the
    session asks of it.
    """

    peer = "peer.test"

    def __init__(self):
        self.sent = []
        self.calls = []

    def send(self, kind, /, **fields):
        self.sent.append((kind, fields))

    def sendFrame(self, frame):
        self.calls.append(("frame", len(frame)))

    def close(self, error):
        self.calls.append(("close", error.code))

    def __getattr__(self, name):
        if name in (
            "pauseInput",
            "holdInput",
            "resumeInput",
            "idle",
            "touch",
            "loggedIn",
            "doneSending",
            "narrowSendBuffer",
        ):
            return lambda *args: self.calls.append((name,) + args)
        raise AttributeError(name)


class TableTests(TestCase):
    def test_matchesProtocolDoc(self):
        """
        L{TRANSITIONS} and docs/protocol.rst's States table name the same
        inputs in the same states, leading to the same states.
        """
        documented = documentedTransitions()
        self.assertGreater(len(documented), 10)
        self.assertEqual({key: set(row.targets) for key, row in TRANSITIONS.items()}, documented)

    def test_everyHandlerExists(self):
        for row in TRANSITIONS.values():
            self.assertTrue(callable(getattr(Session, row.handler)), row.handler)


class SessionTests(TestCase):
    def setUp(self):
        super().setUp()
        self.factory = makeFactory(os.path.abspath("data"))
        self.peer = RecordingPeer()
        self.session = Session(self.factory, self.peer)

    def test_loginAndKey(self):
        """
        Through the peer alone: REGISTER answers OK and stays UNAUTH, LOGIN
        leads to AUTHED, PUBKEY to KEYED with the login deadline dropped;
        each thread job pauses input and resumes it (on the next turn: the
        peer's C{resumeInput}).
        """
        session = self.session
        session.receive(Msg.REGISTER, {"user": "alice", "password": "pw"})
        self.assertEqual(self.peer.sent, [(Msg.OK, {"user": "alice"})])
        self.assertIs(session.state, State.UNAUTH)
        self.assertEqual(
            [c[0] for c in self.peer.calls], ["pauseInput", "idle", "idle", "resumeInput"]
        )
        session.receive(Msg.LOGIN, {"user": "alice", "password": "pw"})
        self.factory.clock.advance(0)
        self.assertIs(session.state, State.AUTHED)
        self.assertEqual(session.username, "alice")
        pem = clientKey().public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        session.receive(Msg.PUBKEY, {"key": pem.decode("ascii")})
        self.assertIs(session.state, State.KEYED)
        self.assertIs(self.peer.sent[-1][0], Msg.SESSION_KEY)
        self.assertIn(("loggedIn",), self.peer.calls)

    def test_badState(self):
        """
        Every message outside the table of the current state is refused
        with bad-state, before any handler runs.
        """
        for kind in Msg:
            if (State.UNAUTH, kind) in TRANSITIONS:
                continue
            error = self.assertRaises(ProtocolError, self.session.receive, kind, {})
            self.assertEqual(error.code, Code.BAD_STATE)
        self.assertEqual(self.peer.sent, [])

    def test_wrongLoginKeepsUnauth(self):
        session = self.session
        session.receive(Msg.LOGIN, {"user": "nobody", "password": "pw"})
        self.factory.clock.advance(0)
        self.assertIs(session.state, State.UNAUTH)
        self.assertEqual(self.peer.sent[-1][1]["code"], Code.AUTH_FAILED)

    def test_undeclaredTargetIsABug(self):
        """
        A handler that moves to a state its row does not name is a server
        bug: logged, and the session fails with internal.
        """
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        key = (State.UNAUTH, Msg.REGISTER)
        original = TRANSITIONS[key]
        TRANSITIONS[key] = Transition(original.handler, frozenset({State.KEYED}))
        self.addCleanup(TRANSITIONS.__setitem__, key, original)
        self.session.receive(Msg.REGISTER, {"user": "alice", "password": "pw"})
        self.assertIs(self.session.state, State.CLOSED)
        self.assertIn(("close", Code.INTERNAL), self.peer.calls)
        self.assertTrue([e for e in observer if "log_failure" in e])
        self.flushLoggedErrors(RuntimeError)

    def test_failClosesOnce(self):
        """
        L{Session.fail} closes through the peer once; later failures (a
        timer, a job ending) do nothing.
        """
        self.session.fail(ProtocolError(Code.TIMEOUT, "idle"))
        self.session.fail(ProtocolError(Code.INTERNAL, "again"))
        self.assertEqual([c for c in self.peer.calls if c[0] == "close"], [("close", Code.TIMEOUT)])
