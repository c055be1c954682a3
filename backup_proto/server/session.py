# -*- test-case-name: tests.test_server,tests.test_session,tests.test_transfer -*-
"""
The server's session: the state machine of one client connection, without
a transport.

It is fed parsed messages (L{Session.receive}) by the connection adapter
(L{backup_proto.server.protocol.BackupServerProtocol}) and answers through
a L{SessionPeer}; where each message is allowed and the states it may lead
to are one table, L{TRANSITIONS}, the same as C{docs/protocol.rst}'s
"States" (a test compares them).  A handler that tries to move to a state
its row does not name is a server bug.

While thread work runs (hashing, unzipping, zipping, SQLite) the session is
in C{BUSY} with its input paused.
"""

import base64
import dataclasses
import enum
import os
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.task import deferLater
from twisted.logger import Logger

from backup_proto.archive.manifest import KeepListDecoder, ManifestError
from backup_proto.server.accounts import AUTH_FAILED_TEXT
from backup_proto.server.compose import ParentChanged
from backup_proto.server.jobs import Parent, RestoreJob, UploadJob
from backup_proto.server.resources import clientError
from backup_proto.server.storage import ManifestPages
from backup_proto.wire import crypto
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import Msg, checkSourceName
from backup_proto.wire.policy import KeepPolicy
from backup_proto.wire.transfer import FrameSender

#: Snapshots per SNAPSHOTS frame.
LIST_PAGE = 25


class State(enum.Enum):
    UNAUTH = "UNAUTH"
    AUTHED = "AUTHED"
    KEYED = "KEYED"
    KEEPING = "KEEPING"
    RECEIVING = "RECEIVING"
    VERIFYING = "VERIFYING"
    SENDING = "SENDING"
    CONFIRMING = "CONFIRMING"
    BUSY = "BUSY"
    CLOSED = "CLOSED"


class Event(enum.Enum):
    """
    Inputs of the state machine that are not messages from the client.
    """

    SENT = "SENT"  # a restore's last DATA was written


@dataclass(frozen=True)
class Transition:
    """
    A row of L{TRANSITIONS}: the method that handles the input, and the
    states it may lead to (after C{BUSY}, if it runs thread work).
    """

    handler: str
    targets: frozenset


def _row(handler, *targets):
    return Transition(handler, frozenset(targets))


#: C{(state, input) -> Transition}: every input allowed, by state.  Any
#: other message is C{bad-state}.  C{docs/protocol.rst} lists the same rows.
TRANSITIONS = {
    (State.UNAUTH, Msg.REGISTER): _row("_register", State.UNAUTH),
    (State.UNAUTH, Msg.LOGIN): _row("_login", State.AUTHED, State.UNAUTH),
    (State.AUTHED, Msg.PUBKEY): _row("_pubkey", State.KEYED),
    (State.KEYED, Msg.LIST): _row("_list", State.KEYED),
    (State.KEYED, Msg.MANIFEST): _row("_manifest", State.KEYED),
    (State.KEYED, Msg.FORGET): _row("_forget", State.KEYED),
    (State.KEYED, Msg.USAGE): _row("_usage", State.KEYED),
    (State.KEYED, Msg.PASSWD): _row("_passwd", State.KEYED),
    (State.KEYED, Msg.BACKUP): _row("_backup", State.RECEIVING, State.KEEPING),
    (State.KEEPING, Msg.KEEP): _row("_keep", State.KEEPING, State.RECEIVING, State.KEYED),
    (State.KEYED, Msg.RESTORE): _row("_restore", State.SENDING, State.KEYED),
    (State.RECEIVING, Msg.DATA): _row("_data", State.RECEIVING, State.VERIFYING),
    (State.VERIFYING, Msg.RESEND): _row("_resendUpload", State.RECEIVING),
    (State.VERIFYING, Msg.COMMIT): _row("_commitUpload", State.KEYED),
    (State.SENDING, Event.SENT): _row("_sent", State.CONFIRMING),
    (State.CONFIRMING, Msg.RESEND): _row("_resendRestore", State.SENDING),
    (State.CONFIRMING, Msg.COMMIT): _row("_commitRestore", State.KEYED),
}


class SessionPeer(Protocol):
    """
    What a L{Session} needs of its connection (the adapter implements it).
    """

    peer: str

    def send(self, kind, /, **fields):
        """Send a control message."""

    def sendFrame(self, frame):
        """Send one frame body (a sealed DATA chunk)."""

    def close(self, error):
        """Send C{error} as fatal, and close the connection."""

    def pauseInput(self):
        """Handle no more frames until L{resumeInput}."""

    def holdInput(self):
        """Stop handling frames and reading the socket until L{resumeInput}."""

    def resumeInput(self):
        """Handle frames again, from the next reactor turn."""

    def idle(self, seconds):
        """Close the connection after C{seconds} without input (C{None}: never)."""

    def touch(self):
        """Restart the idle timer: the connection is in use."""

    def loggedIn(self):
        """The login and key exchange are done: no login deadline any more."""

    def startSending(self, sender):
        """Register C{sender} as the producer of the answers and start it."""

    def doneSending(self):
        """The sender is done: answers flow as before."""

    def widenSendBuffer(self):
        """@return: how many chunks a restore's sender reads ahead."""

    def narrowSendBuffer(self):
        """The restore ended: give the wider socket buffer back."""


class Session:
    """
    One client's session.

    @ivar state: the L{State}.
    @ivar username: the logged-in user, else C{None}.
    @ivar failures: failed logins and registrations in this session.
    @ivar ciphers: the session's L{crypto.SessionCiphers} once KEYED.
    @ivar upload: the L{UploadJob} under way, if any.
    @ivar keeping: the L{_Keeping} of an incremental backup whose keep list
        is arriving.
    @ivar restore: the L{RestoreJob} under way, if any.
    @ivar uploadHolds: the L{_UploadHolds} of the upload under way: its
        quota reservation and its parent's pin.
    @ivar restorePin: the pin token of the snapshot being restored.
    @ivar _services: what all sessions share (the factory): C{accounts},
        C{store}, C{throttle}, C{flushAhead}, C{restores}, C{limits},
        C{clock}, C{runCPU}, C{runIO} and the tunables.
    @ivar _transfers: the last transfer number used in each direction.
    @ivar _jobs: thread jobs under way; staging is cleaned after them.
    @ivar _row: the L{Transition} under way.
    """

    log = Logger()

    def __init__(self, services, peer):
        self._services = services
        self._peer = peer
        self.state = State.UNAUTH
        self.username = None
        self.failures = 0
        self.ciphers = None
        self.upload = None
        self.keeping = None
        self.manifestSender = None
        self.restore = None
        self.uploadHolds = None
        self.restorePin = None
        self._connected = True
        self._transfers = {"up": 0, "down": 0}
        # "backup" or "restore", from its request to its end (metrics, drain)
        self.transfer = None
        self._jobs = 0
        self._row = None

    # ------------------------------------------------------------ machine

    @property
    def gone(self):
        """
        Whether the connection is closed or closing: a job that ends now
        has nobody to answer.
        """
        return not self._connected or self.state is State.CLOSED

    def check(self, kind):
        """
        @raise ProtocolError: if message C{kind} is not allowed now.
        @return: its row of L{TRANSITIONS}.
        """
        row = TRANSITIONS.get((self.state, kind))
        if row is None:
            raise ProtocolError(
                Code.BAD_STATE, f"{kind.name} not allowed in state {self.state.name}"
            )
        return row

    def receive(self, kind, fields):
        """
        Handle one message from the client: C{fields} is its parsed body
        (the raw chunk for DATA).  A L{ProtocolError} it raises is fatal.
        """
        self._input(kind, fields)

    def _input(self, kind, argument):
        row = self._row = self.check(kind)
        getattr(self, row.handler)(argument)

    def _enter(self, state):
        """
        Move to C{state}, which the transition under way must name.
        """
        if state not in self._row.targets:
            raise RuntimeError(f"{self._row.handler} may not lead to {state.name}")
        self.state = state

    def fail(self, error):
        """
        Send a fatal error and close; cleanup follows in L{connectionLost}.
        """
        if self.state is State.CLOSED:
            return
        self.log.info(
            "closing connection from {peer} user={user}: {code} {reason}",
            peer=self._peer.peer,
            user=self.username,
            code=error.code,
            reason=error.message,
        )
        self.state = State.CLOSED
        self._ended(error.code)
        if self.upload is not None:
            self.upload.abort()
        if self.restore is not None:
            self.restore.stop()
        if self.manifestSender is not None:
            self.manifestSender.stop()
        self._peer.close(error)

    def internalError(self, why, failure=None):
        """
        Log a server bug and fail with L{Code.INTERNAL}.
        """
        self.log.failure(why, failure, peer=self._peer.peer)
        self.fail(ProtocolError(Code.INTERNAL, "internal server error"))

    def connectionLost(self):
        self._connected = False
        self.state = State.CLOSED
        self._ended("aborted")
        self._cleanupIfIdle()

    def _ended(self, outcome):
        """
        Count the backup or restore under way, if any, as ended so.
        """
        if self.transfer is not None:
            self._services.metrics.ended(self.transfer, outcome)
            self.transfer = None

    def _send(self, kind, /, **fields):
        if self._connected:
            self._peer.send(kind, **fields)

    def _error(self, error, fatal):
        self._send(Msg.ERROR, code=error.code, message=error.message, fatal=fatal)

    def _busy(self, d, then):
        """
        Run a job: pause input (state BUSY, no idle timeout) until C{d}
        fires, then call C{then(result)} and resume input on the next
        reactor turn (never inside the frame parser's loop).
        """
        self.state = State.BUSY
        self._peer.pauseInput()
        self._peer.idle(None)
        self._jobs += 1

        def done(result):
            self._jobs -= 1
            if self.gone:
                self._cleanupIfIdle()
                return None
            self._peer.idle(self._services.idleTimeout)
            try:
                then(result)
            except ProtocolError as e:
                self.fail(e)
            except Exception:
                self.internalError("internal error for {peer}")
            return None

        def failed(failure):
            self._jobs -= 1
            if self.gone:
                self._cleanupIfIdle()
                return None
            error = clientError(failure.value)
            if error is None:
                self.internalError("internal error for {peer}", failure)
            else:
                self.fail(error)
            return None

        d.addCallbacks(done, failed)

    def _resume(self, state):
        self._enter(state)
        self._peer.resumeInput()

    def _cleanupIfIdle(self):
        """
        Remove staging data of an unfinished transfer once no thread job
        uses it (after the connection is gone).
        """
        if self._jobs or self._connected:
            return
        upload, self.upload = self.upload, None
        restore, self.restore = self.restore, None
        keeping, self.keeping = self.keeping, None
        services = self._services
        if restore is not None:
            restore.close()
        self._releaseRestorePin()
        discarded = None
        if upload is not None:
            discarded = upload.discard(services.runIO, services.store)
        if keeping is not None:
            discarded = keeping.discard(services.runIO, services.store)
        # a parent's files go only once the staging links to them are gone
        self._releaseUploadHolds(discarded)

    def _releaseUploadHolds(self, after=None):
        """
        Give back the upload's quota reservation and parent pin, once
        C{after} (its staging's removal) has fired.
        """
        holds, self.uploadHolds = self.uploadHolds, None
        if holds is None:
            return
        if after is None:
            holds.release(self._services.lifecycle)
        else:
            after.addBoth(lambda _: holds.release(self._services.lifecycle))

    def _releaseRestorePin(self):
        token, self.restorePin = self.restorePin, None
        if token is not None:
            _logFailure(self._services.lifecycle.release(token), "releasing a restore's pin")

    def _nextTransfer(self, direction):
        self._transfers[direction] += 1
        return self._transfers[direction]

    # ------------------------------------------------------------ accounts

    def _accountFailed(self, failure):
        error = failure.value
        if not isinstance(error, ProtocolError):
            return failure
        if error.code == Code.BUSY:
            return failure
        self.failures += 1
        if self.failures >= self._services.maxLoginFailures:
            raise ProtocolError(
                Code.TOO_MANY_ATTEMPTS, f"{error.message}; too many failed attempts"
            )
        self._error(error, False)
        return None

    def _register(self, fields):
        user, password = fields["user"], fields["password"]
        d = self._services.accounts.register(user, password)

        def registered(_):
            self.log.info("registered user={user} peer={peer}", user=user, peer=self._peer.peer)
            self._send(Msg.OK, user=user)
            return True

        d.addCallbacks(registered, self._accountFailed)
        self._busy(d, lambda _: self._resume(State.UNAUTH))

    def _login(self, fields):
        user, password = fields["user"], fields["password"]
        services = self._services
        delay = services.throttle.delayFor(user)
        if delay:
            services.metrics.throttledLogins.inc()
        d = deferLater(services.clock, delay, services.accounts.authenticate, user, password)

        def checked(ok):
            if not ok:
                services.throttle.failed(user)
                services.metrics.failedLogins.inc()
                self.log.info(
                    "failed login user={user!r} peer={peer} delay={delay}",
                    user=user,
                    peer=self._peer.peer,
                    delay=delay,
                )
                raise ProtocolError(Code.AUTH_FAILED, AUTH_FAILED_TEXT)
            services.throttle.succeeded(user)
            return True

        d.addCallback(checked)
        d.addErrback(self._accountFailed)

        def then(ok):
            if ok:
                self.username = user
                self.log.info("login user={user} peer={peer}", user=user, peer=self._peer.peer)
                self._send(Msg.OK, user=user)
                self._resume(State.AUTHED)
            else:
                self._resume(State.UNAUTH)

        self._busy(d, then)

    def _pubkey(self, fields):
        publicKey = crypto.loadClientPublicKey(fields["key"].encode("ascii", "replace"))
        secret = crypto.newSessionSecret()
        wrapped = crypto.wrapSecret(publicKey, secret)
        self.ciphers = crypto.SessionCiphers(secret)
        self._peer.loggedIn()
        self._enter(State.KEYED)
        self._send(Msg.SESSION_KEY, wrapped=base64.b64encode(wrapped).decode("ascii"))

    # ------------------------------------------------------------ listing

    def _list(self, fields):
        def send(rows):
            for start in range(0, max(len(rows), 1), LIST_PAGE):
                page = rows[start : start + LIST_PAGE]
                self._send(Msg.SNAPSHOTS, snapshots=page, more=start + LIST_PAGE < len(rows))
            self._resume(State.KEYED)

        self._busy(self._services.store.list(self.username), send)

    def _manifest(self, fields):
        services = self._services
        d = services.store.manifestOf(self.username, fields["snapshot"])

        def check(found):
            if found is None:
                return None
            pages = ManifestPages(found.path, found.digest)
            return services.runIO(pages.open).addCallback(lambda ok: pages if ok else None)

        d.addCallback(check)

        def send(pages):
            if pages is None:
                self._error(ProtocolError(Code.NOT_FOUND, "no such snapshot manifest"), False)
                self._resume(State.KEYED)
                return
            # still BUSY, input paused: the pages go out as the client reads
            # them, one batch read ahead (touch: a client that stops reading
            # times out)
            sender = self.manifestSender = FrameSender(
                pages, self._peer.sendFrame, services.runIO, self._peer.touch
            )
            done = self._peer.startSending(sender)

            def sent(_):
                self.manifestSender = None
                if not self.gone:
                    self._peer.doneSending()
                    self._resume(State.KEYED)

            def failed(failure):
                self.manifestSender = None
                if not self.gone:
                    self.internalError("could not send a manifest to {peer}", failure)

            done.addCallbacks(sent, failed)

        self._busy(d, send)

    # ------------------------------------------------------------ lifecycle

    def _forget(self, fields):
        ids = fields["ids"]
        if not all(isinstance(i, str) for i in ids):
            raise ProtocolError(Code.BAD_MESSAGE, "FORGET ids must be strings")
        policy = None if fields["policy"] is None else KeepPolicy.fromFields(fields["policy"])
        lifecycle = self._services.lifecycle
        d = lifecycle.forget(self.username, ids, policy, fields["source"], fields["dry_run"])

        def send(result):
            if result is None:  # refused, and told so
                self._resume(State.KEYED)
                return
            rows = [
                {
                    "id": decision.row["id"],
                    "source": decision.row["source"],
                    "created": decision.row["created"],
                    "keep": decision.keep,
                    "reasons": decision.reasons,
                }
                for decision in result.decisions
            ]
            for start in range(0, max(len(rows), 1), LIST_PAGE):
                self._send(
                    Msg.FORGOTTEN,
                    snapshots=rows[start : start + LIST_PAGE],
                    state=result.state,
                    more=start + LIST_PAGE < len(rows),
                )
            self._resume(State.KEYED)

        self._busy(d.addErrback(self._refused), send)

    def _refused(self, failure):
        """
        A request refused for a reason the client can act on (unknown id,
        protected snapshot) is answered non-fatally, and the job's result
        is C{None}; the session goes on.  Other failures pass on (fatal).
        """
        failure.trap(ProtocolError)
        if failure.value.code not in (Code.NOT_FOUND, Code.PROTECTED):
            return failure
        self._ended(failure.value.code)
        self._error(failure.value, False)
        return None

    def _usage(self, fields):
        def send(info):
            self._send(Msg.USAGE_INFO, **info)
            self._resume(State.KEYED)

        self._busy(self._services.lifecycle.usage(self.username), send)

    def _passwd(self, fields):
        user = self.username
        d = self._services.accounts.changePassword(user, fields["old"], fields["new"])

        def changed(_):
            self.log.info(
                "password changed user={user} peer={peer}", user=user, peer=self._peer.peer
            )
            self._send(Msg.OK, user=user)
            return True

        d.addCallbacks(changed, self._accountFailed)
        self._busy(d, lambda _: self._resume(State.KEYED))

    # ------------------------------------------------------------ backup

    def _backup(self, fields):
        self.transfer = "backup"
        name = checkSourceName(fields["name"])
        size = fields["size"]
        services = self._services
        if fields["kind"] not in ("file", "dir"):
            raise ProtocolError(Code.BAD_MESSAGE, "BACKUP kind must be 'file' or 'dir'")
        if size < 0:
            raise ProtocolError(Code.BAD_MESSAGE, "BACKUP size must not be negative")
        if size > services.maxUploadSize:
            raise ProtocolError(
                Code.TOO_LARGE, f"upload of {size} bytes is over the server's limit"
            )
        parentId, digest = fields["parent"], fields["manifest"]
        if (parentId is None) != (digest is None):
            raise ProtocolError(Code.BAD_MESSAGE, "BACKUP names a parent without its manifest")
        if parentId is not None and fields["kind"] != "dir":
            raise ProtocolError(Code.BAD_MESSAGE, "only a folder's backup may have a parent")
        self.log.info(
            "backup of {size} bytes user={user} peer={peer} parent={parent}",
            size=size,
            user=self.username,
            peer=self._peer.peer,
            parent=parentId,
        )
        lifecycle = services.lifecycle
        holds = self.uploadHolds = _UploadHolds()
        d = lifecycle.admit(self.username, size)

        def admitted(admission):
            holds.admission = admission
            if parentId is None:
                return None
            return lifecycle.pin(self.username, parentId).addCallback(pinned)

        def pinned(found):
            if found is None:
                return None
            holds.pin = found[1]
            return services.store.manifestOf(self.username, parentId)

        def stage(found):
            usable = (
                found is not None
                and found.row["source"] == name
                and found.row["kind"] == "dir"
                and found.digest == digest
            )
            staging = services.runIO(services.store.newStaging, self.username)
            return staging.addCallback(lambda path: (found if usable else None, path))

        def dropIfGone(result):
            # the connection went while the staging folder was made: nothing
            # else would remove it
            if not self.gone:
                return result
            staging = services.runIO(services.store.removeStaging, result[1])
            return staging.addCallback(lambda _: None)

        d.addCallback(admitted)
        d.addCallback(stage)
        d.addCallback(dropIfGone)

        def ready(result):
            found, staging = result
            if parentId is None:
                self.upload = UploadJob(name, fields["kind"], size, staging)
                self._beginUpload()
                return
            self.keeping = _Keeping(name, size, staging, found)
            self._resume(State.KEEPING)

        self._busy(d, ready)

    def _keep(self, fields):
        keeping = self.keeping
        try:
            keeping.feed(fields["bits"])
        except ManifestError as e:
            raise ProtocolError(Code.BAD_MESSAGE, str(e)) from None
        if fields["more"]:
            self._enter(State.KEEPING)
            return
        services = self._services
        if keeping.found is None:
            self.keeping = None
            self._releaseUploadHolds(keeping.discard(services.runIO, services.store))
            self._parentChanged()
            self._enter(State.KEYED)
            return
        try:
            parent = keeping.parent(services.store, self.username)
        except ManifestError as e:
            # fatal: the staging folder goes with the connection
            raise ProtocolError(Code.BAD_MESSAGE, str(e)) from None
        self.keeping = None
        self.upload = UploadJob(keeping.name, "dir", keeping.size, keeping.staging, parent)
        self._beginUpload()

    def _parentChanged(self):
        self.log.info("incremental backup refused: parent changed user={user}", user=self.username)
        self._ended(Code.PARENT_CHANGED)
        self._error(
            ProtocolError(
                Code.PARENT_CHANGED, "the parent snapshot changed or is gone: send a full backup"
            ),
            False,
        )

    def _beginUpload(self):
        services = self._services
        transfer = self._nextTransfer("up")
        room = self.uploadHolds.admission.room
        self.upload.begin(
            transfer,
            self.ciphers.upload,
            dataclasses.replace(services.limits, maxStored=room),
            services.flushAhead,
            services.runIO,
            self._peer.holdInput,
            self._resumeForDisk,
        )
        self._send(Msg.READY, transfer=transfer, attempt=self.upload.attempt)
        self._resume(State.RECEIVING)

    def _resumeForDisk(self):
        if not self.gone and self.state is State.RECEIVING:
            self._peer.resumeInput()

    def _data(self, body):
        upload = self.upload
        if not upload.chunkReceived(body):
            return

        def verified(result):
            crc, length, rejected = result
            self._services.metrics.receivedBytes.inc(length)
            self._send(Msg.CKSUM, crc=crc, size=length, rejected=rejected)
            self._resume(State.VERIFYING)

        self._busy(upload.verify(), verified)

    def _commitUpload(self, fields):
        upload = self.upload
        upload.checkCommit(fields["crc"])
        services = self._services
        d = upload.unpack(services.runCPU, services.linkFile)
        parentDigest = None if upload.parent is None else upload.parent.digest

        def commit(composed):
            kept = composed.kept
            if kept.copied:
                self.log.warn(
                    "hard links refused ({why}): copied {n} files ({size} bytes) of the"
                    " parent user={user}",
                    why=",".join(sorted(kept.refused)),
                    n=kept.copied,
                    size=kept.copiedBytes,
                    user=self.username,
                )
            return services.store.commit(
                self.username,
                upload.receiver.sink.dest,
                upload.snapshotMeta(composed),
                upload.manifest(composed),
                parentDigest,
            )

        d.addCallback(commit)

        def parentChanged(failure):
            failure.trap(ParentChanged)
            return None

        d.addErrback(parentChanged)

        def cleanup(result):
            removed = upload.removeStaging(services.runIO, services.store)
            if self.upload is upload:
                self.upload = None
                self._releaseUploadHolds(removed)
            return result

        d.addBoth(cleanup)

        def done(row):
            if row is None:
                self._parentChanged()
                self._resume(State.KEYED)
                return
            self.log.info(
                "snapshot {id} stored user={user} files={files} bytes={size} added={added}"
                " parent={parent}",
                id=row["id"],
                user=self.username,
                files=row["files"],
                size=row["size"],
                added=row["added"],
                parent=row["parent"],
            )
            self._ended("ok")
            self._send(Msg.DONE, snapshot=row)
            self._resume(State.KEYED)
            # the account's own policy, if any, now that it has one more
            _logFailure(
                services.lifecycle.applyRetention(self.username), "retention after a backup"
            )

        self._busy(d, done)

    def _resendUpload(self, fields):
        self._services.metrics.resends.labels("up").inc()
        self.upload.resend()
        self._beginUpload()

    # ------------------------------------------------------------ restore

    def _restore(self, fields):
        self.transfer = "restore"
        include = fields["include"]
        if not all(isinstance(p, str) and p and p == p.strip("/") for p in include):
            raise ProtocolError(
                Code.BAD_MESSAGE, "RESTORE include must be paths without leading or trailing '/'"
            )
        services = self._services
        d = services.lifecycle.pin(self.username, fields["snapshot"])
        found = {}

        def manifest(pinned):
            if pinned is None:
                raise ProtocolError(Code.NOT_FOUND, "no such snapshot")
            found["row"], self.restorePin = pinned
            return services.store.manifestOf(self.username, found["row"]["id"])

        d.addCallback(manifest)

        def plan(withManifest):
            row = found["row"]
            path = services.store.snapshotPath(self.username, row)
            # modes and times come from the manifest (stored files share
            # inodes between snapshots)
            manifest = None if withManifest is None else (withManifest.path, withManifest.digest)
            return services.runCPU(
                services.restores.plan,
                path,
                row["source"],
                services.restoreCompression,
                manifest,
                tuple(include),
            )

        d.addCallback(plan)

        def dropIfGone(plan):
            # the connection went while planning: _busy drops the plan unsent
            if self.gone:
                plan.close()
                return None
            return plan

        d.addCallback(dropIfGone)
        d.addErrback(self._refused)

        def ready(plan):
            if plan is None:
                self._releaseRestorePin()
                self._resume(State.KEYED)
                return
            self.restore = RestoreJob(found["row"], plan)
            self._beginRestore()

        self._busy(d, ready)

    def _beginRestore(self):
        services = self._services
        restore = self.restore
        transfer = self._nextTransfer("down")
        begin = restore.begin(
            transfer,
            self.ciphers.download,
            services.restores.open,
            self._peer.sendFrame,
            services.runIO,
            lambda n: self._peer.touch(),
            self._peer.widenSendBuffer(),
        )
        self.log.info(
            "restore of {id} sending {size} bytes (attempt {attempt}) user={user}",
            id=begin["snapshot"],
            size=begin["size"],
            attempt=begin["attempt"],
            user=self.username,
        )
        self._send(Msg.RESTORE_BEGIN, **begin)
        self._enter(State.SENDING)
        d = self._peer.startSending(restore.sender)

        def sent(crc):
            if not self.gone and self.state is State.SENDING:
                try:
                    self._input(Event.SENT, crc)
                except Exception:
                    self.internalError("internal error for {peer}")

        def failed(failure):
            if not self.gone:
                self.fail(ProtocolError(Code.INTERNAL, "could not send the snapshot"))

        d.addCallbacks(sent, failed)

    def _sent(self, crc):
        self._services.metrics.sentBytes.inc(self.restore.plan.size)
        self.restore.sent(crc)
        self._peer.doneSending()
        self._send(Msg.CKSUM, crc=crc, size=self.restore.plan.size, rejected=0)
        self._resume(State.CONFIRMING)

    def _commitRestore(self, fields):
        self.restore.checkCommit(fields["crc"])
        restore, self.restore = self.restore, None
        restore.close()
        self._releaseRestorePin()
        self._peer.narrowSendBuffer()
        self.log.info("restore of {id} done user={user}", id=restore.row["id"], user=self.username)
        self._ended("ok")
        self._send(Msg.DONE, snapshot=restore.row)
        self._enter(State.KEYED)

    def _resendRestore(self, fields):
        self.restore.checkResend()
        self._services.metrics.resends.labels("down").inc()
        self._beginRestore()


def _logFailure(d, what):
    """
    Log a background job's failure (nobody waits for its result).
    """
    d.addErrback(lambda f: Session.log.failure("{what} failed", f, what=what))


class _UploadHolds:
    """
    What an upload holds until it ends: its quota reservation (an
    L{backup_proto.server.lifecycle.Admission}) and the pin token of its
    parent.
    """

    admission = None
    pin = None

    def release(self, lifecycle):
        if self.admission is not None:
            lifecycle.unreserve(self.admission)
        if self.pin is not None:
            _logFailure(lifecycle.release(self.pin), "releasing a parent's pin")


class _Keeping:
    """
    An incremental backup whose keep list is arriving (state C{KEEPING}).

    @ivar found: the parent's L{backup_proto.server.storage.StoredManifest}, or
        C{None} if it cannot be used (gone, another source, another
        manifest): the list is then read and dropped, and the backup
        refused with C{parent-changed} at its end.
    """

    def __init__(self, name, size, staging, found):
        self.name = name
        self.size = size
        self.staging = staging
        self.found = found
        self._decoder = None if found is None else KeepListDecoder(found.entries)

    def feed(self, bits):
        if self._decoder is not None:
            self._decoder.feed(bits)

    def discard(self, runIO, store):
        """
        Give the backup up: remove its staging folder (in an I/O thread).
        """
        return runIO(store.removeStaging, self.staging)

    def parent(self, store, username):
        """
        @return: the L{Parent} for the upload.
        @raise ManifestError: the list does not fit the parent's manifest.
        """
        found = self.found
        return Parent(
            found.row,
            os.path.join(store.userDir(username), found.row["id"]),
            found.path,
            found.digest,
            self._decoder.finish(),
        )
