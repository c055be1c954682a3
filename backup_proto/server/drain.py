# -*- test-case-name: tests.test_drain -*-
"""
A graceful stop: on SIGTERM the server stops accepting, closes the
connections that are not moving a snapshot (with a C{shutting-down}
error), lets uploads and restores
under way finish for up to a grace period, then aborts the rest (an
aborted upload's staging is removed as after any lost connection, and
start-up recovery removes whatever a kill left).
"""

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from backup_proto.wire.errors import Code, ProtocolError

log = Logger()

#: Seconds between looks at the connections while the server drains.
POLL = 0.1
#: Seconds to wait for aborted connections to be closed (their cleanup
#: runs on the pools, which stop after).
CLOSE_WAIT = 10.0


def transferring(proto):
    """
    @return: whether a connection is moving a snapshot: a backup or a
        restore from its request (admission, planning) to its end.
    """
    session = proto.session
    return (
        session.transfer is not None
        or session.upload is not None
        or session.restore is not None
        or session.keeping is not None
    )


class Drain:
    """
    Waits for a factory's transfers to end, closing each connection as
    soon as it moves nothing, for at most C{grace} seconds.

    @ivar aborted: connections aborted when the grace period ran out.
    """

    def __init__(self, factory, clock, grace):
        self.factory = factory
        self.clock = clock
        self.grace = grace
        self.aborted = 0

    def run(self):
        """
        @return: a L{Deferred} that fires once every connection is closed.
        """
        self.factory.draining = True
        done = Deferred()
        deadline = self.clock.seconds() + self.grace
        connections = self.factory.connections
        idle = [p for p in connections if not transferring(p)]
        log.info(
            "stopping: {busy} transfers under way get up to {grace} s to finish",
            busy=len(connections) - len(idle),
            grace=self.grace,
        )
        stopping = ProtocolError(Code.SHUTTING_DOWN, "the server is shutting down; try again later")
        for proto in idle:
            proto.session.fail(stopping)
        self._look(done, deadline)
        return done

    def _look(self, done, deadline):
        connections = self.factory.connections
        for proto in list(connections):
            if not transferring(proto):
                proto.transport.loseConnection()
        left = [p for p in connections if transferring(p)]
        if not left:
            self._closed(done, self.clock.seconds() + CLOSE_WAIT)
            return
        if self.clock.seconds() >= deadline:
            self.aborted = len(left)
            log.warn("stopping: aborting {count} transfers still under way", count=len(left))
            for proto in left:
                proto.transport.abortConnection()
            self._closed(done, self.clock.seconds() + CLOSE_WAIT)
            return
        self.clock.callLater(POLL, self._look, done, deadline)

    def _closed(self, done, deadline):
        if not self.factory.connections or self.clock.seconds() >= deadline:
            done.callback(None)
            return
        self.clock.callLater(POLL, self._closed, done, deadline)


class ServerService(MultiService):
    """
    The server's services, stopped in order: the listeners first, then the
    connections drained (L{Drain}), then the rest (pools last, since an
    ending transfer still uses them).
    """

    def __init__(self, factory, clock, grace):
        super().__init__()
        self.drain = Drain(factory, clock, grace)
        self.listeners = []

    def addListener(self, service):
        self.listeners.append(service)
        service.setServiceParent(self)

    def stopService(self):
        stopped = DeferredList([maybeDeferred(s.stopService) for s in self.listeners])
        stopped.addCallback(lambda _: self.drain.run())
        stopped.addCallback(lambda _: MultiService.stopService(self))
        return stopped
