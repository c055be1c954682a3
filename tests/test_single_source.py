"""
What is defined once in the code and repeated in the docs or the
database stays the same everywhere: the version, the default port, the
snapshot's fields and the client's exit codes.
"""

import importlib.metadata
import os
import re

import backup_proto
from backup_client import exitcodes
from backup_proto.server.database import Database
from backup_proto.wire.frames import DEFAULT_PORT, SNAPSHOT_FIELDS
from tests.helpers import TestCase, runNow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(*path):
    with open(os.path.join(ROOT, *path), encoding="utf-8") as f:
        return f.read()


class SingleSourceTests(TestCase):
    def test_version(self):
        """
        The installed distribution's version is the package's.
        """
        self.assertEqual(importlib.metadata.version("backup-proto"), backup_proto.__version__)

    def test_defaultPort(self):
        """
        The protocol spec and the README name the default port the code
        uses.
        """
        spec = re.search(r"default port (\d+)", read("docs", "protocol.rst"))
        self.assertEqual(int(spec.group(1)), DEFAULT_PORT)
        self.assertIn(f"ssl:{DEFAULT_PORT}:", read("README.rst"))

    def test_snapshotFields(self):
        """
        The spec's snapshot and the catalog's columns are the wire's
        snapshot fields, in order.
        """
        spec = re.search(r"A \*snapshot\* is ``\{(.*?)\}``", read("docs", "protocol.rst"), re.S)
        documented = re.findall(r'"(\w+)"', spec.group(1))
        self.assertEqual(documented, list(SNAPSHOT_FIELDS))
        db = Database(os.path.abspath("user.db"), runNow)
        columns = db.runSync(
            lambda conn: [row[1] for row in conn.execute("PRAGMA table_info(snapshots)")]
        )
        db.close()
        # and its own: the manifest's digest and entry count, the state and
        # when it last changed
        self.assertEqual(
            columns, ["username", *SNAPSHOT_FIELDS, "manifest", "entries", "state", "changed"]
        )

    def test_exitCodes(self):
        """
        README's exit code table lists exactly the codes the client uses,
        with their meanings.
        """
        readme = read("README.rst")
        section = readme[readme.index("Exit codes\n----------") :]
        table = section[: section.index("How it works")]
        rows = re.findall(r"^(\d+) +\S", table, re.M)
        self.assertEqual([int(code) for code in rows], sorted(exitcodes.MEANINGS))
        for code, meaning in exitcodes.MEANINGS.items():
            self.assertRegex(table, rf"(?m)^{code} +{re.escape(meaning)}")
