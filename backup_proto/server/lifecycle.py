# -*- test-case-name: tests.test_lifecycle -*-
"""
How snapshots leave, and what an account may keep: C{forget} by id or by
policy, the trash and its grace period, retention run by the server, pins
that hold a snapshot while it is read or linked from, and quota admission.

The same L{Lifecycle} serves the server (its catalog calls on the database
thread, file removal on an I/O thread) and C{backup-admin} (both run in
place): the rules are in one place.  Catalog states and their order are in
L{backup_proto.server.catalog}.
"""

import datetime
import os
import socket
from typing import NamedTuple

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from backup_proto.server import catalog
from backup_proto.server.catalog import LIVE, REMOVING, TRASH, transaction
from backup_proto.server.retention import Decision, applyPolicy, formatTime, parseTime
from backup_proto.wire.errors import Code, ProtocolError

#: Who asks for a removal, and so which protection applies: a client
#: (append-only and minimum age), the server's retention (minimum age) or
#: the operator (none; logged).
CLIENT, SERVER, OPERATOR = "client", "server", "operator"


class Forgotten(NamedTuple):
    """
    The outcome of a forget: a L{Decision} per snapshot considered, newest
    first within each source, and the state removed ones went to (C{trash},
    C{removing}; C{None} for a dry run).
    """

    decisions: list
    state: str


class Admission(NamedTuple):
    """
    An upload admitted under its account's quota: C{size} bytes reserved
    until it ends, and C{room}, the bytes it may unpack to (C{None}: no
    quota).
    """

    username: str
    size: int
    room: int


def _days(n):
    return datetime.timedelta(days=n)


class Lifecycle:
    """
    @ivar trashDays: days a client's removal stays in the trash (0: removed
        at once).
    @ivar holder: the name this server's pins carry.
    @ivar reserved: bytes of uploads under way, by account, admitted but
        not yet committed.
    """

    log = Logger()

    def __init__(self, store, runIO, clock, trashDays=0, holder=None):
        self.store = store
        self.db = store.db
        self._runIO = runIO
        self._clock = clock
        self.trashDays = trashDays
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.reserved = {}

    def now(self):
        return datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.timezone.utc)

    # ------------------------------------------------------------ forget

    @inlineCallbacks
    def forget(self, username, ids=(), policy=None, source=None, dryRun=False, actor=CLIENT):
        """
        Remove snapshots by id, or those a policy does not keep, through the
        trash for a client or the server when the grace period is not 0.

        @raise ProtocolError: C{not-found} for an unknown id (nothing is
            removed then), C{protected} for a removal the account's
            protection refuses, C{bad-message} for an empty policy.
        @return: a L{Deferred} with the L{Forgotten}.
        """
        if policy is not None and policy.empty:
            raise ProtocolError(Code.BAD_MESSAGE, "an empty policy removes everything: refused")
        if bool(ids) == (policy is not None):
            raise ProtocolError(Code.BAD_MESSAGE, "forget takes snapshot ids or a policy")
        now = self.now()
        result = yield self.db.run(
            self._decide, username, list(ids), policy, source, dryRun, actor, now
        )
        removed = [d.row["id"] for d in result.decisions if not d.keep]
        if removed and not dryRun:
            self.log.info(
                "forget by {actor} user={user}: {n} snapshots to {state}: {ids}",
                actor=actor,
                user=username,
                n=len(removed),
                state=result.state,
                ids=" ".join(removed),
            )
            if result.state == REMOVING:
                for snapshotId in removed:
                    yield self.purge(username, snapshotId)
        return result

    def _decide(self, conn, username, ids, policy, source, dryRun, actor, now):
        with transaction(conn):
            account = catalog.requireAccount(conn, username)
            rows = catalog.snapshots(conn, username, LIVE)
            if ids:
                byId = {row["id"]: row for row in rows}
                missing = [i for i in ids if i not in byId]
                if missing:
                    raise ProtocolError(Code.NOT_FOUND, f"no such snapshot: {missing[0]}")
                decisions = [Decision(byId[i], False) for i in dict.fromkeys(ids)]
            else:
                if source is not None:
                    rows = [row for row in rows if row["source"] == source]
                decisions = applyPolicy(rows, policy, now)
            self._protect(account, decisions, bool(ids), actor, now)
            removed = [d.row["id"] for d in decisions if not d.keep]
            if dryRun:
                return Forgotten(decisions, None)
            state = TRASH if self.trashDays and actor != OPERATOR else REMOVING
            catalog.setState(conn, username, removed, state, formatTime(now))
            return Forgotten(decisions, state)

    @staticmethod
    def _protect(account, decisions, byId, actor, now):
        """
        Apply the account's delete protection: refuse a client's removal
        on an append-only account, or of a snapshot named by id that is
        younger than the minimum age; a policy keeps such young ones.
        """
        removing = [d for d in decisions if not d.keep]
        if actor == OPERATOR or not removing:
            return
        if actor == CLIENT and account.appendOnly:
            raise ProtocolError(
                Code.PROTECTED, "this account is append-only: snapshots cannot be removed"
            )
        if not account.minAgeDays:
            return
        cutoff = now - _days(account.minAgeDays)
        for d in removing:
            if parseTime(d.row["created"]) > cutoff:
                if byId:
                    raise ProtocolError(
                        Code.PROTECTED,
                        f"snapshot {d.row['id']} is younger than {account.minAgeDays} days:"
                        " this account's snapshots cannot be removed before then",
                    )
                d.keep = True
                d.reasons.append(f"younger than {account.minAgeDays} days (protected)")

    # ------------------------------------------------------------ removal

    @inlineCallbacks
    def purge(self, username, snapshotId):
        """
        Remove a C{removing} snapshot's files and row, unless a pin holds
        it (its last unpin does it then) or another remover took it.

        @return: a L{Deferred} with the bytes freed, or C{None} if this
            call did not remove it.
        """
        claimed = yield self.db.run(catalog.claim, username, snapshotId)
        if not claimed:
            return None
        freed = yield self._runIO(self.store.removeSnapshotFiles, username, snapshotId)
        yield self.db.run(catalog.finishRemoval, username, snapshotId, freed)
        self.log.info(
            "snapshot {id} removed user={user} freed={freed}",
            id=snapshotId,
            user=username,
            freed=freed,
        )
        return freed

    def undelete(self, username, snapshotId):
        """
        Bring a trashed snapshot back.

        @return: a L{Deferred}; C{not-found} unless it is in the trash.
        """

        def restore(conn):
            with transaction(conn):
                catalog.setState(
                    conn, username, [snapshotId], LIVE, formatTime(self.now()), (TRASH,)
                )

        return self.db.run(restore)

    @inlineCallbacks
    def maintain(self):
        """
        What the server does on a schedule: apply each account's retention
        policy, send trash older than the grace period to removal, and
        remove every snapshot waiting for it that no pin holds.

        @return: a L{Deferred} firing with how many snapshots were removed.
        """
        for username in (yield self.db.run(catalog.withPolicy)):
            yield self.applyRetention(username)
        now = self.now()
        cutoff = formatTime(now - _days(self.trashDays))

        def expire(conn):
            with transaction(conn):
                expired = catalog.expiredTrash(conn, cutoff)
                for username, snapshotId in expired:
                    catalog.setState(
                        conn, username, [snapshotId], REMOVING, formatTime(now), (TRASH,)
                    )
                return expired

        expired = yield self.db.run(expire)
        if expired:
            self.log.info("trash emptied: {n} snapshots past the grace period", n=len(expired))
        removed = 0
        for username, snapshotId in (yield self.db.run(catalog.waiting, REMOVING)):
            if (yield self.purge(username, snapshotId)) is not None:
                removed += 1
        return removed

    @inlineCallbacks
    def applyRetention(self, username):
        """
        Apply an account's own retention policy, if it has one.

        @return: a L{Deferred} with the L{Forgotten}, or C{None}.
        """
        account = yield self.db.run(catalog.account, username)
        if account is None or account.policy is None:
            return None
        result = yield self.forget(username, policy=account.policy, actor=SERVER)
        return result

    # ------------------------------------------------------------ pins

    def pin(self, username, snapshotId):
        """
        Hold one of the account's live snapshots (C{None}: the newest)
        against removal until L{release}.

        @return: a L{Deferred} with C{(row, token)}, or C{None}.
        """
        return self.db.run(catalog.pin, username, snapshotId, self.holder)

    @inlineCallbacks
    def release(self, token):
        """
        Let a pinned snapshot go; if a removal waited for it, do it now.
        """
        waiting = yield self.db.run(catalog.unpin, token)
        if waiting is not None:
            yield self.purge(*waiting)

    # ------------------------------------------------------------ quotas

    @inlineCallbacks
    def admit(self, username, size):
        """
        Reserve C{size} bytes of the account's quota for an upload, counting
        the uploads of the account already under way.

        @raise ProtocolError: C{quota-exceeded}, before any data moves.
        @return: a L{Deferred} with the L{Admission}, to L{unreserve} when
            the upload ends.
        """
        account = yield self.db.run(catalog.requireAccount, username)
        reserved = self.reserved.get(username, 0)
        catalog.checkQuota(account, size, reserved)
        self.reserved[username] = reserved + size
        room = None if account.quota is None else account.quota - account.used - reserved
        return Admission(username, size, room)

    def unreserve(self, admission):
        left = self.reserved.get(admission.username, 0) - admission.size
        if left > 0:
            self.reserved[admission.username] = left
        else:
            self.reserved.pop(admission.username, None)

    def usage(self, username):
        return self.db.run(catalog.usage, username)
