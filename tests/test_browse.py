"""
Looking inside snapshots from their manifests (ls, find, diff), partial
restores, and conflicts found before a restore's data moves: the pieces in
process, then the installed client against a real server.
"""

import json
import os
import shutil
import subprocess

import pytest

from backup_client.browse import (
    RestoreCheck,
    conflictReport,
    diff,
    longLine,
    matches,
    under,
)
from backup_client.commands.restore import includePath, pickSnapshot
from backup_client.exitcodes import Fatal
from backup_proto.archive.manifest import selectEntries
from backup_proto.wire.errors import Code
from backup_proto.wire.frames import Msg
from tests.helpers import TestCase
from tests.test_e2e import EndToEndCase, command
from tests.test_incremental import IncrementalCase
from tests.wire import Wire

ROOT = (0, 0, "root", "root")
ENTRIES = [
    ("src", "dir", 0, 10**18, 0o755, None, None, ROOT, None),
    ("src/a.txt", "file", 3, 10**18, 0o644, None, 111, ROOT, None),
    ("src/sub", "dir", 0, 10**18, 0o700, None, None, ROOT, None),
    ("src/sub/b.py", "file", 5, 10**18, 0o600, None, 222, (1000, 50, None, "staff"), None),
    ("src/sub/link", "link", 5, 10**18, 0o777, "b.py", 333, ROOT, None),
    ("src/subway", "file", 1, 10**18, 0o644, None, 444, None, None),
]


class BrowseTests(TestCase):
    def test_under(self):
        self.assertEqual(
            [e[0] for e in under(ENTRIES, "/src/sub/")], ["src/sub", "src/sub/b.py", "src/sub/link"]
        )
        self.assertEqual(len(under(ENTRIES, "")), len(ENTRIES))
        self.assertEqual(under(ENTRIES, "src/none"), [])

    def test_longLine(self):
        self.assertEqual(
            longLine(ENTRIES[4]),
            "lrwxrwxrwx root/root                    5 2001-09-09T01:46:40Z  src/sub/link -> b.py",
        )
        self.assertTrue(longLine(ENTRIES[2]).startswith("drwx------"))
        self.assertIn(" 1000/staff ", longLine(ENTRIES[3]))
        self.assertIn(" ?/? ", longLine(ENTRIES[5]))  # recorded before owners were
        member = ("src/b", "file", 5, 0, 0o4755, None, 222, ROOT, "src/sub/b.py")
        self.assertTrue(longLine(member).startswith("-rwsr-xr-x root/root"))
        self.assertTrue(longLine(member).endswith("src/b link to src/sub/b.py"))

    def test_matches(self):
        self.assertTrue(matches("*.py", "src/sub/b.py"))
        self.assertFalse(matches("sub", "src/subway"))
        self.assertTrue(matches("src/sub/*", "src/sub/link"))
        self.assertFalse(matches("sub/*", "src/sub/link"))

    def test_diff(self):
        new = [e for e in ENTRIES if e[0] != "src/a.txt"]
        new[1] = ("src/sub", "dir", 0, 10**18, 0o700, None, None, (5, 0, "x", "root"), None)
        new[2] = ("src/sub/b.py", "file", 6, 10**18 + 1, 0o644, None, 999, ROOT, "src/sub/b.py")
        new[3] = ("src/sub/link", "file", 5, 10**18, 0o644, None, 333, ROOT, None)
        new[4] = ("src/subway", "file", 1, 10**18, 0o644, None, 444, ROOT, None)
        new.append(("src/c", "file", 0, 1, 0o644, None, 0, None, None))
        added, removed, changed = diff(ENTRIES, new)
        self.assertEqual((added, removed), (["src/c"], ["src/a.txt"]))
        self.assertEqual(
            changed,
            [
                ("src/sub", ["owner"]),
                ("src/sub/b.py", ["size", "content", "mode", "owner", "hardlink", "time"]),
                ("src/sub/link", ["type"]),
            ],
        )  # src/subway: an owner newly recorded is no change

    def test_selectEntries(self):
        """
        A partial restore holds the paths asked for, what is below them,
        and the folders above them; not a sibling that shares a prefix.
        """
        chosen = [e[0] for e in selectEntries(ENTRIES, ["src/sub/b.py"])]
        self.assertEqual(chosen, ["src", "src/sub", "src/sub/b.py"])
        chosen = [e[0] for e in selectEntries(ENTRIES, ["src/sub"])]
        self.assertEqual(chosen, ["src", "src/sub", "src/sub/b.py", "src/sub/link"])

    def test_restoreCheck(self):
        """
        Every conflict is found from the manifest, by the restore's rules;
        include paths that match nothing are named.
        """
        os.makedirs("dest/src/sub/b.py")  # a folder where a file goes
        with open("dest/src/a.txt", "w") as f:
            f.write("mine")
        open("dest/src/subway", "w").close()
        check = RestoreCheck(os.path.abspath("dest"), overwrite=False)
        for entry in ENTRIES:
            check.add(entry)
        self.assertEqual(
            sorted(check.conflicts),
            [
                ("src/a.txt", "already exists"),
                ("src/sub/b.py", "is a folder; it will not be replaced by a file"),
                ("src/subway", "already exists"),
            ],
        )
        check = RestoreCheck(os.path.abspath("dest"), overwrite=True, include=["src/sub", "src/x"])
        for entry in ENTRIES:
            check.add(entry)
        self.assertEqual(
            check.conflicts, [("src/sub/b.py", "is a folder; it will not be replaced by a file")]
        )
        self.assertEqual(check.unmatched, {"src/x"})
        report = conflictReport([(f"p{i:02}", "already exists") for i in range(25)])
        self.assertIn("25 paths in the way", report)
        self.assertIn("p19 already exists", report)
        self.assertNotIn("p20", report)
        self.assertIn("... and 5 more", report)

    def test_pickSnapshot(self):
        rows = [
            {"id": "a-1", "source": "a"},
            {"id": "b-1", "source": "b"},
            {"id": "a-2", "source": "a"},
        ]
        self.assertEqual(pickSnapshot(rows, "b-1", None)["id"], "b-1")
        self.assertEqual(pickSnapshot(rows, None, "a")["id"], "a-2")
        e = self.assertRaises(Fatal, pickSnapshot, rows, None, None)
        self.assertEqual(e.code, 2)
        self.assertIn("name one with --source", e.message)
        self.assertEqual(pickSnapshot(rows[:1], None, None)["id"], "a-1")
        self.assertEqual(self.assertRaises(Fatal, pickSnapshot, rows, None, "c").code, 1)
        self.assertEqual(includePath("src", "/sub/b.py"), "src/sub/b.py")
        self.assertEqual(includePath("src", "src/sub"), "src/sub")
        self.assertEqual(includePath("src", "src"), "src")


class PartialRestoreServerTests(IncrementalCase):
    def test_includeOnTheWire(self):
        """
        RESTORE with include sends a zip of only those paths; paths that
        match nothing are a non-fatal not-found; malformed ones are fatal.
        """
        client = self.keyed()
        snap = self.fullBackup(client)
        inside = sorted(os.listdir(self.src))
        wanted = next(n for n in inside if os.path.isdir(os.path.join(self.src, n)))
        wire = Wire(self.factory).keyed(register=False)
        wire.received()
        wire.sendControl(Msg.RESTORE, snapshot=snap["id"], include=[f"src/{wanted}"])
        frames = wire.received()
        begin = frames[0][1]
        self.assertEqual(frames[0][0], Msg.RESTORE_BEGIN)
        self.assertLess(begin["size"], snap["zip_size"])
        crc = [f for k, f in frames if k is Msg.CKSUM][0]["crc"]
        wire.sendControl(Msg.COMMIT, crc=crc)
        self.assertEqual(wire.last()[0], Msg.DONE)
        wire.sendControl(Msg.RESTORE, snapshot=snap["id"], include=["src/nothing-here"])
        kind, fields = wire.last()
        self.assertEqual(
            (kind, fields["code"], fields["fatal"]), (Msg.ERROR, Code.NOT_FOUND, False)
        )
        wire.sendControl(Msg.RESTORE, snapshot=snap["id"], include=["/src"])
        kind, fields = wire.last()
        self.assertEqual((fields["code"], fields["fatal"]), (Code.BAD_MESSAGE, True))


def _write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(data)


@pytest.mark.slow
class BrowseEndToEndTests(EndToEndCase):
    def test_lsFindDiff(self):
        _write("src/a.txt", "one")
        _write("src/sub/b.py", "print(1)")
        self.ok("register")
        first = self.ok("backup", "src").stdout.strip()
        _write("src/a.txt", "one and more")
        os.remove("src/sub/b.py")
        _write("src/sub/c.py", "print(2)")
        second = self.ok("backup", "src").stdout.strip()
        # list shows sizes for people: 11 and 20 bytes of files
        table = self.ok("list").stdout
        self.assertRegex(table, rf"{first} .* 11 B +11 B  src\n")
        self.assertRegex(table, rf"{second} .* 20 B +\d+ B  src\n")
        listed = self.ok("ls", first).stdout.split()
        self.assertEqual(listed, ["src/", "src/a.txt", "src/sub/", "src/sub/b.py"])
        self.assertEqual(
            self.ok("ls", "--source", "src", "sub").stdout.split(), ["src/sub/", "src/sub/c.py"]
        )
        long = self.ok("ls", second, "src/a.txt", "--long").stdout
        self.assertRegex(long, r"^-rw\S+ \S+/\S+ +12 \d{4}-\d\d-\d\dT\S+Z  src/a.txt\n$")
        entries = json.loads(self.ok("ls", "--json").stdout)["entries"]
        self.assertEqual(entries[1]["path"], "src/a.txt")
        self.assertEqual(entries[1]["size"], 12)
        found = self.ok("find", "*.py").stdout
        self.assertEqual(
            found.splitlines()[0::2],
            [f"{second} ({self.created(second)}):", f"{first} ({self.created(first)}):"],
        )
        self.assertIn("src/sub/b.py", found.split(f"{first} (")[1])
        none = self.client("find", "*.rs")
        self.assertEqual(none.returncode, 1)
        self.assertIn("no snapshot holds a path matching '*.rs'", none.stderr)
        changes = self.ok("diff", first, second).stdout.splitlines()
        self.assertEqual(
            changes, ["M src/a.txt (size, content, time)", "- src/sub/b.py", "+ src/sub/c.py"]
        )
        version = subprocess.run(
            [command("backup-client"), "--version"], capture_output=True, text=True
        )
        self.assertRegex(version.stdout, r"^backup-client \d+\.\d+")

    def created(self, snapshotId):
        rows = json.loads(self.ok("list", "--json").stdout)
        return [r["created"] for r in rows if r["id"] == snapshotId][0]

    def test_partialRestoreAndConflicts(self):
        """
        --include restores one subtree; conflicts are all named before any
        data moves (the server logs no restore); --source picks, and two
        sources without it are a usage error.
        """
        for i in range(25):
            _write(f"src/f{i:02}", str(i))
        _write("src/sub/deep/x", "x")
        _write("other/o", "o")
        self.ok("register")
        self.ok("backup", "src")
        self.ok("backup", "other")
        ambiguous = self.client("restore", "dest")
        self.assertEqual(ambiguous.returncode, 2)
        self.assertIn("2 sources (other, src)", ambiguous.stderr)
        result = self.ok("restore", "dest", "--source", "src", "--include", "sub")
        self.assertEqual(sorted(os.listdir("dest/src")), ["sub"])
        with open("dest/src/sub/deep/x") as f:
            self.assertEqual(f.read(), "x")
        self.assertIn("restored src-", result.stdout)
        shutil.rmtree("dest")
        for i in range(22):
            _write(f"dest/src/f{i:02}", "mine")
        sending = self.server.logText().count(" sending ")
        self.assertEqual(sending, 1)
        refused = self.client("restore", "dest", "--source", "src")
        self.assertEqual(refused.returncode, 1)
        self.assertIn("22 paths in the way of the restore", refused.stderr)
        self.assertIn("src/f19 already exists", refused.stderr)
        self.assertIn("... and 2 more", refused.stderr)
        # the server sent no restore
        self.assertEqual(self.server.logText().count(" sending "), sending)
        missing = self.client("restore", "dest", "--source", "src", "--include", "nope")
        self.assertEqual(missing.returncode, 1)
        self.assertIn("not in snapshot", missing.stderr)

    def test_unreachableMessage(self):
        refused = self.client("list", server="127.0.0.1:1")
        self.assertEqual(refused.returncode, 4)
        self.assertIn("connection refused", refused.stderr)
        unknown = self.client("list", server="no-such-host.invalid:40445")
        self.assertEqual(unknown.returncode, 4)
        self.assertIn("no such host", unknown.stderr)
