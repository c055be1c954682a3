"""
Tests for the test helpers that other tests' verdicts rest on.
"""

import os

from tests.helpers import TestCase, treeSignature


class TreeSignatureTests(TestCase):
    def test_nanoseconds(self):
        """
        Times are compared to the nanosecond: a time just before a whole
        second is not that second (the float C{st_mtime} would round it up).
        """
        os.mkdir("tree")
        with open("tree/file", "wb") as f:
            f.write(b"data")
        almost = 1_764_500_000 * 10**9 + 999_999_950
        os.utime("tree/file", ns=(almost, almost))
        self.assertEqual(int(os.stat("tree/file").st_mtime), 1_764_500_001)
        self.assertEqual(treeSignature("tree")["file"][2], almost)

    def test_contentCompared(self):
        """
        Files that differ only in content (same length) give different
        signatures.
        """
        for name, data in (("a", b"one"), ("b", b"two")):
            os.makedirs(name)
            with open(os.path.join(name, "file"), "wb") as f:
                f.write(data)
            os.utime(os.path.join(name, "file"), (1_600_000_000, 1_600_000_000))
        self.assertNotEqual(treeSignature("a"), treeSignature("b"))
