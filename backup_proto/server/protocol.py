# -*- test-case-name: tests.test_server -*-
"""
The server side of the backup protocol: a state machine per connection.

States (C{docs/protocol.rst}, "States")::

    UNAUTH --LOGIN ok--> AUTHED --PUBKEY--> KEYED
    KEYED --BACKUP--> RECEIVING --last DATA--> VERIFYING --COMMIT--> KEYED
                                  ^----------- RESEND ------'
    KEYED --RESTORE--> SENDING --last DATA--> CONFIRMING --COMMIT--> KEYED
                         ^----------- RESEND ------'

While thread work runs (hashing, unzipping, zipping, SQLite) the connection
is in C{BUSY} with its input paused; any message not allowed in the current
state is answered with an C{ERROR} and the connection is closed.
"""

import base64
import enum
import os

from twisted.internet.defer import succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.protocols.basic import Int32StringReceiver
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from backup_proto.wire import crypto
from backup_proto.server.accounts import AUTH_FAILED_TEXT
from backup_proto.archive.policy import ArchiveError, syncTree
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import (
    MAX_FRAME,
    MAX_RESENDS,
    Msg,
    checkSourceName,
    decodeFrame,
    encodeControl,
    parseControl,
)
from backup_proto.server.throttle import LoginThrottle
from backup_proto.wire.transfer import (
    DEFAULT_SOCKET_BUFFER, READ_AHEAD, READ_BATCH, SEND_BUFFER, ChunkReceiver, ChunkSender,
    SinkFailed, diskFull, setSocketBuffer,
)
from backup_proto.archive.extract import ExtractSink
from backup_proto.archive.flushahead import FlushAhead
from backup_proto.archive.spool import Spool
from backup_proto.archive.zipstream import ArchiveStream, planArchive

#: Snapshots per SNAPSHOTS frame.
LIST_PAGE = 25
#: Deflate streams a restore's plan keeps for sending (only when restores
#: are deflated; see L{backup_proto.archive.spool}), in unnamed files in the data
#: folder: small, as restores may run side by side and uploads need the
#: space.
RESTORE_SPOOL_LIMIT = 64 << 20


def storageError(error):
    """
    @return: the L{ProtocolError} for the client when storing its data
        failed here (an C{OSError}): L{Code.STORAGE_FULL} for a full disk
        or quota, else L{Code.INTERNAL}.
    """
    if diskFull(error):
        return ProtocolError(Code.STORAGE_FULL, "server storage full")
    return ProtocolError(Code.INTERNAL, "could not store the data")


class State(enum.Enum):
    UNAUTH = "UNAUTH"
    AUTHED = "AUTHED"
    KEYED = "KEYED"
    RECEIVING = "RECEIVING"
    VERIFYING = "VERIFYING"
    SENDING = "SENDING"
    CONFIRMING = "CONFIRMING"
    BUSY = "BUSY"
    CLOSED = "CLOSED"


class _Upload:
    """
    A backup under way: where it is staged and how many attempts it took.
    """

    def __init__(self, name, kind, size, staging):
        self.name = name
        self.kind = kind
        self.size = size
        self.staging = staging
        self.attempt = 0
        self.receiver = None
        self.result = None

    @property
    def treePath(self):
        return os.path.join(self.staging, f"tree-{self.attempt}")


class _Download:
    """
    A restore under way: the snapshot row and the plan of its zip.
    """

    def __init__(self, row, plan):
        self.row = row
        self.plan = plan
        self.attempt = 0
        self.sender = None
        self.crc = None


def _finishUpload(sink, name, kind):
    """
    Finish unpacking an upload and flush it to disk (runs in a thread).

    @return: the L{backup_proto.archive.policy.ArchiveIndex}.
    """
    index = sink.finish()
    if index.root != name or index.kind != kind:
        raise ArchiveError("archive does not hold the declared name and kind")
    syncTree(sink.dest)
    return index


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
    One client connection.

    @ivar state: the L{State}.
    @ivar username: the logged-in user, else C{None}.
    @ivar failures: failed logins and registrations on this connection.
    @ivar _ciphers: the session's L{crypto.SessionCiphers} once KEYED.
    @ivar _transfers: the last transfer number used in each direction.
    @ivar _upload: the L{_Upload} under way, if any.
    @ivar _download: the L{_Download} under way, if any.
    @ivar _jobs: thread jobs under way; staging is cleaned after them.
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
        self.state = State.UNAUTH
        self.username = None
        self.failures = 0
        self.peer = None
        self._ciphers = None
        self._transfers = {"up": 0, "down": 0}
        self._upload = None
        self._download = None
        self._jobs = 0
        self._readHolds = set()
        self._discarded = 0
        self._gate = _AnswerGate(self)
        self._gateOn = False
        self._loginDeadline = None
        self._connected = False
        self._handlers = {
            (State.UNAUTH, Msg.REGISTER): self._register,
            (State.UNAUTH, Msg.LOGIN): self._login,
            (State.AUTHED, Msg.PUBKEY): self._pubkey,
            (State.KEYED, Msg.LIST): self._list,
            (State.KEYED, Msg.BACKUP): self._backup,
            (State.KEYED, Msg.RESTORE): self._restore,
            (State.RECEIVING, Msg.DATA): self._data,
            (State.VERIFYING, Msg.COMMIT): self._commitUpload,
            (State.VERIFYING, Msg.RESEND): self._resendUpload,
            (State.CONFIRMING, Msg.COMMIT): self._commitDownload,
            (State.CONFIRMING, Msg.RESEND): self._resendDownload,
        }

    # ------------------------------------------------------------ plumbing

    def connectionMade(self):
        self._connected = True
        peer = self.transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.setTimeout(self.factory.idleTimeout)
        self._loginDeadline = self.callLater(self.factory.loginTimeout, self._loginExpired)
        self._registerGate()
        self.log.info("connection from {peer}", peer=self.peer)

    @property
    def _gone(self):
        """
        Whether the connection is closed or closing: a job that ends now
        has nobody to answer.
        """
        return not self._connected or self.state is State.CLOSED

    def connectionLost(self, reason):
        self._connected = False
        self.state = State.CLOSED
        self.setTimeout(None)
        if self._loginDeadline is not None and self._loginDeadline.active():
            self._loginDeadline.cancel()
        self._loginDeadline = None
        self._cleanupIfIdle()
        self.factory.connectionClosed(self)
        self.log.info("connection from {peer} closed", peer=self.peer)

    def _loginExpired(self):
        self._loginDeadline = None
        if self.state in (State.UNAUTH, State.AUTHED, State.BUSY) and self._ciphers is None:
            self._fail(ProtocolError(Code.TIMEOUT, "login took too long"))

    def timeoutConnection(self):
        self._fail(ProtocolError(Code.TIMEOUT, "connection idle for too long"))

    def lengthLimitExceeded(self, length):
        self._fail(ProtocolError(Code.BAD_FRAME, f"frame of {length} bytes is too large"))

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
        try:
            kind, body = decodeFrame(frame)
            handler = self._handlers.get((self.state, kind))
            if handler is None:
                raise ProtocolError(
                    Code.BAD_STATE, f"{kind.name} not allowed in state {self.state.name}"
                )
            handler(body if kind is Msg.DATA else parseControl(kind, body))
        except ProtocolError as e:
            self._fail(e)
        except Exception:
            self.log.failure("internal error handling a frame from {peer}", peer=self.peer)
            self._fail(ProtocolError(Code.INTERNAL, "internal server error"))

    def _send(self, kind, /, **fields):
        if self._connected:
            self.sendString(encodeControl(kind, **fields))

    def _error(self, error, fatal):
        self._send(Msg.ERROR, code=error.code, message=error.message, fatal=fatal)

    def _fail(self, error):
        """
        Send a fatal error and close; cleanup follows in connectionLost.
        """
        if self.state is State.CLOSED:
            return
        self.log.info(
            "closing connection from {peer} user={user}: {code} {reason}",
            peer=self.peer, user=self.username, code=error.code, reason=error.message,
        )
        self._error(error, True)
        self.state = State.CLOSED
        self.paused = True
        self._unprocessed = b""
        self.setTimeout(None)
        if self._upload is not None and self._upload.receiver is not None:
            self._upload.receiver.abort()
        if self._download is not None and self._download.sender is not None:
            self._download.sender.stop()
        if self._connected:
            # TLS sends its close only once no producer is registered
            self._unregisterGate()
            self.transport.loseConnection()
            self.callLater(self.factory.abortTimeout, self._abort)

    def _abort(self):
        if self._connected:
            self.transport.abortConnection()

    def _busy(self, d, then):
        """
        Run a job: pause input (state BUSY, no idle timeout) until C{d}
        fires, then call C{then(result)} and resume input on the next
        reactor turn (never inside the frame parser's loop).
        """
        self.state = State.BUSY
        self.paused = True
        self.setTimeout(None)
        self._jobs += 1

        def done(result):
            self._jobs -= 1
            if self._gone:
                self._cleanupIfIdle()
                return None
            self.setTimeout(self.factory.idleTimeout)
            try:
                then(result)
            except ProtocolError as e:
                self._fail(e)
            return None

        def failed(failure):
            self._jobs -= 1
            if self._gone:
                self._cleanupIfIdle()
                return None
            error = failure.value
            if isinstance(error, ArchiveError):
                error = ProtocolError(Code.BAD_ARCHIVE, f"archive refused: {error}")
            elif isinstance(error, SinkFailed):
                error = storageError(error.error)
            elif isinstance(error, OSError):
                error = storageError(error)
            elif not isinstance(error, ProtocolError):
                self.log.failure("internal error for {peer}", failure, peer=self.peer)
                error = ProtocolError(Code.INTERNAL, "internal server error")
            self._fail(error)
            return None

        d.addCallbacks(done, failed)

    def _resume(self, state):
        self.state = state
        self.callLater(0, self._resumeInput)

    def _resumeInput(self):
        if self._connected and self.state is not State.CLOSED and self.state is not State.BUSY:
            self._releaseReading("input")
            self.paused = False
            self.dataReceived(b"")

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

    def _cleanupIfIdle(self):
        """
        Remove staging data of an unfinished transfer once no thread job
        uses it (after the connection is gone).
        """
        if self._jobs or self._connected:
            return
        upload, self._upload = self._upload, None
        download, self._download = self._download, None
        if download is not None:
            download.plan.close()
        if upload is not None:
            d = upload.receiver.abort() if upload.receiver is not None else succeed(None)
            d.addCallback(lambda _: self._removeStaging(upload.staging))

    def _removeStaging(self, staging):
        return self.factory.runIO(self.factory.store.removeStaging, staging)

    # ------------------------------------------------------------ accounts

    def _accountFailed(self, failure):
        error = failure.value
        if not isinstance(error, ProtocolError):
            return failure
        if error.code == Code.BUSY:
            return failure
        self.failures += 1
        if self.failures >= self.factory.maxLoginFailures:
            raise ProtocolError(Code.TOO_MANY_ATTEMPTS, f"{error.message}; too many failed attempts")
        self._error(error, False)
        return None

    def _register(self, fields):
        user, password = fields["user"], fields["password"]
        d = self.factory.accounts.register(user, password)

        def registered(_):
            self.log.info("registered user={user} peer={peer}", user=user, peer=self.peer)
            self._send(Msg.OK, user=user)
            return True

        d.addCallbacks(registered, self._accountFailed)
        self._busy(d, lambda _: self._resume(State.UNAUTH))

    def _login(self, fields):
        user, password = fields["user"], fields["password"]
        factory = self.factory
        delay = factory.throttle.delayFor(user)
        d = deferLater(factory.clock, delay, factory.accounts.authenticate, user, password)

        def checked(ok):
            if not ok:
                factory.throttle.failed(user)
                self.log.info("failed login user={user!r} peer={peer} delay={delay}",
                              user=user, peer=self.peer, delay=delay)
                raise ProtocolError(Code.AUTH_FAILED, AUTH_FAILED_TEXT)
            factory.throttle.succeeded(user)
            return True

        d.addCallback(checked)
        d.addErrback(self._accountFailed)

        def then(ok):
            if ok:
                self.username = user
                self.log.info("login user={user} peer={peer}", user=user, peer=self.peer)
                self._send(Msg.OK, user=user)
                self._resume(State.AUTHED)
            else:
                self._resume(State.UNAUTH)

        self._busy(d, then)

    def _pubkey(self, fields):
        publicKey = crypto.loadClientPublicKey(fields["key"].encode("ascii", "replace"))
        secret = crypto.newSessionSecret()
        wrapped = crypto.wrapSecret(publicKey, secret)
        self._ciphers = crypto.SessionCiphers(secret)
        if self._loginDeadline is not None and self._loginDeadline.active():
            self._loginDeadline.cancel()
        self._loginDeadline = None
        self.state = State.KEYED
        self._send(Msg.SESSION_KEY, wrapped=base64.b64encode(wrapped).decode("ascii"))

    # ------------------------------------------------------------ listing

    def _list(self, fields):
        def send(rows):
            for start in range(0, max(len(rows), 1), LIST_PAGE):
                page = rows[start : start + LIST_PAGE]
                self._send(Msg.SNAPSHOTS, snapshots=page, more=start + LIST_PAGE < len(rows))
            self._resume(State.KEYED)

        self._busy(self.factory.store.list(self.username), send)

    # ------------------------------------------------------------ backup

    def _backup(self, fields):
        name = checkSourceName(fields["name"])
        size = fields["size"]
        if fields["kind"] not in ("file", "dir"):
            raise ProtocolError(Code.BAD_MESSAGE, "BACKUP kind must be 'file' or 'dir'")
        if size < 0:
            raise ProtocolError(Code.BAD_MESSAGE, "BACKUP size must not be negative")
        if size > self.factory.maxUploadSize:
            raise ProtocolError(
                Code.TOO_LARGE, f"upload of {size} bytes is over the server's limit"
            )
        d = self.factory.runIO(self.factory.store.newStaging, self.username)

        def staged(staging):
            self._upload = _Upload(name, fields["kind"], size, staging)
            self.log.info(
                "backup of {size} bytes user={user} peer={peer}",
                size=size, user=self.username, peer=self.peer,
            )
            self._beginUploadAttempt()

        self._busy(d, staged)

    def _nextTransfer(self, direction):
        self._transfers[direction] += 1
        return self._transfers[direction]

    def _beginUploadAttempt(self):
        upload = self._upload
        upload.attempt += 1
        transfer = self._nextTransfer("up")
        upload.receiver = ChunkReceiver(
            ExtractSink(upload.treePath, self.factory.limits,
                        self.factory.flushAhead.counter(upload.treePath)), upload.size,
            self._ciphers.upload, transfer,
            self.factory.runIO, self._pauseForDisk, self._resumeForDisk,
        )
        self._send(Msg.READY, transfer=transfer, attempt=upload.attempt)
        self._resume(State.RECEIVING)

    def _pauseForDisk(self):
        """
        The disk fell behind: stop parsing frames and stop reading the
        socket (L{_resumeInput} undoes both, whatever state comes next).
        """
        self.paused = True
        self._holdReading("input")

    def _resumeForDisk(self):
        if self._connected and self.state is State.RECEIVING:
            self.callLater(0, self._resumeInput)

    def _data(self, body):
        upload = self._upload
        try:
            last = upload.receiver.chunkReceived(body)
        except SinkFailed as e:
            raise storageError(e.error) from None
        if not last:
            return

        def verified(result):
            crc, length, rejected = result
            upload.result = result
            self._send(Msg.CKSUM, crc=crc, size=length, rejected=rejected)
            self._resume(State.VERIFYING)

        self._busy(upload.receiver.finish(), verified)

    def _commitUpload(self, fields):
        upload = self._upload
        crc, length, rejected = upload.result
        if rejected or fields["crc"] != crc or length != upload.size:
            raise ProtocolError(Code.BAD_UPLOAD, "cannot commit an upload that did not verify")
        sink = upload.receiver.sink
        factory = self.factory
        d = factory.runCPU(_finishUpload, sink, upload.name, upload.kind)

        def unpacked(index):
            meta = {"source": upload.name, "kind": upload.kind, "zip_size": upload.size,
                    "size": index.size, "files": index.files}
            return factory.store.commit(self.username, sink.dest, meta)

        d.addCallback(unpacked)

        def cleanup(result):
            self._removeStaging(upload.staging)
            if self._upload is upload:
                self._upload = None
            return result

        d.addBoth(cleanup)

        def done(row):
            self.log.info(
                "snapshot {id} stored user={user} files={files} bytes={size}",
                id=row["id"], user=self.username, files=row["files"], size=row["size"],
            )
            self._send(Msg.DONE, snapshot=row)
            self._resume(State.KEYED)

        self._busy(d, done)

    def _resendUpload(self, fields):
        upload = self._upload
        upload.receiver.abort()
        if upload.attempt > MAX_RESENDS:
            raise ProtocolError(Code.VERIFY_FAILED, "upload did not verify after all resends")
        self._beginUploadAttempt()

    # ------------------------------------------------------------ restore

    def _restore(self, fields):
        factory = self.factory
        d = factory.store.lookup(self.username, fields["snapshot"])
        prepared = {}

        def found(row):
            if row is None:
                raise ProtocolError(Code.NOT_FOUND, "no such snapshot")
            prepared["row"] = row
            path = factory.store.snapshotPath(self.username, row)
            spool = Spool(RESTORE_SPOOL_LIMIT, factory.store.dataDir)
            return factory.runCPU(planArchive, path, row["source"], factory.restoreCompression,
                                  spool)

        d.addCallback(found)

        def dropIfGone(plan):
            # the connection went while planning: _busy drops the plan unsent
            if self._gone:
                plan.close()
                return None
            return plan

        d.addCallback(dropIfGone)

        def notFound(failure):
            failure.trap(ProtocolError)
            if failure.value.code != Code.NOT_FOUND:
                return failure
            self._error(failure.value, False)
            return None

        d.addErrback(notFound)

        def ready(plan):
            if plan is None:
                self._resume(State.KEYED)
                return
            self._download = _Download(prepared["row"], plan)
            self._beginDownloadAttempt()

        self._busy(d, ready)

    def _beginDownloadAttempt(self):
        download = self._download
        download.attempt += 1
        transfer = self._nextTransfer("down")
        row = download.row
        self._send(
            Msg.RESTORE_BEGIN, snapshot=row["id"], name=row["source"], kind=row["kind"],
            size=download.plan.size, transfer=transfer, attempt=download.attempt,
        )
        self.state = State.SENDING
        self._unregisterGate()
        wide = self.factory.widenSendBuffer(self)
        download.sender = ChunkSender(
            lambda: ArchiveStream(download.plan, directReads=True), download.plan.size,
            self._ciphers.download, transfer,
            self.sendString, self.factory.runIO, progress=lambda n: self.resetTimeout(),
            readAhead=READ_AHEAD if wide else READ_BATCH,
        )
        d = download.sender.start(self.transport)

        def sent(crc):
            download.crc = crc
            if self._connected and self.state is State.SENDING:
                self._registerGate()
                self._send(Msg.CKSUM, crc=crc, size=download.plan.size, rejected=0)
                self._resume(State.CONFIRMING)

        def failed(failure):
            if self._connected:
                self._fail(ProtocolError(Code.INTERNAL, "could not send the snapshot"))

        d.addCallbacks(sent, failed)

    def _commitDownload(self, fields):
        if fields["crc"] != self._download.crc:
            raise ProtocolError(Code.BAD_MESSAGE, "COMMIT names a checksum that was not sent")
        download, self._download = self._download, None
        download.plan.close()
        self.factory.narrowSendBuffer(self)
        self.log.info(
            "restore of {id} done user={user}", id=download.row["id"], user=self.username
        )
        self._send(Msg.DONE, snapshot=download.row)
        self.state = State.KEYED

    def _resendDownload(self, fields):
        if self._download.attempt > MAX_RESENDS:
            raise ProtocolError(Code.VERIFY_FAILED, "restore did not verify after all resends")
        self._beginDownloadAttempt()


class BackupServerFactory(Factory):
    """
    Shared state of all connections: accounts, snapshots, pools, limits.

    @ivar connections: open connections.
    @ivar perPeer: open connections per peer address.
    @ivar refused: connections refused for being over the caps.
    @ivar throttle: the L{LoginThrottle} shared by all connections.
    @ivar flushAhead: the L{FlushAhead} that writes uploads to disk as they
        arrive.
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
    #: Restores whose socket may hold L{SEND_BUFFER} at once, and whose
    #: sender reads L{READ_AHEAD} chunks ahead; the others keep Twisted's
    #: 64 KiB and L{READ_BATCH}.  The wider buffer speeds a restore that has
    #: the machine to itself; under many restores it mostly holds memory,
    #: about 1.4 MiB a connection (measured here: 8 restores at once of a
    #: 64 MiB tree took 2.16-2.52 s however many were widened, and the
    #: server peaked at 93-99 MiB with none, 98-104 MiB with 4, 103-106
    #: MiB with all 8).
    wideSenders = 4

    def __init__(self, accounts, store, runCPU, runIO, clock, limits, **tunables):
        self.accounts = accounts
        self.store = store
        self.runCPU = runCPU
        self.runIO = runIO
        self.clock = clock
        self.limits = limits
        for name, value in tunables.items():
            if not hasattr(type(self), name):
                raise TypeError(f"unknown tunable {name}")
            setattr(self, name, value)
        self.connections = set()
        self.perPeer = {}
        self.refused = 0
        self._refusedLogged = 0
        self._lastRefusalLogged = float("-inf")
        self._wide = set()
        self.throttle = LoginThrottle(clock)
        self.flushAhead = FlushAhead()

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
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
                peer=host, why=why, count=self.refused - self._refusedLogged,
            )
            self._lastRefusalLogged = now
            self._refusedLogged = self.refused
        return RefusedConnection()

    def widenSendBuffer(self, proto):
        """
        Let a restoring connection's socket hold L{SEND_BUFFER}, if fewer
        than L{wideSenders} hold it now (until L{narrowSendBuffer}).

        @return: whether the connection holds it.
        """
        if proto not in self._wide and len(self._wide) < self.wideSenders:
            self._wide.add(proto)
            setSocketBuffer(proto.transport, SEND_BUFFER)
        return proto in self._wide

    def narrowSendBuffer(self, proto):
        """
        Give a connection's socket Twisted's limit again (its restore ended).
        """
        if proto in self._wide:
            self._wide.discard(proto)
            setSocketBuffer(proto.transport, DEFAULT_SOCKET_BUFFER)

    def connectionClosed(self, proto):
        self._wide.discard(proto)
        if proto in self.connections:
            self.connections.discard(proto)
            host = proto._peerKey
            self.perPeer[host] -= 1
            if not self.perPeer[host]:
                del self.perPeer[host]
