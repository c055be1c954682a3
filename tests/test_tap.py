"""
Tests for L{backup_proto.server.tap}: options, the service, TLS 1.3, crash
recovery at start-up.
"""

import os
import resource
import ssl
import threading

from OpenSSL import SSL
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python import usage

from backup_proto.certs import makeCertificates, writeCertificates
from backup_proto.server import tap
from tests.helpers import TestCase


def handshake(serverContext, maximum):
    """
    Run a TLS handshake in memory between a server on C{serverContext} and
    a standard-library client limited to C{maximum}.

    @return: the negotiated version.
    @raise ssl.SSLError: if the client's handshake fails.
    """
    server = SSL.Connection(serverContext, None)
    server.set_accept_state()
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.maximum_version = maximum
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = client.wrap_bio(incoming, outgoing)
    for _ in range(10):
        try:
            conn.do_handshake()
            return conn.version()
        except ssl.SSLWantReadError:
            pass
        server.bio_write(outgoing.read())
        try:
            server.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error:
            pass
        try:
            incoming.write(server.bio_read(65536))
        except SSL.WantReadError:
            pass
    raise AssertionError("handshake did not finish")


class OptionsTests(TestCase):
    def test_defaults(self):
        """
        Without --listen, the default ssl: endpoint on 40445 is used, and
        the certificates it names must exist.
        """
        writeCertificates("certs", makeCertificates())
        options = tap.Options()
        options.parseOptions([])
        self.assertEqual(options["listen"], [tap.DEFAULT_LISTEN])
        self.assertEqual(options["data-dir"], "backup-data")
        self.assertEqual(options["pbkdf2-iterations"], 600_000)

    def test_missingCertificates(self):
        """
        Missing default certificates give a message naming backup-certs.
        """
        e = self.assertRaises(usage.UsageError, tap.Options().parseOptions, [])
        self.assertIn("backup-certs", str(e))

    def test_repeatableListen(self):
        """
        --listen may be given several times.
        """
        options = tap.Options()
        options.parseOptions(
            [
                "--listen",
                "ssl:1:privateKey=a",
                "--listen",
                "ssl:2:privateKey=b",
                "--pbkdf2-iterations",
                "1000",
            ]
        )
        self.assertEqual(len(options["listen"]), 2)
        self.assertEqual(options["pbkdf2-iterations"], 1000)

    def test_badNumbers(self):
        """
        Non-positive numbers are refused.
        """
        self.assertRaises(
            usage.UsageError,
            tap.Options().parseOptions,
            ["--listen", "ssl:1", "--idle-timeout", "0"],
        )
        self.assertRaises(
            usage.UsageError,
            tap.Options().parseOptions,
            ["--listen", "ssl:1", "--restore-compression", "bzip"],
        )
        self.assertRaises(
            usage.UsageError,
            tap.Options().parseOptions,
            ["--listen", "ssl:1", "--max-frame", "1000"],
        )

    def test_helpDocumentsEveryOption(self):
        """
        --help names every option.
        """
        text = str(tap.Options())
        for name in (
            "--data-dir",
            "--listen",
            "--pbkdf2-iterations",
            "--idle-timeout",
            "--login-timeout",
            "--max-connections",
            "--max-per-peer",
            "--max-upload-size",
            "--max-entries",
            "--max-unpacked-size",
            "--max-ratio",
            "--restore-compression",
            "--cpu-threads",
            "--max-frame",
            "--login-free-failures",
            "--login-max-delay",
            "--max-hash-queue",
        ):
            self.assertIn(name, text)


class ServiceTests(TestCase):
    def setUp(self):
        super().setUp()
        writeCertificates("certs", makeCertificates())
        self.reactor = MemoryReactorClock()

    def make(self, *argv):
        options = tap.Options()
        options.parseOptions(["--data-dir", "data", *argv])
        return tap.makeService(options, self.reactor)

    def test_tunesAllocator(self):
        """
        Building the server tunes the C allocator
        (L{backup_proto.allocator}), once.
        """
        calls = []
        self.patch(tap, "tuneAllocator", lambda: calls.append("tune"))
        self.make()
        self.assertEqual(calls, ["tune"])

    def test_raisesOpenFileLimit(self):
        """
        Building the server raises the open-file limit for its
        --max-connections.
        """
        calls = []
        self.patch(tap, "raiseOpenFileLimit", calls.append)
        self.make("--max-connections", "7")
        self.assertEqual(calls, [7])

    def test_listensWithTLS13(self):
        """
        The service listens on the ssl: endpoint with TLS 1.3 as the floor.
        """
        service = self.make(
            "--listen", "ssl:0:privateKey=certs/server.key:certKey=certs/server.pem"
        )
        service.startService()
        self.addCleanup(service.stopService)
        port, factory, contextFactory, backlog, interface = self.reactor.sslServers[0]
        ctx = contextFactory.getContext()
        self.assertRaises(ssl.SSLError, handshake, ctx, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(handshake(ctx, ssl.TLSVersion.TLSv1_3), "TLSv1.3")
        self.assertTrue(os.path.exists("data/user.db"))

    def test_threadsOwnedByService(self):
        """
        Every thread the server starts (its pools and the flush-ahead
        thread the factory is given) ends when the service stops, and the
        factory gets its collaborators from the options.
        """
        service = self.make(
            "--listen",
            "ssl:0:privateKey=certs/server.key:certKey=certs/server.pem",
            "--login-free-failures",
            "5",
            "--login-max-delay",
            "9",
            "--trash-days",
            "4",
            "--maintenance-interval",
            "60",
        )
        before = set(threading.enumerate())
        service.startService()
        factory = self.reactor.sslServers[0][1]
        self.assertEqual((factory.throttle.freeFailures, factory.throttle.maxDelay), (5, 9))
        self.assertEqual(factory.lifecycle.trashDays, 4)
        (maintenance,) = [s for s in service if isinstance(s, tap.MaintenanceService)]
        self.assertEqual((maintenance.interval, maintenance.lifecycle), (60, factory.lifecycle))
        os.mkdir("tree")
        factory.flushAhead.request(os.path.abspath("tree"))
        self.reactor.callFromThread = lambda f, *args: None  # results are not needed
        factory.runIO(os.getpid)
        factory.runCPU(os.getpid)
        os.makedirs("snap")
        with open("snap/f", "wb") as f:
            f.write(b"x")
        factory.restores.plan(os.path.abspath("snap"), "snap", "store").close()

        def ours():
            return [t.name for t in set(threading.enumerate()) - before if "backup-" in t.name]

        self.assertIn("backup-flush-ahead", ours())
        self.assertTrue([name for name in ours() if name.startswith("backup-plan")], ours())
        service.stopService()
        self.assertEqual(ours(), [])

    def test_plainTCPRefused(self):
        """
        A non-TLS endpoint is refused with a message.
        """
        e = self.assertRaises(SystemExit, self.make, "--listen", "tcp:0")
        self.assertIn("only ssl:", str(e))

    def test_recoveryAtStart(self):
        """
        Start-up removes staging leftovers and snapshot folders the catalog
        does not know (half-committed), and keeps completed ones.
        """
        self.make("--listen", "ssl:0:privateKey=certs/server.key:certKey=certs/server.pem")
        from backup_proto.server.accounts import insertUser
        from backup_proto.server.database import Database
        from tests.helpers import runNow

        db = Database(os.path.abspath("data/user.db"), runNow)
        db.runSync(insertUser, "alice", b"", b"", 1)
        os.makedirs("data/users/alice/.staging/tmp1/tree")
        os.makedirs("data/users/alice/kept-1/kept")
        os.makedirs("data/users/alice/orphan-1/orphan")
        db.runSync(
            lambda c: c.execute(
                "INSERT INTO snapshots (username, id, source, kind, created, zip_size, size, files)"
                " VALUES ('alice','kept-1','kept','dir','t',1,1,1)"
            )
        )
        db.runSync(
            lambda c: c.execute(
                "INSERT INTO snapshots (username, id, source, kind, created, zip_size, size, files)"
                " VALUES ('alice','gone-1','gone','dir','t',1,1,1)"
            )
        )
        db.close()
        self.make("--listen", "ssl:0:privateKey=certs/server.key:certKey=certs/server.pem")
        self.assertEqual(sorted(os.listdir("data/users/alice")), [".staging", "kept-1"])
        self.assertEqual(os.listdir("data/users/alice/.staging"), [])
        db = Database(os.path.abspath("data/user.db"), runNow)
        self.assertEqual(
            db.runSync(lambda c: c.execute("SELECT id FROM snapshots").fetchall()), [("kept-1",)]
        )
        db.close()


class CertsTests(TestCase):
    def test_files(self):
        """
        backup-certs writes four files, keys 0600, SANs as asked, and does
        not overwrite without --force.
        """
        from cryptography import x509

        from backup_proto.certs import main

        self.assertEqual(main(["--dir", "c", "--host", "backup.example", "--host", "10.1.2.3"]), 0)
        self.assertEqual(sorted(os.listdir("c")), ["ca.key", "ca.pem", "server.key", "server.pem"])
        for key in ("c/ca.key", "c/server.key"):
            self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        with open("c/server.pem", "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(sans.get_values_for_type(x509.DNSName), ["backup.example"])
        self.assertEqual([str(a) for a in sans.get_values_for_type(x509.IPAddress)], ["10.1.2.3"])
        with open("c/ca.pem", "rb") as f:
            before = f.read()
        self.assertEqual(main(["--dir", "c"]), 1)
        with open("c/ca.pem", "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual(main(["--dir", "c", "--force"]), 0)
        with open("c/ca.pem", "rb") as f:
            self.assertNotEqual(f.read(), before)


class OpenFileLimitTests(TestCase):
    def limits(self, soft, hard, maxConnections=2000):
        calls = []
        result = tap.raiseOpenFileLimit(
            maxConnections, lambda which: (soft, hard), lambda which, limits: calls.append(limits)
        )
        return result, calls

    def test_raised(self):
        """
        A soft limit below what the connection cap needs is raised to it.
        """
        self.assertEqual(self.limits(1024, 1 << 20), (8064, [(8064, 1 << 20)]))

    def test_cappedByHard(self):
        """
        The hard limit caps the raise, and the shortfall is logged.
        """
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        self.assertEqual(self.limits(1024, 4096), (4096, [(4096, 4096)]))
        self.assertEqual([e["wanted"] for e in observer if "wanted" in e], [8064])

    def test_enoughAlready(self):
        """
        A soft limit that is high enough, or unlimited, is left alone.
        """
        self.assertEqual(self.limits(20000, 20000), (20000, []))
        infinity = resource.RLIM_INFINITY
        self.assertEqual(self.limits(infinity, infinity), (infinity, []))
