"""
Prometheus metrics (L{backup_proto.server.metrics}): rendered in process
after real protocol exchanges, and scraped over HTTP from a real
C{twistd} during and after a backup.
"""

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.web.test.requesthelper import DummyRequest

from backup_proto.server.metrics import MetricsResource, StateCollector
from backup_proto.server.scrub import Scrubber, writeStatus
from backup_proto.wire.frames import Msg
from tests.test_drain import zipOf
from tests.test_e2e import EndToEndCase, freePort
from tests.test_incremental import IncrementalCase
from tests.wire import Wire


def samples(text):
    """
    @return: C{{(name, frozenset(labels.items())): value}} of an exposition.
    """
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, frozenset(sample.labels.items())] = sample.value
    return out


def value(found, name, **labels):
    return found.get((name, frozenset(labels.items())))


class MetricsTests(IncrementalCase):
    def scrape(self, perUser=True):
        collector = StateCollector(self.factory, self.data, perUser=perUser)
        resource = MetricsResource(self.factory.metrics, collector, self.factory.store.db)
        request = DummyRequest([b"metrics"])
        resource.render_GET(request)
        self.assertTrue(request.finished)
        self.assertIn(b"text/plain", request.responseHeaders.getRawHeaders(b"content-type")[0])
        return samples(b"".join(request.written).decode())

    def test_afterBackups(self):
        """
        Outcomes, bytes, failed logins, connections by state and the
        per-user figures follow what happened.
        """
        data = zipOf()
        wire = Wire(self.factory).keyed()
        self.assertIs(wire.backup(data)[0], Msg.DONE)
        Wire(self.factory).keyed(user="bob")
        bad = Wire(self.factory)
        bad.login("alice", "wrong")
        wire.sendControl(Msg.RESTORE, snapshot="none", include=[])
        found = self.scrape()
        self.assertEqual(value(found, "backup_backups_total", outcome="ok"), 1)
        self.assertEqual(value(found, "backup_restores_total", outcome="not-found"), 1)
        self.assertEqual(value(found, "backup_received_bytes_total"), len(data))
        self.assertEqual(value(found, "backup_failed_logins_total"), 1)
        self.assertEqual(value(found, "backup_connections", state="KEYED"), 2)
        self.assertEqual(value(found, "backup_connections", state="UNAUTH"), 1)
        self.assertEqual(value(found, "backup_user_snapshots", user="alice"), 1)
        self.assertEqual(value(found, "backup_user_snapshots", user="bob"), 0)
        self.assertIsNone(value(found, "backup_user_last_backup_timestamp_seconds", user="bob"))
        last = value(found, "backup_user_last_backup_timestamp_seconds", user="alice")
        self.assertLess(abs(last - time.time()), 120)
        used = self.factory.store.db.runSync(
            lambda c: c.execute("SELECT used FROM users WHERE username = 'alice'").fetchone()[0]
        )
        self.assertEqual(value(found, "backup_user_bytes", user="alice"), used)
        self.assertGreater(value(found, "backup_data_free_bytes"), 0)
        self.assertEqual(value(found, "backup_hash_queue"), 0)
        self.assertIsNone(value(found, "backup_scrub_last_problems"))

    def test_abortedAndNotPerUser(self):
        """
        An upload whose connection goes is counted as aborted; without
        per-user labels the figures are summed; the last scrub shows.
        """
        data = zipOf()
        wire = Wire(self.factory).keyed()
        wire.backup(data)
        wire.sendControl(
            Msg.BACKUP, name="docs", kind="dir", size=len(data), parent=None, manifest=None
        )
        wire.proto.connectionLost(None)
        writeStatus(self.data, self.factory.store.db.runSync(Scrubber(self.data, True).run))
        found = self.scrape(perUser=False)
        self.assertEqual(value(found, "backup_backups_total", outcome="aborted"), 1)
        self.assertEqual(value(found, "backup_user_snapshots"), 1)
        self.assertFalse(any(("user", "alice") in labels for _n, labels in found))
        self.assertEqual(value(found, "backup_scrub_last_problems"), 0)
        self.assertEqual(value(found, "backup_scrub_last_read_data"), 1)


@pytest.mark.slow
class MetricsEndToEndTests(EndToEndCase):
    def setUp(self):
        self.metricsPort = freePort()
        self.serverArgs = ("--metrics", f"tcp:{self.metricsPort}:interface=127.0.0.1")
        super().setUp()

    def scrape(self):
        url = f"http://127.0.0.1:{self.metricsPort}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            return samples(response.read().decode())

    def test_duringAndAfterBackup(self):
        self.makeBigSource()
        self.ok("register")
        before = self.scrape()
        self.assertEqual(value(before, "backup_user_snapshots", user="alice"), 0)
        client = self.spawnClient("backup", "src")
        self.waitForServerLog("backup of")
        during = self.scrape()
        moving = sum(
            v
            for (name, labels), v in during.items()
            if name == "backup_connections"
            and dict(labels)["state"] in ("RECEIVING", "BUSY", "KEEPING", "VERIFYING")
        )
        self.assertEqual(moving, 1)
        out, err = client.communicate(timeout=120)
        self.assertEqual(client.returncode, 0, err)
        after = self.scrape()
        self.assertEqual(value(after, "backup_backups_total", outcome="ok"), 1)
        self.assertGreater(value(after, "backup_received_bytes_total"), 160 << 20)
        self.assertEqual(value(after, "backup_user_snapshots", user="alice"), 1)
        self.assertEqual(value(after, "backup_user_bytes", user="alice"), 160 << 20)
        self.assertLess(
            abs(
                value(after, "backup_user_last_backup_timestamp_seconds", user="alice")
                - time.time()
            ),
            120,
        )
