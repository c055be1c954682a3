"""
Excludes: gitignore-style patterns and cache folders, in the plan and
through the installed client.
"""

import json
import os

import pytest

from backup_client.excludes import CACHEDIR_SIGNATURE, Excludes
from backup_proto.archive.plan import planArchive
from tests.helpers import TestCase
from tests.test_e2e import EndToEndCase


def _write(path, data=b"x"):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _tree():
    _write("src/a.log")
    _write("src/keep.log")
    _write("src/notes.txt")
    _write("src/build/out.o")
    _write("src/lib/build/deep.o")
    _write("src/lib/code.py")
    _write("src/tmp")  # a file named like a folder pattern
    _write("src/cache/CACHEDIR.TAG", CACHEDIR_SIGNATURE + b"\n# a cache\n")
    _write("src/cache/blob")
    _write("src/fake/CACHEDIR.TAG", b"not the signature")
    _write("src/fake/blob")


def _paths(plan):
    return sorted(e.name.decode().rstrip("/") for e in plan.entries)


class ExcludeTests(TestCase):
    def test_patterns(self):
        """
        gitignore's rules: a pattern anywhere, an anchored one at the top,
        a folder-only one, and a negation.
        """
        excludes = Excludes(["*.log", "!keep.log", "/build", "tmp/"])
        self.assertTrue(excludes("a.log", False, "x"))
        self.assertTrue(excludes("lib/a.log", False, "x"))
        self.assertFalse(excludes("keep.log", False, "x"))
        self.assertTrue(excludes("build", True, "x"))
        self.assertFalse(excludes("lib/build", True, "x"))
        self.assertTrue(excludes("tmp", True, "x"))
        self.assertFalse(excludes("tmp", False, "x"))
        self.assertFalse(Excludes())

    def test_plan(self):
        """
        The plan leaves out what matches (a folder with all it holds) and
        valid cache folders, and counts what it left out.
        """
        _tree()
        excludes = Excludes(["*.log", "!keep.log", "/build", "tmp/"], caches=True)
        plan = planArchive("src", exclude=excludes)
        self.assertEqual(
            _paths(plan),
            [
                "src",
                "src/fake",
                "src/fake/CACHEDIR.TAG",
                "src/fake/blob",
                "src/keep.log",
                "src/lib",
                "src/lib/build",
                "src/lib/build/deep.o",
                "src/lib/code.py",
                "src/notes.txt",
                "src/tmp",
            ],
        )
        self.assertEqual(plan.report.excluded, 3)  # a.log, build, cache

    def test_files(self):
        _write("ignore", b"# comment\n\n*.txt\n")
        excludes = Excludes.fromOptions(["*.o"], ["ignore"], False)
        self.assertTrue(excludes("notes.txt", False, "x"))
        self.assertTrue(excludes("b/out.o", False, "x"))
        self.assertFalse(excludes("# comment", False, "x"))
        self.assertRaises(OSError, Excludes.fromOptions, [], ["missing"], False)


@pytest.mark.slow
class ExcludeEndToEndTests(EndToEndCase):
    def test_backupExcludes(self):
        _tree()
        _write("ignore", b"/build\n")
        self.ok("register")
        result = self.ok(
            "backup",
            "src",
            "--json",
            "--exclude",
            "*.log",
            "--exclude",
            "!keep.log",
            "--exclude-file",
            "ignore",
            "--exclude-caches",
        )
        self.assertEqual(json.loads(result.stdout)["excluded"], 3)
        listed = self.ok("ls").stdout.split()
        for gone in ("src/a.log", "src/build/", "src/cache/"):
            self.assertNotIn(gone, listed)
        for kept in ("src/keep.log", "src/lib/build/deep.o", "src/fake/blob"):
            self.assertIn(kept, listed)
        summary = self.ok("backup", "src", "--exclude", "*.log").stderr
        self.assertIn(" 2 excluded; sent ", summary)
        missing = self.client("backup", "src", "--exclude-file", "nope")
        self.assertEqual(missing.returncode, 2)
        self.assertIn("cannot read exclude file nope", missing.stderr)
