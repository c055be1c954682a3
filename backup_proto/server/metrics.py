# -*- test-case-name: tests.test_metrics -*-
"""
Prometheus metrics (C{--metrics ENDPOINT}): what an operator watches --
whose backups are stale, how full each account is, how transfers end,
logins failing, connections by state, the password-hash queue, free space,
the last scrub.

Counters are kept as events happen (L{ServerMetrics}, on the factory);
the rest is read when scraped.  Per-user figures come from the catalog on
the database thread, so a scrape never blocks the reactor: the resource
answers once the query is done (L{MetricsResource}).
"""

import collections
import os

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from backup_proto.server.catalog import accounts
from backup_proto.server.retention import parseTime
from backup_proto.server.scrub import readStatus

log = Logger()


class ServerMetrics:
    """
    The server's counters, in a registry of their own (one per server, so
    that tests may build many).
    """

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.backups = Counter(
            "backup_backups",
            "Backups ended, by outcome: ok, an error code, or aborted (the connection went)",
            ["outcome"],
            registry=r,
        )
        self.restores = Counter(
            "backup_restores",
            "Restores ended, by outcome: ok, an error code, or aborted (the connection went)",
            ["outcome"],
            registry=r,
        )
        self.receivedBytes = Counter(
            "backup_received_bytes", "Zip bytes received in uploads, every attempt", registry=r
        )
        self.sentBytes = Counter(
            "backup_sent_bytes", "Zip bytes sent in restores, every attempt", registry=r
        )
        self.resends = Counter(
            "backup_resends",
            "Transfers sent again after a checksum mismatch, by direction (up, down)",
            ["direction"],
            registry=r,
        )
        self.failedLogins = Counter("backup_failed_logins", "Logins refused", registry=r)
        self.throttledLogins = Counter(
            "backup_throttled_logins", "Logins delayed for an account's failures", registry=r
        )

    def ended(self, kind, outcome):
        """
        Count a backup or restore (C{kind}) that ended with C{outcome}.
        """
        (self.backups if kind == "backup" else self.restores).labels(outcome).inc()


class StateCollector:
    """
    The gauges read at each scrape: connections by state, the hash queue,
    free space, the last scrub, and the per-user figures of the last
    catalog read (L{MetricsResource} refreshes them first).

    @ivar users: the accounts (L{backup_proto.server.catalog.accounts}).
    @ivar scrub: the last scrub's summary
        (L{backup_proto.server.scrub.readStatus}), or C{None}.
    @ivar perUser: whether figures carry a C{user} label (else they are
        summed over the accounts).
    """

    def __init__(self, factory, dataDir, perUser=True):
        self.factory = factory
        self.dataDir = dataDir
        self.perUser = perUser
        self.users = []
        self.scrub = None

    def collect(self):
        states = collections.Counter(p.state.name for p in self.factory.connections)
        connections = GaugeMetricFamily(
            "backup_connections", "Open connections by session state", labels=["state"]
        )
        for name, count in sorted(states.items()):
            connections.add_metric([name], count)
        yield connections
        yield GaugeMetricFamily(
            "backup_hash_queue",
            "Password checks waiting for a CPU thread",
            value=self.factory.accounts.queued,
        )
        try:
            st = os.statvfs(self.dataDir)
        except OSError:
            pass
        else:
            yield GaugeMetricFamily(
                "backup_data_free_bytes",
                "Free space of the data folder's file system",
                value=st.f_bavail * st.f_frsize,
            )
        yield from self._users()
        yield from self._scrub()

    def _scrub(self):
        status = self.scrub
        if status is None:
            return
        yield GaugeMetricFamily(
            "backup_scrub_last_end_timestamp_seconds",
            "When the last scrub (the server's or backup-admin check's) ended",
            value=parseTime(status["ended"]).timestamp(),
        )
        yield GaugeMetricFamily(
            "backup_scrub_last_problems", "Problems the last scrub found", value=status["problems"]
        )
        yield GaugeMetricFamily(
            "backup_scrub_last_read_data",
            "Whether the last scrub read the files' contents (1) or only checked them (0)",
            value=int(status["readData"]),
        )
        yield GaugeMetricFamily(
            "backup_scrub_last_bytes_read", "Bytes the last scrub read", value=status["bytesRead"]
        )

    def _users(self):
        labels = ["user"] if self.perUser else []
        last = GaugeMetricFamily(
            "backup_user_last_backup_timestamp_seconds",
            "When the account's newest snapshot was made (absent: none)"
            if self.perUser
            else "When the least recently backed-up account's newest snapshot was made",
            labels=labels,
        )
        snapshots = GaugeMetricFamily(
            "backup_user_snapshots", "Snapshots kept (not in the trash)", labels=labels
        )
        used = GaugeMetricFamily(
            "backup_user_bytes", "Bytes on disk, each stored file once", labels=labels
        )
        quota = GaugeMetricFamily(
            "backup_user_quota_bytes", "The account's quota (absent: none)", labels=labels
        )
        if self.perUser:
            for row in self.users:
                user = [row["user"]]
                snapshots.add_metric(user, row["snapshots"])
                used.add_metric(user, row["used"])
                if row["quota"] is not None:
                    quota.add_metric(user, row["quota"])
                if row["last_backup"] is not None:
                    last.add_metric(user, parseTime(row["last_backup"]).timestamp())
        else:
            snapshots.add_metric([], sum(row["snapshots"] for row in self.users))
            used.add_metric([], sum(row["used"] for row in self.users))
            quotas = [row["quota"] for row in self.users if row["quota"] is not None]
            if quotas:
                quota.add_metric([], sum(quotas))
            times = [
                parseTime(row["last_backup"]).timestamp()
                for row in self.users
                if row["last_backup"] is not None
            ]
            if times:
                last.add_metric([], min(times))
        yield from (last, snapshots, used, quota)


class MetricsResource(Resource):
    """
    The text exposition format at any path: the catalog is read on the
    database thread, then the registry is rendered.
    """

    isLeaf = True

    def __init__(self, metrics, collector, db):
        super().__init__()
        self.metrics = metrics
        self.collector = collector
        self.db = db
        metrics.registry.register(collector)

    def render_GET(self, request):
        gone = []
        request.notifyFinish().addErrback(gone.append)
        dataDir = self.collector.dataDir
        d = self.db.run(lambda conn: (accounts(conn), readStatus(dataDir)))

        def render(read):
            self.collector.users, self.collector.scrub = read
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)

        def failed(failure):
            log.failure("metrics: could not read the catalog", failure)
            return 500, "text/plain; charset=utf-8", b"could not read the catalog\n"

        def send(answer):
            if gone:
                return
            code, contentType, body = answer
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", contentType.encode("ascii"))
            request.write(body)
            request.finish()

        d.addCallbacks(render, failed).addCallback(send)
        return NOT_DONE_YET
