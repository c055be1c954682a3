"""
Retention policies: restic's documented C{forget} semantics, as a table,
and the policy's wire form.
"""

import datetime

from backup_proto.server.retention import applyPolicy, formatTime, parseTime, subtract
from backup_proto.wire.errors import ProtocolError
from backup_proto.wire.policy import UNLIMITED, Duration, KeepPolicy
from tests.helpers import TestCase

UTC = datetime.timezone.utc
NOW = datetime.datetime(2030, 1, 1, tzinfo=UTC)


def at(text):
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


def rows(*times, source="work"):
    return [
        {"id": f"{source}-{i}", "source": source, "created": formatTime(at(t))}
        for i, t in enumerate(times)
    ]


def kept(decisions):
    return [d.row["created"][:16] for d in decisions if d.keep]


def removed(decisions):
    return [d.row["created"][:16] for d in decisions if not d.keep]


def reasons(decisions):
    return {d.row["created"][:16]: d.reasons for d in decisions if d.keep}


SUNDAYS = [
    "2019-09-01 11:00",
    "2019-09-08 11:00",
    "2019-09-15 11:00",
    "2019-09-22 11:00",
    "2019-09-29 11:00",
    "2019-10-06 11:00",
    "2019-10-13 11:00",
    "2019-10-20 11:00",
    "2019-10-27 11:00",
    "2019-11-03 11:00",
    "2019-11-10 11:00",
    "2019-11-17 11:00",
]


class PolicyTableTests(TestCase):
    """
    Each row: snapshots, policy, the snapshots kept (newest first).
    """

    TABLE = [
        # restic's own example: one backup every Sunday for 12 weeks,
        # --keep-daily 4 keeps the last four Sundays
        (SUNDAYS, KeepPolicy(daily=4), ["2019-11-17", "2019-11-10", "2019-11-03", "2019-10-27"]),
        # --keep-last counts snapshots, not days
        (
            ["2020-01-01 10:00", "2020-01-01 11:00", "2020-01-01 12:00"],
            KeepPolicy(last=2),
            ["2020-01-01T12", "2020-01-01T11"],
        ),
        # a rule with count left at the oldest snapshot keeps it
        (
            ["2020-01-01 10:00", "2020-01-01 12:00", "2020-01-02 09:00"],
            KeepPolicy(daily=5),
            ["2020-01-02T09", "2020-01-01T12", "2020-01-01T10"],
        ),
        # ISO weeks: Thursday 31 December 2020 and Sunday 3 January 2021
        # are both in week 53 of 2020
        (
            ["2020-12-29 08:00", "2020-12-31 08:00", "2021-01-03 08:00", "2021-01-04 08:00"],
            KeepPolicy(weekly=2),
            ["2021-01-04", "2021-01-03"],
        ),
        # within 1m of 31 March 2024: back to "31 February", that is 2 March
        (
            ["2024-03-01 23:00", "2024-03-02 00:00", "2024-03-02 01:00", "2024-03-31 00:00"],
            KeepPolicy(within=Duration(months=1)),
            ["2024-03-31", "2024-03-02T01"],
        ),
        # unlimited: every month's last snapshot
        (
            ["2021-01-05 00:00", "2021-01-20 00:00", "2021-02-01 00:00", "2021-03-09 00:00"],
            KeepPolicy(monthly=UNLIMITED),
            ["2021-03-09", "2021-02-01", "2021-01-20", "2021-01-05"],
        ),
        # rules are ORed: the daily and the weekly slot
        (
            ["2021-01-01 00:00", "2021-01-08 00:00", "2021-01-14 00:00", "2021-01-15 00:00"],
            KeepPolicy(daily=1, weekly=2),
            ["2021-01-15", "2021-01-08"],
        ),
    ]

    def test_table(self):
        for times, policy, expected in self.TABLE:
            decisions = applyPolicy(rows(*times), policy, NOW)
            got = [d.row["created"] for d in decisions if d.keep]
            self.assertEqual(len(got), len(expected), (times, policy, got))
            for created, prefix in zip(got, expected):
                self.assertTrue(
                    created.startswith(prefix.replace(" ", "T")), (policy, got, expected)
                )

    def test_reasons(self):
        """
        Each kept snapshot says which rules kept it; the oldest one a rule
        keeps only because its count lasted is "oldest".
        """
        decisions = applyPolicy(
            rows("2020-01-01 10:00", "2020-01-01 12:00", "2020-01-02 09:00"),
            KeepPolicy(daily=5, last=1),
            NOW,
        )
        self.assertEqual(
            reasons(decisions),
            {
                "2020-01-02T09:00": ["last snapshot", "daily snapshot"],
                "2020-01-01T12:00": ["daily snapshot"],
                "2020-01-01T10:00": ["oldest daily snapshot"],
            },
        )

    def test_hundredYears(self):
        """
        restic's example: one backup a day for 100 years, and
        C{--keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75}
        keeps the 7 newest, 4 more weeklies, 12 or 11 more monthlies and 75
        or 74 more yearlies.
        """
        # ending on a Sunday, as the example has it: the 7 dailies then
        # hold exactly one weekly
        end = at("2025-10-26 06:00")
        self.assertEqual(end.isoweekday(), 7)
        start = end - datetime.timedelta(days=36524)
        times = [formatTime(start + datetime.timedelta(days=n)) for n in range(36525)]
        snapshots = [{"id": str(i), "source": "s", "created": t} for i, t in enumerate(times)]
        decisions = applyPolicy(
            snapshots, KeepPolicy(daily=7, weekly=5, monthly=12, yearly=75), NOW
        )
        keep = [d for d in decisions if d.keep]
        self.assertEqual([d.row["id"] for d in keep[:7]], [str(36524 - n) for n in range(7)])
        for rule, count in (("daily", 7), ("weekly", 5), ("monthly", 12), ("yearly", 75)):
            self.assertEqual(sum(f"{rule} snapshot" in d.reasons for d in keep), count)
        onlyWeekly = [
            d for d in keep if "weekly snapshot" in d.reasons and "daily snapshot" not in d.reasons
        ]
        self.assertEqual(len(onlyWeekly), 4)
        # each kept for the last day of its week, month or year
        for d in keep[7:]:
            when = parseTime(d.row["created"])
            nextDay = when + datetime.timedelta(days=1)
            if "weekly snapshot" in d.reasons:
                self.assertEqual(when.isoweekday(), 7)
            if "monthly snapshot" in d.reasons:
                self.assertEqual(nextDay.day, 1)
            if "yearly snapshot" in d.reasons:
                self.assertEqual((nextDay.month, nextDay.day), (1, 1))
        # 7 + 4 + 11 monthlies (one is the newest) + 73 yearlies (the
        # newest's year and December 2024 are kept already)
        self.assertEqual(len(keep), 95)

    def test_groupedBySource(self):
        """
        Each source is a group of its own: keep-last 1 keeps one of each.
        """
        snapshots = rows("2020-01-01 10:00", "2020-01-02 10:00", source="a") + rows(
            "2020-01-01 11:00", source="b"
        )
        decisions = applyPolicy(snapshots, KeepPolicy(last=1), NOW)
        self.assertEqual(
            [(d.row["id"], d.keep) for d in decisions],
            [("a-1", True), ("a-0", False), ("b-0", True)],
        )

    def test_futureIgnoredByWithin(self):
        """
        A snapshot dated in the future is not "the newest" that within
        counts from (a clock set wrong cannot push the others out).
        """
        snapshots = rows("2029-12-01 00:00", "2029-12-30 00:00", "2040-01-01 00:00")
        decisions = applyPolicy(snapshots, KeepPolicy(within=Duration(days=7)), NOW)
        self.assertEqual(removed(decisions), ["2029-12-01T00:00"])


class PolicyFormTests(TestCase):
    def test_duration(self):
        self.assertEqual(Duration.parse("1y5m7d2h"), Duration(1, 5, 7, 2))
        self.assertEqual(Duration.parse("30d"), Duration(days=30))
        self.assertEqual(str(Duration(1, 0, 7, 0)), "1y7d")
        for bad in ("", "7", "1w", "2h1d", "-1d", "1d ", None):
            self.assertRaises(ValueError, Duration.parse, bad)

    def test_subtract(self):
        self.assertEqual(
            subtract(at("2023-03-31 10:00"), Duration(months=1)), at("2023-03-03 10:00")
        )
        self.assertEqual(
            subtract(at("2024-01-15 10:00"), Duration(years=1, months=2, hours=11)),
            at("2022-11-14 23:00"),
        )

    def test_fields(self):
        policy = KeepPolicy(daily=7, weekly=UNLIMITED, within=Duration(months=2))
        self.assertEqual(KeepPolicy.fromFields(policy.toFields()), policy)
        self.assertEqual(policy.describe(), "keep 7 daily, all weekly; all within 2m of the newest")
        self.assertTrue(KeepPolicy().empty)
        self.assertTrue(KeepPolicy(within=Duration(days=3)).onlyWithin)
        self.assertFalse(KeepPolicy(last=1, within=Duration(days=3)).onlyWithin)
        good = policy.toFields()
        for bad in (
            [],
            {**good, "extra": 1},
            {k: v for k, v in good.items() if k != "daily"},
            {**good, "daily": -2},
            {**good, "daily": True},
            {**good, "within": "1w"},
        ):
            self.assertRaises(ProtocolError, KeepPolicy.fromFields, bad)

    def test_parseTime(self):
        self.assertEqual(formatTime(parseTime("2026-12-04T09:26:51Z")), "2026-12-04T09:26:51Z")
