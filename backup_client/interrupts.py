# -*- test-case-name: tests.test_interrupts -*-
"""
Ctrl-C (SIGINT) and SIGTERM while the client runs: at any moment it stops
what it does, cleans up as it would after a failure, prints C{interrupted}
and exits 130 or 143 (128 + the signal), never 0 and never a traceback.

The signal is not turned into an exception wherever Python happens to be:
thread work (planning, placing a restore) cannot be stopped midway, and a
half-placed restore is worse than a finished one.  Instead the handler
runs the hooks the command registered, on the reactor: abort the
connection (whatever waits on the server fails, and the server removes its
staging data), stop the plan; the command then unwinds through its usual
cleanup and checks L{Interrupts.check} before a step that must not start.
Only a password prompt, which blocks the reactor, is interrupted by an
exception at once.
"""

import signal
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """
    A signal asked the client to stop.
    """

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum

    @property
    def exitCode(self):
        """
        128 + the signal, as a shell reports it (C{EXIT_SIGINT},
        C{EXIT_SIGTERM}).
        """
        return 128 + self.signum


class Interrupts:
    """
    The signals received while a command runs, and what to do on the first.

    @ivar signum: the first signal received, or C{None}.
    """

    def __init__(self):
        self.signum = None
        self._hooks = []
        self._reactor = None
        self._prompting = False

    def install(self, reactor):
        """
        Take SIGINT and SIGTERM over from the reactor (whose handlers would
        stop it with the command's cleanup undone): now, and again on its
        first turn, as it installs its own after its start-up callbacks.
        """
        self._reactor = reactor
        self._takeSignals()
        reactor.callLater(0, self._takeSignals)

    def _takeSignals(self):
        for signum in SIGNALS:
            signal.signal(signum, self._received)

    def _received(self, signum, frame):
        first = self.signum is None
        if first:
            self.signum = signum
        if self._prompting:
            raise Interrupted(self.signum)
        if first and self._reactor is not None:
            # out of the handler: the reactor may be in the middle of anything
            self._reactor.callFromThread(self._fire)

    def _fire(self):
        hooks, self._hooks = self._hooks, []
        for hook in hooks:
            hook()

    def onInterrupt(self, hook):
        """
        Call C{hook} (on the reactor) when a signal arrives; at once if one
        has.
        """
        if self.signum is not None:
            hook()
        else:
            self._hooks.append(hook)

    def check(self):
        """
        @raise Interrupted: if a signal arrived.
        """
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextmanager
    def prompting(self):
        """
        While the block waits for the terminal, a signal raises
        L{Interrupted} at once.
        """
        self.check()
        self._prompting = True
        try:
            yield
        finally:
            self._prompting = False


def raiseOnTerm(signum, frame):
    """
    SIGTERM before the reactor runs: unwind like Ctrl-C does.
    """
    raise Interrupted(signum)
