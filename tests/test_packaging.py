"""
The wheel ships the twistd plugin and the right import names, and a fresh
install from it shows C{backup-server} in C{twistd --help} from anywhere
(a plain C{find:} in setup.cfg silently drops C{twisted.plugins}, and the
plugin never shows up).
"""

import glob
import os
import subprocess
import sys
import zipfile

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

from tests.helpers import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
class PackagingTests(TestCase):
    def test_pluginVisibleHere(self):
        """
        In this environment twistd finds the plugin.
        """
        self.assertIn("backup-server", [p.tapname for p in getPlugins(IServiceMaker)])

    def test_clientLeavesServerOut(self):
        """
        The client does not import the server's modules: every client
        command would pay for loading them (the accounts database, the
        storage layout), and the protocol rules both sides share are in
        L{backup_proto.wire.frames}.
        """
        code = (
            "import sys, backup_client.cli; "
            "print(sorted(m for m in sys.modules if m in ("
            "'backup_proto.server.protocol', 'backup_proto.server.accounts',"
            " 'backup_proto.server.database', 'backup_proto.server.storage', 'sqlite3')))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        )
        self.assertEqual(result.stdout.strip(), "[]")

    def test_wheelInstallsPlugin(self):
        """
        The wheel holds the plugin file but not Twisted's package files, the
        client as backup_client (no top-level 'client'); installed into a
        new virtualenv, twistd lists backup-server from another folder and
        both console scripts run.
        """
        # the outer environment stays out: trial -j gives its workers this
        # interpreter's path in PYTHONPATH, and the new venv's pip would
        # then take its dependencies as installed
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))
        }
        dist = os.path.abspath("dist")
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT],
            check=True,
            capture_output=True,
            env=env,
        )
        (wheel,) = glob.glob(os.path.join(dist, "backup_proto-*.whl"))
        names = zipfile.ZipFile(wheel).namelist()
        self.assertIn("twisted/plugins/backup_server.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("backup_client/cli.py", names)
        self.assertIn("backup_proto/server/tap.py", names)
        self.assertIn("backup_proto/wire/frames.py", names)
        self.assertIn("backup_proto/archive/extract.py", names)
        self.assertFalse([n for n in names if n.startswith("client/")])
        self.assertFalse([n for n in names if n.startswith("tests/")])

        venv = os.path.abspath("venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, env=env)
        subprocess.run(
            [os.path.join(venv, "bin", "pip"), "install", "-q", wheel],
            check=True,
            capture_output=True,
            env=env,
        )
        elsewhere = os.path.abspath("elsewhere")
        os.makedirs(elsewhere)
        out = subprocess.run(
            [os.path.join(venv, "bin", "twistd"), "--help"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        self.assertIn("backup-server", out)
        out = subprocess.run(
            [os.path.join(venv, "bin", "twistd"), "backup-server", "--help"],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        self.assertIn("--listen", out)
        for script in ("backup-client", "backup-certs"):
            result = subprocess.run(
                [os.path.join(venv, "bin", script), "--help"],
                cwd=elsewhere,
                capture_output=True,
                text=True,
                env=env,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
