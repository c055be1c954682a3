"""
Start-up failures stop the server (L{backup_proto.server.tap}): each one
through the installed C{twistd}, as an init system would see it -- one
line, a non-zero exit, within seconds, and no traceback.  Also the
systemd units under C{contrib/systemd/}.
"""

import os
import shutil
import socket
import subprocess
import time

import pytest
from twisted.trial.unittest import SkipTest

from backup_proto.server import tap
from tests.helpers import TestCase
from tests.test_e2e import command, freePort

UNITS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "contrib", "systemd"
)


@pytest.mark.slow
class StartupFailureTests(TestCase):
    def setUp(self):
        super().setUp()
        subprocess.run([command("backup-certs"), "--dir", "certs"], check=True, capture_output=True)
        self.port = freePort()

    def start(self, *extra, dataDir="data", key="certs/server.key", cert="certs/server.pem"):
        """
        Run the server as its unit does (in the foreground).

        @return: C{(exit status, output, seconds taken)}.
        """
        argv = [
            command("twistd"),
            "-n",
            "--pidfile=",
            "--logfile=-",
            "backup-server",
            "--data-dir",
            dataDir,
            "--listen",
            f"ssl:{self.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}",
            *extra,
        ]
        began = time.monotonic()
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        self.assertNotIn("Unhandled Error", output)
        return result.returncode, output, time.monotonic() - began

    def assertRefused(self, expected, **kwargs):
        code, output, took = self.start(**kwargs)
        self.assertNotEqual(code, 0, output)
        lines = [line for line in output.splitlines() if "backup-server:" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(expected, lines[0])
        self.assertLess(took, 30)
        return lines[0]

    def test_portInUse(self):
        taken = socket.socket()
        taken.bind(("127.0.0.1", self.port))
        taken.listen()
        self.addCleanup(taken.close)
        line = self.assertRefused(f"cannot listen on ssl:{self.port}")
        self.assertIn("Address already in use", line)

    def test_missingKey(self):
        self.assertRefused("bad --listen", key="certs/none.key")

    def test_damagedCertificate(self):
        with open("certs/bad.pem", "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
        self.assertRefused("bad --listen", cert="certs/bad.pem")

    def test_keyOfAnotherCertificate(self):
        subprocess.run([command("backup-certs"), "--dir", "other"], check=True, capture_output=True)
        self.assertRefused("keys do not match", key="other/server.key")

    def test_dataFolderNotWritable(self):
        with open("afile", "w") as f:
            f.write("a file where the data folder's parent should be")
        self.assertRefused("cannot write to the data folder", dataDir="afile/data")

    def test_catalogDamaged(self):
        os.makedirs("data")
        with open("data/user.db", "wb") as f:
            f.write(b"this is not a database" * 100)
        self.assertRefused("cannot open the catalog")


class DataFolderTests(TestCase):
    def test_readOnlyFolder(self):
        """
        A folder that exists but cannot be written is refused, even for
        root (the check writes a file rather than asking C{access(2)}).
        """
        os.makedirs("data")
        self.patch(tap.tempfile, "TemporaryFile", _refuse)
        with self.assertRaises(tap.StartupError) as caught:
            tap.checkDataDir(os.path.abspath("data"))
        self.assertIn("Read-only file system", str(caught.exception))


def _refuse(**kwargs):
    raise OSError(30, "Read-only file system")


class SystemdUnitTests(TestCase):
    """
    The units parse, name commands that exist, and pass options the
    programs accept.
    """

    def units(self):
        return sorted(os.listdir(UNITS))

    def execLines(self, name):
        with open(os.path.join(UNITS, name)) as f:
            text = f.read().replace("\\\n", " ")
        return [
            line.split("=", 1)[1].split()
            for line in text.splitlines()
            if line.startswith(("ExecStart=", "ExecStartPost="))
        ]

    def test_verify(self):
        """
        C{systemd-analyze verify} accepts every unit, with the commands
        pointed at this installation, and warns of nothing.
        """
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            raise SkipTest("systemd-analyze is not installed")
        bin = os.path.dirname(command("twistd"))
        os.mkdir("units")
        for name in self.units():
            with open(os.path.join(UNITS, name)) as f:
                text = f.read().replace("/opt/backup-proto/bin", bin)
            with open(os.path.join("units", name), "w") as f:
                f.write(text)
        result = subprocess.run(
            [analyze, "verify", *(os.path.join("units", n) for n in self.units())],
            capture_output=True,
            text=True,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        problems = [
            line
            for line in result.stderr.splitlines()
            if "Unknown" in line or "ignoring" in line or "Invalid" in line
        ]
        self.assertEqual(problems, [])

    def test_serverOptions(self):
        """
        The server unit's options are the server's, and it stops more
        slowly than it drains.
        """
        (argv,) = self.execLines("backup-server.service")
        options = tap.Options()
        options.parseOptions(argv[argv.index("backup-server") + 1 :])
        self.assertEqual(options["data-dir"], "/var/lib/backup-server")
        with open(os.path.join(UNITS, "backup-server.service")) as f:
            text = f.read()
        self.assertIn("ReadWritePaths=/var/lib/backup-server", text)
        stop = int(text.split("TimeoutStopSec=")[1].split()[0])
        self.assertGreater(stop, options["shutdown-grace"])

    def test_clientOptions(self):
        """
        The client unit's commands parse as the client's.
        """
        from backup_client.cli import buildParser

        lines = self.execLines("backup-client.service")
        self.assertEqual(len(lines), 2)
        parser = buildParser()
        for argv in lines:
            args = parser.parse_args(argv[1:])
            self.assertIn(args.command, ("backup", "forget"))
