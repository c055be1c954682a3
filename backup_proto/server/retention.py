# -*- test-case-name: tests.test_retention -*-
"""
Which snapshots a L{KeepPolicy} keeps: restic's C{forget} semantics, in
UTC, with snapshots grouped by source name.

Within a group, snapshots are walked newest first.  Each counted rule has
a bucket key (C{last}: every snapshot; C{hourly}: YYYYMMDDHH; C{daily}:
YYYYMMDD; C{weekly}: ISO year and week; C{monthly}: YYYYMM; C{yearly}:
YYYY); a rule keeps a snapshot whose key differs from the last key it kept,
while its count lasts, and it keeps the oldest snapshot if its count is not
used up by then.  Rules are independent: one snapshot may fill a daily and
a weekly slot at once.  C{within} keeps every snapshot newer than the
newest one (not in the future) minus the duration.
"""

import datetime
from dataclasses import dataclass, field

from backup_proto.wire.policy import COUNTED, UNLIMITED

UTC = datetime.timezone.utc


def parseTime(text):
    """
    @return: a catalog time (C{2026-12-04T09:26:51Z}) as an aware datetime.
    """
    if not text.endswith("Z"):
        raise ValueError(f"not a catalog time: {text!r}")
    return datetime.datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


def formatTime(when):
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def subtract(when, duration):
    """
    @return: C{when} minus a L{Duration}, months and years as on a
        calendar, overflowing days carried on (31 March minus a month is 3
        March, as Go's C{AddDate} and so restic have it).
    """
    month = when.month - duration.months - 1
    year = when.year - duration.years + month // 12
    first = when.replace(year=year, month=month % 12 + 1, day=1)
    return first + datetime.timedelta(days=when.day - 1 - duration.days, hours=-duration.hours)


def _bucket(rule, when, nr):
    if rule == "last":
        return nr
    if rule == "hourly":
        return (when.year, when.month, when.day, when.hour)
    if rule == "daily":
        return (when.year, when.month, when.day)
    if rule == "weekly":
        return when.isocalendar()[:2]
    if rule == "monthly":
        return (when.year, when.month)
    return when.year


@dataclass
class Decision:
    """
    What a policy does with one snapshot: keep it (for C{reasons}) or not.
    """

    row: dict
    keep: bool
    reasons: list = field(default_factory=list)


def applyGroup(rows, policy, now):
    """
    Apply C{policy} to one group's snapshots.

    @param rows: catalog rows (C{id}, C{created}...), in any order.
    @param now: an aware datetime: snapshots after it are never the
        newest that C{within} counts from.
    @return: a L{Decision} per row, newest first.
    """
    timed = sorted(
        ((parseTime(row["created"]), i, row) for i, row in enumerate(rows)),
        key=lambda t: (t[0], t[1]),
        reverse=True,
    )
    past = [when for when, _i, _row in timed if when < now]
    newest = max(past) if past else None
    left = {rule: getattr(policy, rule) for rule in COUNTED}
    lastKey = dict.fromkeys(COUNTED, object())
    within = policy.within if policy.within is not None and not policy.within.zero else None
    decisions = []
    for nr, (when, _i, row) in enumerate(timed):
        reasons = []
        if within is not None and (newest is None or when > subtract(newest, within)):
            reasons.append(f"within {within}")
        oldest = nr == len(timed) - 1
        for rule in COUNTED:
            if left[rule] == 0:
                continue
            key = _bucket(rule, when, nr)
            if key != lastKey[rule] or oldest:
                word = "last snapshot" if rule == "last" else f"{rule} snapshot"
                if key == lastKey[rule]:
                    word = f"oldest {word}"
                lastKey[rule] = key
                if left[rule] != UNLIMITED:
                    left[rule] -= 1
                reasons.append(word)
        decisions.append(Decision(row, bool(reasons), reasons))
    return decisions


def applyPolicy(rows, policy, now):
    """
    Apply C{policy} to snapshots of any sources, each source on its own.

    @return: L{Decision}s, grouped by source (sources sorted), newest first
        within each.
    """
    groups = {}
    for row in rows:
        groups.setdefault(row["source"], []).append(row)
    out = []
    for source in sorted(groups):
        out.extend(applyGroup(groups[source], policy, now))
    return out
