# -*- test-case-name: tests.test_retention -*-
"""
Retention policies as both sides and the catalog know them: restic's
C{--keep-*} rules, their JSON form on the wire (C{FORGET}'s C{policy}) and
in the catalog (an account's policy), and durations like C{1y5m7d2h}.

The selection itself is L{backup_proto.server.retention}: only the server
decides what a policy removes.
"""

import re
from dataclasses import dataclass, fields

from backup_proto.wire.errors import Code, ProtocolError

#: A count that keeps every snapshot of its kind (restic's C{unlimited}).
UNLIMITED = -1

_DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?(?:(\d+)h)?\Z")


@dataclass(frozen=True)
class Duration:
    """
    A calendar duration, restic's C{1y5m7d2h}: years and months are
    calendar months (subtracted like Go's C{AddDate}), hours are hours.
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    @classmethod
    def parse(cls, text):
        """
        @raise ValueError: for anything but C{[Ny][Nm][Nd][Nh]}, in that
            order, with at least one part.
        """
        match = _DURATION.match(text) if isinstance(text, str) else None
        if not text or match is None:
            raise ValueError(
                f"bad duration {text!r}: use e.g. 1y5m7d2h (years, months, days, hours)"
            )
        return cls(*(int(part or 0) for part in match.groups()))

    def __str__(self):
        parts = zip((self.years, self.months, self.days, self.hours), "ymdh")
        return "".join(f"{n}{unit}" for n, unit in parts if n) or "0h"

    @property
    def zero(self):
        return not (self.years or self.months or self.days or self.hours)


#: The counted rules, in restic's order, with the words of their reasons.
COUNTED = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


@dataclass(frozen=True)
class KeepPolicy:
    """
    What to keep: a count per rule of L{COUNTED} (0: rule not used,
    L{UNLIMITED}: all) and C{within}, a L{Duration} or C{None}.
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration = None

    @property
    def empty(self):
        return all(getattr(self, name) == 0 for name in COUNTED) and (
            self.within is None or self.within.zero
        )

    @property
    def onlyWithin(self):
        """
        Whether only C{within} keeps snapshots: the one kind of policy an
        append-only account takes (backdated snapshots cannot push real
        ones out of a bucket).
        """
        return all(getattr(self, name) == 0 for name in COUNTED) and not self.empty

    def toFields(self):
        """
        @return: the JSON object of the wire and the catalog.
        """
        out = {name: getattr(self, name) for name in COUNTED}
        out["within"] = None if self.within is None else str(self.within)
        return out

    @classmethod
    def fromFields(cls, obj):
        """
        @raise ProtocolError: (L{Code.BAD_MESSAGE}) unless C{obj} is an
            object with exactly the fields of L{toFields}, counts C{-1} or
            more and C{within} a duration or null.
        """
        names = {f.name for f in fields(cls)}
        if not isinstance(obj, dict) or set(obj) != names:
            raise ProtocolError(Code.BAD_MESSAGE, f"a policy has the fields {sorted(names)}")
        counts = {}
        for name in COUNTED:
            value = obj[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < UNLIMITED:
                raise ProtocolError(Code.BAD_MESSAGE, f"policy {name} must be an int of -1 or more")
            counts[name] = value
        within = obj["within"]
        if within is not None:
            try:
                within = Duration.parse(within)
            except ValueError as e:
                raise ProtocolError(Code.BAD_MESSAGE, f"policy within: {e}") from None
        return cls(**counts, within=within)

    def describe(self):
        """
        @return: the policy in words, e.g. C{"keep 7 daily, 4 weekly; all
            within 30d of the newest"}.
        """
        counts = [
            f"{'all' if n == UNLIMITED else n} {name}"
            for name in COUNTED
            if (n := getattr(self, name))
        ]
        text = ", ".join(counts)
        if self.within is not None and not self.within.zero:
            text += ("; " if text else "") + f"all within {self.within} of the newest"
        return "keep " + text if text else "keep nothing (empty)"


def parseCount(text):
    """
    @return: a rule's count from a command line: a number, or C{unlimited}.
    @raise ValueError: otherwise.
    """
    if text == "unlimited":
        return UNLIMITED
    n = int(text)
    if n < 0:
        raise ValueError("a count must be 0 or more, or 'unlimited'")
    return n


def policyFromOptions(options):
    """
    @param options: a mapping with C{keep_last}... C{keep_yearly} (counts
        or C{None}) and C{keep_within} (a string or C{None}), as argparse
        makes them.
    @raise ValueError: for a bad duration, worded for the command line.
    @return: the L{KeepPolicy} (maybe empty).
    """
    counts = {name: options.get(f"keep_{name}") or 0 for name in COUNTED}
    within = options.get("keep_within")
    try:
        within = None if within is None else Duration.parse(within)
    except ValueError as e:
        raise ValueError(f"--keep-within: {e}") from None
    return KeepPolicy(**counts, within=within)


def addPolicyOptions(parser):
    """
    Add restic's C{--keep-*} options to an argparse parser.
    """
    for name in COUNTED:
        what = "snapshots" if name == "last" else f"{name} snapshots"
        parser.add_argument(
            f"--keep-{name}",
            type=parseCount,
            metavar="N",
            help=f"keep the last N {what} ('unlimited': all)",
        )
    parser.add_argument(
        "--keep-within",
        metavar="DURATION",
        help="keep snapshots newer than DURATION (e.g. 1y5m7d2h) before the newest",
    )
