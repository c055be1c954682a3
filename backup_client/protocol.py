# -*- test-case-name: tests.test_session -*-
"""
The client side of the backup protocol.

L{BackupClientProtocol} turns each operation (register, login, key exchange,
list, backup, restore) into a method returning a L{Deferred}; the
commands (L{backup_client.commands}) chain them.  Errors from the server arrive as
L{ProtocolError}s with the server's code; a lost connection fails whatever
is waiting with L{ConnectionGone}.
"""

import base64

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import ConnectionDone
from twisted.protocols.basic import Int32StringReceiver
from twisted.python.failure import Failure

from backup_proto.archive.manifest import ManifestError, checkEntry
from backup_proto.wire import crypto
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import (
    MAX_FRAME,
    MAX_RESENDS,
    SNAPSHOT_FIELDS,
    Msg,
    checkSourceName,
    decodeFrame,
    encodeControl,
    parseControl,
)
from backup_proto.wire.transfer import (
    DEFAULT_SOCKET_BUFFER,
    RECEIVE_BUFFER,
    ChunkReceiver,
    ChunkSender,
    SinkFailed,
    TransferAborted,
    setSocketBuffer,
)


class ConnectionGone(Exception):
    """
    The connection closed while an answer was awaited; C{reason} is the
    L{twisted.python.failure.Failure} given to C{connectionLost}.
    """

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class VerificationFailed(Exception):
    """
    A transfer's checksum did not match after every resend.
    """


def _checkSnapshot(obj):
    if not isinstance(obj, dict):
        raise ProtocolError(Code.BAD_MESSAGE, "server sent a malformed snapshot")
    for name, kinds in SNAPSHOT_FIELDS.items():
        if name not in obj:
            raise ProtocolError(Code.BAD_MESSAGE, "server sent a malformed snapshot")
        value = obj[name]
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ProtocolError(Code.BAD_MESSAGE, "server sent a malformed snapshot")
    return obj


class IncrementalParent:
    """
    What an incremental backup tells the server of its parent: the
    snapshot's id, the digest of the manifest the client compared with,
    and the keep list's C{KEEP} pages.
    """

    def __init__(self, snapshotId, digest, pages):
        self.snapshotId = snapshotId
        self.digest = digest
        self.pages = pages

    @property
    def bytesSent(self):
        """
        The keep list's bytes in its messages' bodies.
        """
        return sum(len(page) for page in self.pages)


class BackupClientProtocol(Int32StringReceiver):
    """
    One connection to a backup server.

    @ivar _waiting: C{(kinds, Deferred)} for the next control message
        expected, or C{None}.
    @ivar _inbox: control messages that arrived before they were awaited.
    @ivar _receiver: the L{ChunkReceiver} of a restore under way.
    """

    MAX_LENGTH = MAX_FRAME

    def __init__(self, runIO, clock):
        """
        @param runIO: C{runIO(f, *a) -> Deferred}, running C{f} in a thread.
        @param clock: the reactor (for C{callLater}).
        """
        self._runIO = runIO
        self._clock = clock
        self._waiting = None
        self._inbox = []
        self._lost = None
        self._ciphers = None
        self._receiver = None
        self._lastTransfer = 0

    # ------------------------------------------------------------ plumbing

    def abort(self):
        """
        Abort the connection, unless it is already gone (a signal may come
        after a restore closed it, while the restore is placed).
        """
        if self._lost is None and self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason):
        self._lost = reason
        if self._receiver is not None:
            self._receiver.abort()
            self._receiver = None
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting[1].errback(ConnectionGone(reason))

    def lengthLimitExceeded(self, length):
        self._protocolError(ProtocolError(Code.BAD_FRAME, "server sent an oversized frame"))

    def _protocolError(self, error):
        waiting, self._waiting = self._waiting, None
        self.transport.abortConnection()
        if waiting is not None:
            waiting[1].errback(error)

    def stringReceived(self, frame):
        try:
            kind, body = decodeFrame(frame)
            if kind is Msg.DATA:
                self._dataReceived(body)
                return
            fields = parseControl(kind, body)
            if kind is Msg.ERROR:
                self._deliver(kind, ProtocolError(fields["code"], fields["message"][:500]))
                return
            self._deliver(kind, fields)
        except (ProtocolError, SinkFailed) as e:
            self._protocolError(e)

    def _deliver(self, kind, body):
        self._inbox.append((kind, body))
        self._flushInbox()

    def _flushInbox(self):
        while self._waiting is not None and self._inbox:
            kind, body = self._inbox.pop(0)
            kinds, d = self._waiting
            self._waiting = None
            if kind is Msg.ERROR:
                d.errback(body)
            elif kind not in kinds:
                self._protocolError(
                    ProtocolError(Code.BAD_STATE, f"server sent an unexpected {kind.name}")
                )
                d.errback(ProtocolError(Code.BAD_STATE, f"server sent an unexpected {kind.name}"))
            else:
                d.callback((kind, body))

    def _expect(self, *kinds):
        """
        @return: a L{Deferred} firing C{(kind, body)} with the next control
            message, which must be one of C{kinds}; an C{ERROR} fails it.
        """
        if self._lost is not None:
            raise ConnectionGone(self._lost)
        d = Deferred()
        self._waiting = (kinds, d)
        self._flushInbox()
        return d

    def _pendingError(self):
        """
        @return: the server's first ERROR not yet awaited, else a
            L{ConnectionGone} for the lost connection.
        """
        for kind, body in self._inbox:
            if kind is Msg.ERROR:
                return body
        return ConnectionGone(self._lost or Failure(ConnectionDone("transfer stopped")))

    async def _call(self, request, fields, *answers):
        self.sendString(encodeControl(request, **fields))
        return await self._expect(*answers)

    # ------------------------------------------------------------ accounts

    def register(self, user, password):
        """
        @return: a L{Deferred} firing when the account exists.
        """
        return ensureDeferred(
            self._call(Msg.REGISTER, {"user": user, "password": password}, Msg.OK)
        )

    def login(self, user, password):
        """
        @return: a L{Deferred} firing when the server accepted the login.
        """
        return ensureDeferred(self._call(Msg.LOGIN, {"user": user, "password": password}, Msg.OK))

    async def _exchangeKeys(self, privateKey):
        pem = crypto.publicKeyPEM(privateKey).decode("ascii")
        _, fields = await self._call(Msg.PUBKEY, {"key": pem}, Msg.SESSION_KEY)
        try:
            wrapped = base64.b64decode(fields["wrapped"], validate=True)
        except ValueError:
            raise ProtocolError(Code.BAD_KEY, "server sent a malformed session key") from None
        self._ciphers = crypto.SessionCiphers(crypto.unwrapSecret(privateKey, wrapped))

    def exchangeKeys(self, privateKey):
        """
        Send our public key and unwrap the session secret.

        @return: a L{Deferred} firing once the session is KEYED.
        """
        return ensureDeferred(self._exchangeKeys(privateKey))

    # ------------------------------------------------------------ listing

    async def _list(self):
        self.sendString(encodeControl(Msg.LIST))
        snapshots = []
        while True:
            _, fields = await self._expect(Msg.SNAPSHOTS)
            snapshots.extend(_checkSnapshot(s) for s in fields["snapshots"])
            if not fields["more"]:
                return snapshots

    def listSnapshots(self):
        """
        @return: a L{Deferred} with the user's snapshots (dicts), oldest
            first.
        """
        return ensureDeferred(self._list())

    # ------------------------------------------------------------ lifecycle

    async def _forget(self, ids, policy, source, dryRun):
        fields = {"ids": list(ids), "policy": policy, "source": source, "dry_run": dryRun}
        self.sendString(encodeControl(Msg.FORGET, **fields))
        decisions = []
        while True:
            _, answer = await self._expect(Msg.FORGOTTEN)
            decisions.extend(answer["snapshots"])
            if not answer["more"]:
                return decisions, answer["state"]

    def forget(self, ids=(), policy=None, source=None, dryRun=False):
        """
        Remove snapshots by id, or by a policy (its JSON object).

        @return: a L{Deferred} with C{(decisions, state)}: a dict per
            snapshot considered (C{id}, C{source}, C{created}, C{keep},
            C{reasons}) and where the removed ones went (C{trash},
            C{removing}, or C{None} for a dry run).
        """
        return ensureDeferred(self._forget(ids, policy, source, dryRun))

    def usage(self):
        """
        @return: a L{Deferred} with the account's C{USAGE_INFO} fields.
        """
        d = ensureDeferred(self._call(Msg.USAGE, {}, Msg.USAGE_INFO))
        return d.addCallback(lambda answer: answer[1])

    def changePassword(self, old, new):
        """
        @return: a L{Deferred} firing once the new password is set.
        """
        return ensureDeferred(self._call(Msg.PASSWD, {"old": old, "new": new}, Msg.OK))

    # ------------------------------------------------------------ backup

    async def _manifest(self, snapshotId, consume):
        self.sendString(encodeControl(Msg.MANIFEST, snapshot=snapshotId))
        digest = None
        while True:
            _, fields = await self._expect(Msg.ENTRIES)
            if digest is None:
                digest = fields["manifest"]
            elif fields["manifest"] != digest:
                raise ProtocolError(Code.BAD_MESSAGE, "server changed manifests midway")
            try:
                for obj in fields["entries"]:
                    consume(checkEntry(obj))
            except ManifestError as e:
                raise ProtocolError(Code.BAD_MESSAGE, f"server sent a bad manifest: {e}") from None
            if not fields["more"]:
                return digest

    def fetchManifest(self, snapshotId, consume):
        """
        Read a snapshot's manifest.

        @param consume: called with each entry (a checked tuple, see
            L{backup_proto.archive.manifest}), in the manifest's order.
        @return: a L{Deferred} with the manifest's digest; a snapshot that is
            not found (or has no manifest) fails it with C{not-found}.
        """
        return ensureDeferred(self._manifest(snapshotId, consume))

    async def _backup(self, openSource, size, name, kind, progress, parent):
        fields = {"name": name, "size": size, "kind": kind, "parent": None, "manifest": None}
        if parent is not None:
            fields.update(parent=parent.snapshotId, manifest=parent.digest)
        request = (Msg.BACKUP, fields)
        for attempt in range(1 + MAX_RESENDS):
            self.sendString(encodeControl(request[0], **request[1]))
            if attempt == 0 and parent is not None:
                # the keep list follows BACKUP at once, and only BACKUP
                for i, page in enumerate(parent.pages):
                    more = i + 1 < len(parent.pages)
                    self.sendString(encodeControl(Msg.KEEP, bits=page, more=more))
            _, ready = await self._expect(Msg.READY)
            sender = ChunkSender(
                openSource,
                size,
                self._ciphers.upload,
                ready["transfer"],
                self.sendString,
                self._runIO,
                progress,
            )
            try:
                ours = await sender.start(self.transport)
            except TransferAborted:
                # the server refused the upload midway (say, its disk is
                # full): its ERROR tells why
                raise self._pendingError() from None
            _, theirs = await self._expect(Msg.CKSUM)
            if theirs["crc"] == ours and theirs["size"] == size and not theirs["rejected"]:
                _, done = await self._call(Msg.COMMIT, {"crc": ours}, Msg.DONE)
                return _checkSnapshot(done["snapshot"])
            request = (Msg.RESEND, {})
        raise VerificationFailed(f"upload failed verification after {MAX_RESENDS} resends")

    def backup(self, openSource, size, name, kind, progress=None, parent=None):
        """
        Upload a zip, resending it (up to three times) until the server's
        C{cksum} matches ours, then ask the server to store it.

        @param openSource: called in a thread for each attempt; returns the
            zip to send, an object with C{read(n)} and C{close()}: an open
            file, or a L{backup_proto.archive.stream.ArchiveStream}.
        @param size: the zip's size in bytes.
        @param kind: C{"dir"} or C{"file"}: what the zip holds.
        @param progress: called with byte counts as chunks are sent.
        @param parent: the L{IncrementalParent} of an incremental backup,
            or C{None}.  If the server finds the parent changed, the
            L{Deferred} fails with a L{ProtocolError} of code
            C{parent-changed}, and the connection can go on.
        @return: a L{Deferred} with the new snapshot's catalog row.
        """
        return ensureDeferred(self._backup(openSource, size, name, kind, progress, parent))

    # ------------------------------------------------------------ restore

    def _dataReceived(self, body):
        if self._receiver is None:
            raise ProtocolError(Code.BAD_STATE, "server sent DATA outside a restore")
        if self._receiver.chunkReceived(body):
            receiver, self._receiver = self._receiver, None
            self._finished = receiver.finish()

    def _pauseInput(self):
        self.pauseProducing()

    def _resumeInput(self):
        self._clock.callLater(0, self._resumeIfConnected)

    def _resumeIfConnected(self):
        if self._lost is None and self.paused:
            self.resumeProducing()

    async def _restore(self, snapshotId, openSink, maxSize, progress, beginHook, include):
        # the socket reads RECEIVE_BUFFER at a time while the restore runs
        setSocketBuffer(self.transport, RECEIVE_BUFFER)
        try:
            return await self._restoreAttempts(
                snapshotId, openSink, maxSize, progress, beginHook, include
            )
        finally:
            setSocketBuffer(self.transport, DEFAULT_SOCKET_BUFFER)

    async def _restoreAttempts(self, snapshotId, openSink, maxSize, progress, beginHook, include):
        request = (Msg.RESTORE, {"snapshot": snapshotId, "include": list(include)})
        for attempt in range(1 + MAX_RESENDS):
            _, begin = await self._call(*request, Msg.RESTORE_BEGIN)
            checkSourceName(begin["name"])
            if begin["kind"] not in ("file", "dir"):
                raise ProtocolError(Code.BAD_MESSAGE, "server sent an unknown snapshot kind")
            if not 0 <= begin["size"] <= maxSize:
                raise ProtocolError(Code.TOO_LARGE, "server offered a restore over the size limit")
            if begin["transfer"] <= self._lastTransfer:
                raise ProtocolError(Code.BAD_MESSAGE, "server reused a transfer number")
            self._lastTransfer = begin["transfer"]
            if beginHook is not None:
                beginHook(begin)
            sink = openSink(begin, attempt)
            self._finished = None
            self._receiver = ChunkReceiver(
                sink,
                begin["size"],
                self._ciphers.download,
                begin["transfer"],
                self._runIO,
                self._pauseInput,
                self._resumeInput,
                progress,
            )
            _, theirs = await self._expect(Msg.CKSUM)
            if self._receiver is not None:
                raise ProtocolError(Code.BAD_UPLOAD, "restore stream ended early")
            crc, length, rejected = await self._finished
            if crc == theirs["crc"] and length == begin["size"] == theirs["size"] and not rejected:
                await self._call(Msg.COMMIT, {"crc": crc}, Msg.DONE)
                return begin, sink
            await self._runIO(sink.discard)
            request = (Msg.RESEND, {})
        raise VerificationFailed(f"restore failed verification after {MAX_RESENDS} resends")

    def restore(
        self, snapshotId, openSink, maxSize=1 << 42, progress=None, beginHook=None, include=()
    ):
        """
        Download a snapshot's zip into a sink, resending until the C{cksum}
        matches.

        @param snapshotId: an id, or C{None} for the newest snapshot.
        @param openSink: called with the C{RESTORE_BEGIN} fields and the
            attempt number (from 0); returns the sink for that attempt (see
            L{backup_proto.wire.transfer}), such as an
            L{backup_proto.archive.extract.ExtractSink} unpacking as it goes.
        @param beginHook: called with the C{RESTORE_BEGIN} fields of each
            attempt (the CLI sizes its progress bar with it).
        @param include: manifest paths to restore (with what is below them);
            empty for the whole snapshot.
        @return: a L{Deferred} with C{(beginFields, sink)}.
        """
        return ensureDeferred(
            self._restore(snapshotId, openSink, maxSize, progress, beginHook, include)
        )
