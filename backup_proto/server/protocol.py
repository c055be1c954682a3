# -*- test-case-name: tests.test_server,tests.test_bounds -*-
"""
The server's connection adapter and factory.

L{BackupServerProtocol} is thin: it frames bytes (L{Int32StringReceiver},
one schema table per message: L{backup_proto.wire.frames.SCHEMAS}), keeps
memory bounded while frames wait or after a fatal error, pauses and resumes
reading, and runs the connection's timers.  What a message means and where
it leads is the session's (L{backup_proto.server.session}); the factory
holds what all sessions share, every part of it given to it.
"""

import os

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from backup_proto.archive.flushahead import FlushAhead
from backup_proto.server.lifecycle import Lifecycle
from backup_proto.server.metrics import ServerMetrics
from backup_proto.server.resources import RestoreArchives, SendBuffers
from backup_proto.server.session import Session, State
from backup_proto.server.throttle import LoginThrottle
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import MAX_FRAME, Msg, decodeFrame, encodeControl, parseControl


@implementer(IPushProducer)
class _AnswerGate:
    """
    Registered on a connection's transport whenever no restore is being
    sent: when the client stops reading our answers and they pile up in
    the transport, we stop reading its requests until it catches up, so
    that a client that sends LIST after LIST and reads nothing cannot make
    the server hold its answers.
    """

    def __init__(self, proto):
        self._proto = proto

    def pauseProducing(self):
        self._proto._holdReading("answers")

    def resumeProducing(self):
        self._proto._releaseReading("answers")

    def stopProducing(self):
        pass


class RefusedConnection(Protocol):
    """
    What a connection over the server's caps gets instead of a session:
    closed as soon as it is made, before the TLS handshake, holding nothing
    and counted nowhere.  (A factory's C{buildProtocol} may not return
    C{None} under TLS: the TLS wrapper would wrap C{None} and fail at the
    first byte, leaving the connection open.)
    """

    def connectionMade(self):
        self.transport.abortConnection()


class BackupServerProtocol(Int32StringReceiver, TimeoutMixin):
    """
    One client connection: the adapter between its bytes and its
    L{Session} (this is the session's L{SessionPeer}).

    @ivar session: the L{Session}.
    @ivar peer: the client's address, for the log.
    @ivar _readHolds: why the socket is not being read (see
        L{_holdReading}); empty while it is.
    @ivar _discarded: bytes dropped since a fatal error.
    @ivar _gate: the L{_AnswerGate}, registered on the transport between
        restores.
    """

    MAX_LENGTH = MAX_FRAME
    #: Bytes read and dropped after a fatal error before reading stops:
    #: enough to see an honest client close (with its chunks in flight),
    #: never enough for a peer that keeps sending to cost anything.
    discardLimit = 1 << 20
    log = Logger()

    def __init__(self, factory):
        self.factory = factory
        self.MAX_LENGTH = factory.maxFrame
        self.callLater = factory.clock.callLater
        self.peer = None
        self.session = Session(factory, self)
        self._readHolds = set()
        self._discarded = 0
        self._gate = _AnswerGate(self)
        self._gateOn = False
        self._loginDeadline = None
        self._connected = False

    @property
    def state(self):
        return self.session.state

    # ------------------------------------------------------------ connection

    def connectionMade(self):
        self._connected = True
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.setTimeout(self.factory.idleTimeout)
        self._loginDeadline = self.callLater(self.factory.loginTimeout, self._loginExpired)
        self._registerGate()
        self.log.info("connection from {peer}", peer=self.peer)

    def connectionLost(self, reason):
        self._connected = False
        self.setTimeout(None)
        self._cancelLoginDeadline()
        self.session.connectionLost()
        self.factory.connectionClosed(self)
        self.log.info("connection from {peer} closed", peer=self.peer)

    def _loginExpired(self):
        self._loginDeadline = None
        if self.session.ciphers is None:
            self.session.fail(ProtocolError(Code.TIMEOUT, "login took too long"))

    def timeoutConnection(self):
        self.session.fail(ProtocolError(Code.TIMEOUT, "connection idle for too long"))

    def lengthLimitExceeded(self, length):
        self.session.fail(ProtocolError(Code.BAD_FRAME, f"frame of {length} bytes is too large"))

    # ------------------------------------------------------------ input

    def dataReceived(self, data):
        """
        Parse frames as L{Int32StringReceiver} does, without letting bytes
        pile up: after a fatal error what arrives is dropped (and the
        socket is no longer read past L{discardLimit}); while frames wait
        (thread work, a slow disk) the socket is not read once more than a
        frame's worth is buffered.
        """
        if self.state is State.CLOSED:
            self._discard(len(data))
            return
        super().dataReceived(data)
        if self.state is State.CLOSED:
            self._unprocessed = b""
        elif self.paused and len(self._unprocessed) > self.MAX_LENGTH:
            self._holdReading("input")

    def _discard(self, length):
        self._discarded += length
        if self._discarded > self.discardLimit:
            self._holdReading("closed")

    def _holdReading(self, reason):
        """
        Stop reading the socket until every reason given is released:
        C{"input"} (frames wait for us: L{_resumeInput} releases it),
        C{"answers"} (the client does not read ours: L{_AnswerGate}),
        C{"closed"} (after a fatal error: for good).
        """
        if not self._readHolds and self._connected:
            self.transport.pauseProducing()
        self._readHolds.add(reason)

    def _releaseReading(self, reason):
        if reason in self._readHolds:
            self._readHolds.discard(reason)
            if not self._readHolds and self._connected:
                self.transport.resumeProducing()

    def stringReceived(self, frame):
        if self.state is State.CLOSED:
            return
        self.resetTimeout()
        session = self.session
        try:
            kind, body = decodeFrame(frame)
            if kind is not Msg.DATA:
                # out of place is bad-state, whatever the body holds
                session.check(kind)
            session.receive(kind, body if kind is Msg.DATA else parseControl(kind, body))
        except ProtocolError as e:
            session.fail(e)
        except Exception:
            session.internalError("internal error handling a frame from {peer}")

    def _resumeInput(self):
        if self._connected and self.state is not State.CLOSED and self.state is not State.BUSY:
            self._releaseReading("input")
            self.paused = False
            self.dataReceived(b"")

    # ------------------------------------------------------------ the peer

    def send(self, kind, /, **fields):
        if self._connected:
            self.sendString(encodeControl(kind, **fields))

    def sendFrame(self, frame):
        self.sendString(frame)

    def close(self, error):
        """
        Send a fatal error and close; the session is closed already.
        """
        self.send(Msg.ERROR, code=error.code, message=error.message, fatal=True)
        self.paused = True
        self._unprocessed = b""
        self.setTimeout(None)
        if self._connected:
            # TLS sends its close only once no producer is registered
            self._unregisterGate()
            self.transport.loseConnection()
            self.callLater(self.factory.abortTimeout, self._abort)

    def _abort(self):
        if self._connected:
            self.transport.abortConnection()

    def pauseInput(self):
        self.paused = True

    def holdInput(self):
        """
        The disk fell behind: stop parsing frames and stop reading the
        socket (L{_resumeInput} undoes both, whatever state comes next).
        """
        self.paused = True
        self._holdReading("input")

    def resumeInput(self):
        self.callLater(0, self._resumeInput)

    def idle(self, seconds):
        self.setTimeout(seconds)

    def touch(self):
        self.resetTimeout()

    def loggedIn(self):
        self._cancelLoginDeadline()

    def _cancelLoginDeadline(self):
        if self._loginDeadline is not None and self._loginDeadline.active():
            self._loginDeadline.cancel()
        self._loginDeadline = None

    def startSending(self, sender):
        self._unregisterGate()
        return sender.start(self.transport)

    def doneSending(self):
        self._registerGate()

    def widenSendBuffer(self):
        return self.factory.sendBuffers.widen(self, self.transport)

    def narrowSendBuffer(self):
        self.factory.sendBuffers.narrow(self, self.transport)

    def _registerGate(self):
        if self._connected and self.state is not State.CLOSED and not self._gateOn:
            self._gateOn = True
            self.transport.registerProducer(self._gate, True)

    def _unregisterGate(self):
        """
        Take the gate off the transport (a restore's sender takes over the
        answers' flow, or the connection closes): what it held is released.
        """
        if self._gateOn:
            self._gateOn = False
            self.transport.unregisterProducer()
            self._releaseReading("answers")


class BackupServerFactory(Factory):
    """
    Shared state of all connections: accounts, snapshots, pools, limits.

    @ivar connections: open connections.
    @ivar perPeer: open connections per peer address.
    @ivar refused: connections refused for being over the caps.
    """

    idleTimeout = 120
    loginTimeout = 30
    abortTimeout = 15
    maxLoginFailures = 3
    maxConnections = 2000
    maxPerPeer = 100
    maxUploadSize = 1 << 40
    restoreCompression = "store"
    maxFrame = MAX_FRAME
    #: How a kept file is linked from an incremental's parent (tests make
    #: it refuse, as a file system without links would).
    linkFile = staticmethod(os.link)

    def __init__(
        self,
        accounts,
        store,
        runCPU,
        runIO,
        clock,
        limits,
        *,
        throttle=None,
        flushAhead=None,
        restores=None,
        sendBuffers=None,
        lifecycle=None,
        metrics=None,
        **tunables,
    ):
        """
        @param accounts: the L{backup_proto.server.accounts.AccountStore}.
        @param store: the L{backup_proto.server.storage.SnapshotStore}.
        @param runCPU: C{runCPU(f, *args) -> Deferred}: C{f} in a CPU thread.
        @param runIO: C{runIO(f, *args) -> Deferred}: C{f} in an I/O thread.
        @param clock: the L{IReactorTime} of every timer.
        @param limits: the L{backup_proto.archive.policy.Limits} of uploads.
        @param throttle: the L{LoginThrottle} (default: a new one on C{clock}).
        @param flushAhead: the L{FlushAhead} that writes uploads to disk as
            they arrive (default: a new one, started and stopped by the
            caller's service).
        @param restores: the L{RestoreArchives} (default: spooled in
            C{store.dataDir}).
        @param sendBuffers: the L{SendBuffers} policy (default: 4 wide).
        @param lifecycle: the L{Lifecycle} of snapshots and quotas
            (default: one on C{store}, without a trash).
        @param metrics: the L{ServerMetrics} its sessions count events in
            (default: new ones).
        @param tunables: class attributes to override (C{idleTimeout}...).
        """
        self.accounts = accounts
        self.store = store
        self.runCPU = runCPU
        self.runIO = runIO
        self.clock = clock
        self.limits = limits
        self.throttle = throttle if throttle is not None else LoginThrottle(clock)
        self.flushAhead = flushAhead if flushAhead is not None else FlushAhead()
        self.restores = restores if restores is not None else RestoreArchives(store.dataDir)
        self.sendBuffers = sendBuffers if sendBuffers is not None else SendBuffers()
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle(store, runIO, clock)
        self.metrics = metrics if metrics is not None else ServerMetrics()
        for name, value in tunables.items():
            if not hasattr(type(self), name):
                raise TypeError(f"unknown tunable {name}")
            setattr(self, name, value)
        self.connections = set()
        self.perPeer = {}
        self.draining = False  # see backup_proto.server.drain
        self.refused = 0
        self._refusedLogged = 0
        self._lastRefusalLogged = float("-inf")

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if self.draining:
            return RefusedConnection()
        if len(self.connections) >= self.maxConnections:
            return self._refuse(host, "too many connections")
        if self.perPeer.get(host, 0) >= self.maxPerPeer:
            return self._refuse(host, "too many from this peer")
        proto = BackupServerProtocol(self)
        proto._peerKey = host
        self.connections.add(proto)
        self.perPeer[host] = self.perPeer.get(host, 0) + 1
        return proto

    def _refuse(self, host, why):
        """
        @return: a L{RefusedConnection}, after a warning in the log (one a
            second at most, with a count of those not logged: a flood of
            connections must not become a flood of log lines).
        """
        self.refused += 1
        now = self.clock.seconds()
        if now - self._lastRefusalLogged >= 1.0:
            BackupServerProtocol.log.warn(
                "refusing {peer}: {why} ({count} refused since the last such warning)",
                peer=host,
                why=why,
                count=self.refused - self._refusedLogged,
            )
            self._lastRefusalLogged = now
            self._refusedLogged = self.refused
        return RefusedConnection()

    def connectionClosed(self, proto):
        self.sendBuffers.release(proto)
        if proto in self.connections:
            self.connections.discard(proto)
            host = proto._peerKey
            self.perPeer[host] -= 1
            if not self.perPeer[host]:
                del self.perPeer[host]
