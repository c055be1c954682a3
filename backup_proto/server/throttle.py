# -*- test-case-name: tests.test_throttle -*-
"""
A growing delay for accounts that keep failing to log in.

Per-connection limits stop one connection from guessing; this stops many
connections from guessing one account.  After C{freeFailures} failures in a
row, each login for that name waits C{baseDelay * 2**(n - freeFailures)}
seconds (at most C{maxDelay}) before its password is even checked.  The wait
is a timer on the reactor (never C{time.sleep}): other clients are not
slowed.  Unknown names are tracked like real ones, so the delay reveals
nothing; the table is bounded (least recently failed names are forgotten
first).
"""

import collections


class LoginThrottle:
    """
    @ivar _failures: C{{name: (count, time of last failure)}}, oldest first.
    """

    def __init__(
        self,
        clock,
        freeFailures=3,
        baseDelay=1.0,
        maxDelay=60.0,
        forgetAfter=900.0,
        maxTracked=100_000,
    ):
        self._clock = clock
        self.freeFailures = freeFailures
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.forgetAfter = forgetAfter
        self.maxTracked = maxTracked
        self._failures = collections.OrderedDict()

    def _count(self, name):
        entry = self._failures.get(name)
        if entry is None:
            return 0
        count, last = entry
        if self._clock.seconds() - last > self.forgetAfter:
            del self._failures[name]
            return 0
        return count

    def delayFor(self, name):
        """
        @return: seconds to wait before checking a login for C{name}.
        """
        excess = self._count(name) - self.freeFailures
        if excess < 0:
            return 0.0
        return min(self.baseDelay * 2 ** min(excess, 32), self.maxDelay)

    def failed(self, name):
        """
        Record a failed login for C{name}.
        """
        count = self._count(name) + 1
        self._failures.pop(name, None)
        self._failures[name] = (count, self._clock.seconds())
        while len(self._failures) > self.maxTracked:
            self._failures.popitem(last=False)

    def succeeded(self, name):
        """
        A successful login clears C{name}'s record.
        """
        self._failures.pop(name, None)
