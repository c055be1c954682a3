"""
The client's side of a restore: a malicious server's zip is refused and
nothing is written outside DEST; existing files are not overwritten unless
asked.
"""

import os
import stat

from backup_client.restoring import RestoreConflict, placeRestore
from backup_proto.archive.policy import ArchiveError, Limits
from backup_proto.archive.stream import writeArchive
from backup_proto.server.resources import RestoreArchives
from tests.helpers import (
    TestCase,
    clientKey,
    connectInMemory,
    fileSource,
    flush,
    makeFactory,
    zipSinks,
)
from tests.test_archive import D, F, L, craft


class MaliciousServerTests(TestCase):
    """
    The real server, patched to send crafted zips, and the real client.
    """

    def setUp(self):
        super().setUp()
        self.factory = makeFactory(os.path.abspath("data"))
        os.makedirs("src")
        with open("src/a", "w") as f:
            f.write("a")
        writeArchive("src", os.path.abspath("src.zip"))
        client, server, self.pump = connectInMemory(self.factory)
        self.client = client
        for step in (
            lambda: client.register("alice", "pw"),
            lambda: client.login("alice", "pw"),
            lambda: client.exchangeKeys(clientKey()),
        ):
            d = step()
            flush(self.pump, self.factory.clock)
            self.successResultOf(d)
        d = client.backup(*fileSource(os.path.abspath("src.zip")), "src", "dir")
        flush(self.pump, self.factory.clock)
        self.successResultOf(d)
        os.makedirs("outside")
        with open("outside/keep", "w") as f:
            f.write("precious")

    def restoreCrafted(self, entries):
        crafted = craft(os.path.abspath("evil.zip"), entries)

        class CraftedPlan:
            size = os.path.getsize(crafted)

            def close(self):
                pass

        self.factory.restores = RestoreArchives(
            self.factory.store.dataDir,
            plan=lambda *args, **kw: CraftedPlan(),
            planFromManifest=lambda *args, **kw: CraftedPlan(),
            stream=lambda plan, **kw: open(crafted, "rb"),
        )
        os.makedirs("work", exist_ok=True)
        d = self.client.restore(None, zipSinks("work"))
        flush(self.pump, self.factory.clock)
        begin, sink = self.successResultOf(d)
        zipPath = sink.path
        os.makedirs("dest", exist_ok=True)
        self.assertRaises(
            ArchiveError,
            placeRestore,
            zipPath,
            os.path.abspath("dest"),
            begin["name"],
            begin["kind"],
            Limits(),
        )
        self.assertEqual(os.listdir("dest"), [])
        with open("outside/keep") as f:
            self.assertEqual(f.read(), "precious")
        self.assertEqual(os.listdir("outside"), ["keep"])

    def test_traversal(self):
        """
        C{src/../../outside/keep} is refused.
        """
        self.restoreCrafted([("src/", b"", D), ("src/../../outside/keep", b"evil", F)])

    def test_absolute(self):
        """
        An absolute path is refused.
        """
        self.restoreCrafted([("src/", b"", D), (os.path.abspath("outside/keep"), b"evil", F)])

    def test_linkEscapingDest(self):
        """
        A link to a folder outside DEST with a file written through it is
        refused.
        """
        self.restoreCrafted(
            [
                ("src/", b"", D),
                ("src/out", os.path.abspath("outside").encode(), L),
                ("src/out/keep", b"evil", F),
            ]
        )

    def test_duplicates(self):
        """
        Duplicate names are refused.
        """
        self.restoreCrafted([("src/", b"", D), ("src/a", b"1", F), ("src/a", b"2", F)])

    def test_wrongRoot(self):
        """
        A zip whose root is not the announced snapshot name is refused.
        """
        self.restoreCrafted([("other/", b"", D), ("other/a", b"1", F)])


class PlacementTests(TestCase):
    def setUp(self):
        super().setUp()
        os.makedirs("src/sub")
        with open("src/a", "w") as f:
            f.write("new a")
        with open("src/sub/b", "w") as f:
            f.write("new b")
        writeArchive("src", "src.zip")

    def test_intoMissingDest(self):
        """
        DEST is created if missing.
        """
        placeRestore("src.zip", os.path.abspath("d/e"), "src", "dir", Limits())
        with open("d/e/src/sub/b") as f:
            self.assertEqual(f.read(), "new b")
        self.assertEqual(os.listdir("d/e"), ["src"])

    def test_failureLeavesNoDest(self):
        """
        A restore that fails leaves no trace of the DEST folders it made,
        and none of a DEST that was there before it.
        """
        os.makedirs("kept")
        with open("bad.zip", "wb") as f:
            f.write(b"not a zip at all")
        for dest in ("d/e", os.path.abspath("kept")):  # relative or not
            self.assertRaises(ArchiveError, placeRestore, "bad.zip", dest, "src", "dir", Limits())
        self.assertFalse(os.path.lexists("d"))
        self.assertEqual(os.listdir("kept"), [])

    def test_refuseConflict(self):
        """
        An existing file is not overwritten: the restore refuses before
        writing anything and names the conflict.
        """
        os.makedirs("dest/src/sub")
        with open("dest/src/sub/b", "w") as f:
            f.write("mine")
        e = self.assertRaises(
            RestoreConflict,
            placeRestore,
            "src.zip",
            os.path.abspath("dest"),
            "src",
            "dir",
            Limits(),
        )
        self.assertEqual(e.path, os.path.join("src", "sub", "b"))
        self.assertEqual(sorted(os.listdir("dest/src")), ["sub"])
        with open("dest/src/sub/b") as f:
            self.assertEqual(f.read(), "mine")
        self.assertEqual(sorted(os.listdir("dest")), ["src"])

    def test_overwrite(self):
        """
        With overwrite, existing files are replaced and others kept.
        """
        os.makedirs("dest/src/sub")
        for name, text in (("dest/src/sub/b", "mine"), ("dest/src/extra", "keep")):
            with open(name, "w") as f:
                f.write(text)
        placeRestore("src.zip", os.path.abspath("dest"), "src", "dir", Limits(), overwrite=True)
        with open("dest/src/sub/b") as f:
            self.assertEqual(f.read(), "new b")
        with open("dest/src/extra") as f:
            self.assertEqual(f.read(), "keep")
        self.assertEqual(sorted(os.listdir("dest")), ["src"])

    def test_folderNotReplacedByFile(self):
        """
        Even with overwrite, a folder is never replaced by a file.
        """
        os.makedirs("dest/src/a")
        self.assertRaises(
            RestoreConflict,
            placeRestore,
            "src.zip",
            os.path.abspath("dest"),
            "src",
            "dir",
            Limits(),
            overwrite=True,
        )
        self.assertTrue(os.path.isdir("dest/src/a"))

    def test_readOnlyFolders(self):
        """
        Read-only folders in a snapshot are restored read-only, after their
        contents.
        """
        os.chmod("src/sub", 0o555)
        try:
            writeArchive("src", "ro.zip")
        finally:
            os.chmod("src/sub", 0o755)
        placeRestore("ro.zip", os.path.abspath("dest"), "src", "dir", Limits())
        self.assertEqual(stat.S_IMODE(os.stat("dest/src/sub").st_mode), 0o555)
        with open("dest/src/sub/b") as f:
            self.assertEqual(f.read(), "new b")
        os.chmod("dest/src/sub", 0o755)
