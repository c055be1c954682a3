"""
Tests for L{backup_proto.archive} as a whole: fidelity, and refusal of unsafe zips.
"""

import os
import shutil
import stat
import zipfile

from backup_proto.archive.extract import extractStream
from backup_proto.archive.policy import ArchiveError, Limits
from backup_proto.archive.stream import writeArchive
from tests.helpers import TestCase, makeTrickyTree, treeSignature


def craft(path, entries):
    """
    Write a zip from C{(name, data, mode)} triples; C{mode} None leaves
    C{external_attr} at zero.
    """
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode, *rest in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            if mode is not None:
                info.external_attr = mode << 16
            if rest:
                info.compress_type = rest[0]
            zf.writestr(info, data)
    return path


F = stat.S_IFREG | 0o644
D = stat.S_IFDIR | 0o755
L = stat.S_IFLNK | 0o777


class RoundTripTests(TestCase):
    def test_tree(self):
        """
        Bytes, empty files and folders, modes, mtimes (to the second), and
        links with their targets survive making and unpacking.
        """
        src = makeTrickyTree(os.path.abspath("src"))
        os.utime(src, (1_500_000_000, 1_500_000_000))
        report = writeArchive(src, "t.zip")
        self.assertEqual((report.skipped, report.unreadable), ([], []))
        self.assertEqual(report.links, 2)
        with zipfile.ZipFile("t.zip") as zf:
            small = zf.getinfo("src/notes.txt")
            self.assertEqual(small.compress_type, zipfile.ZIP_DEFLATED)
            self.assertLess(small.compress_size, small.file_size)
            self.assertEqual(zf.getinfo("src/text.log").compress_type, zipfile.ZIP_STORED)
        os.mkdir("out")
        index = extractStream("t.zip", "out", Limits())
        self.assertEqual((index.root, index.kind), ("src", "dir"))
        self.assertEqual(treeSignature(src), treeSignature(os.path.join("out", "src")))
        self.assertEqual(int(os.stat("out/src").st_mtime), 1_500_000_000)

    def test_singleFile(self):
        """
        A single file is one entry named after it.
        """
        with open("one.txt", "wb") as f:
            f.write(b"x" * 1000)
        os.chmod("one.txt", 0o640)
        writeArchive("one.txt", "o.zip")
        with zipfile.ZipFile("o.zip") as zf:
            self.assertEqual(zf.namelist(), ["one.txt"])
        os.mkdir("out")
        index = extractStream("o.zip", "out", Limits())
        self.assertEqual((index.root, index.kind, index.files), ("one.txt", "file", 1))
        self.assertEqual(os.stat("out/one.txt").st_mode & 0o777, 0o640)

    def test_specialFilesSkipped(self):
        """
        FIFOs are skipped and reported; the rest is archived.
        """
        os.makedirs("src")
        os.mkfifo("src/pipe")
        with open("src/ok", "w") as f:
            f.write("ok")
        report = writeArchive("src", "s.zip")
        self.assertEqual(len(report.skipped), 1)
        self.assertIn("pipe", report.skipped[0])
        with zipfile.ZipFile("s.zip") as zf:
            self.assertEqual(sorted(zf.namelist()), ["src/", "src/ok"])

    def test_unreadableReported(self):
        """
        A file or folder that cannot be read is reported, the rest archived.
        (Permission errors are simulated: the suite may run as root.)
        """
        from backup_proto.archive import plan as archive

        os.makedirs("src/locked")
        for name in ("secret", "fine"):
            with open(f"src/{name}", "w") as f:
                f.write("x")
        realOpen, realScandir = archive.os.open, archive.os.scandir

        def deniedOpen(path, *args, **kwargs):
            if str(path).endswith("secret"):
                raise PermissionError(13, "Permission denied", path)
            return realOpen(path, *args, **kwargs)

        def deniedScandir(path):
            if str(path).endswith("locked"):
                raise PermissionError(13, "Permission denied", path)
            return realScandir(path)

        self.patch(archive.os, "open", deniedOpen)
        self.patch(archive.os, "scandir", deniedScandir)
        report = writeArchive("src", os.path.abspath("u.zip"))
        self.assertEqual(
            sorted(report.unreadable),
            ["src/locked: Permission denied", "src/secret: Permission denied"],
        )
        with zipfile.ZipFile("u.zip") as zf:
            self.assertEqual(sorted(zf.namelist()), ["src/", "src/fine", "src/locked/"])

    def test_compressionChoice(self):
        """
        In auto mode text is deflated; random data, and data that would
        expand past the server's ratio limit, are stored.
        """
        os.makedirs("src")
        import random

        words = ["alpha", "beta", "gamma", "delta", "backup", "twisted", "zip", "log"]
        rng = random.Random(1)
        with open("src/text.txt", "w") as f:
            f.write(" ".join(rng.choice(words) for _ in range(30000)))
        with open("src/zeros.txt", "wb") as f:
            f.write(b"\0" * 200_000)
        with open("src/noise.dat", "wb") as f:
            f.write(os.urandom(100_000))
        writeArchive("src", "c.zip")
        with zipfile.ZipFile("c.zip") as zf:
            self.assertEqual(zf.getinfo("src/text.txt").compress_type, zipfile.ZIP_DEFLATED)
            self.assertEqual(zf.getinfo("src/noise.dat").compress_type, zipfile.ZIP_STORED)
            # expands too much for the server's ratio limit: stored
            self.assertEqual(zf.getinfo("src/zeros.txt").compress_type, zipfile.ZIP_STORED)


class FastDeflateTests(TestCase):
    def test_fastStreamsAreStandard(self):
        """
        Deflated entries are written by zlib-ng and read back by ISA-L, and
        a stock zipfile (zlib) reads them too.
        """
        from isal import isal_zlib
        from zlib_ng import zlib_ng

        from backup_proto.archive import compression as archive

        calls = []
        real = zlib_ng.compressobj, isal_zlib.decompressobj
        self.patch(archive.zlib_ng, "compressobj", lambda *a: calls.append("c") or real[0](*a))
        self.patch(isal_zlib, "decompressobj", lambda *a: calls.append("d") or real[1](*a))
        os.makedirs("src")
        import random

        rng = random.Random(2)
        text = " ".join(rng.choice(["backup", "zip", "deflate", "isal"]) for _ in range(50000))
        with open("src/t.txt", "w") as f:
            f.write(text)
        writeArchive("src", "d.zip")
        with zipfile.ZipFile("d.zip") as zf:
            self.assertEqual(zf.getinfo("src/t.txt").compress_type, zipfile.ZIP_DEFLATED)
            self.assertEqual(zf.read("src/t.txt").decode(), text)
        os.mkdir("out")
        extractStream("d.zip", "out", Limits())
        with open("out/src/t.txt") as f:
            self.assertEqual(f.read(), text)
        # the sample, counting the deflated size in the plan (the stream
        # sends that one, kept in the spool), reading
        self.assertEqual(calls, ["c", "c", "d"])


class RefusalTests(TestCase):
    """
    Each crafted archive is refused, nothing is written outside the target
    folder (which the caller then removes), and no link is made.
    """

    def refuse(self, entries, limits=None, match=None):
        path = craft(os.path.abspath("bad.zip"), entries)
        os.makedirs("out", exist_ok=True)
        e = self.assertRaises(ArchiveError, extractStream, path, "out", limits or Limits())
        if match:
            self.assertIn(match, str(e))
        self.assertEqual(sorted(os.listdir(".")), ["bad.zip", "out"])
        for root, dirs, files in os.walk("out"):
            for name in dirs + files:
                self.assertFalse(os.path.islink(os.path.join(root, name)))
        shutil.rmtree("out")  # as the caller does
        return e

    def test_traversal(self):
        """
        A C{..} component is refused.
        """
        self.refuse([("r/", b"", D), ("r/../../x", b"evil", F)], match="'..'")

    def test_absolute(self):
        """
        An absolute path is refused.
        """
        self.refuse([("/etc/x", b"evil", F)], match="absolute")

    def test_drive(self):
        """
        A drive letter is refused.
        """
        self.refuse([("C:/x", b"evil", F)], match="drive")

    def test_backslash(self):
        """
        A backslash is refused.
        """
        self.refuse([("r/..\\..\\x", b"evil", F)], match="backslash")

    def test_emptyComponent(self):
        """
        An empty or C{.} component is refused.
        """
        self.refuse([("r//x", b"", F)])
        self.refuse([("r/./x", b"", F)])

    def test_controlCharacters(self):
        """
        NUL and control characters are refused.
        """
        self.refuse([("r/a\x01b", b"", F)], match="control")

    def test_duplicate(self):
        """
        Two entries with one name are refused.
        """
        self.refuse([("r/", b"", D), ("r/a", b"1", F), ("r/a", b"2", F)], match="two entries")

    def test_fileAndDirSameName(self):
        """
        A file and a folder with one name are refused.
        """
        self.refuse([("r/", b"", D), ("r/a", b"1", F), ("r/a/", b"", D)])

    def test_duplicateAfterNFC(self):
        """
        Two names that are one name in Unicode normal form C (here an
        C{e} with its accent composed, and one with it apart) are refused.
        """
        self.refuse(
            [("r/", b"", D), ("r/caf\u00e9", b"1", F), ("r/cafe\u0301", b"2", F)],
            match="two entries",
        )

    def test_belowFileAfterNFC(self):
        """
        An entry below a file named the same in normal form C is refused,
        at any depth.
        """
        self.refuse(
            [("r/", b"", D), ("r/caf\u00e9", b"1", F), ("r/cafe\u0301/x", b"2", F)],
            match="below a file or link",
        )
        self.refuse(
            [("r/", b"", D), ("r/a/", b"", D), ("r/a/b", b"1", F), ("r/a/b/c/d", b"2", F)],
            match="below a file or link",
        )

    def test_fileWhereFolderWasImplied(self):
        """
        A file named (after NFC) like a folder that earlier entries only
        implied, then another entry in that folder: refused, although the
        reader checks a folder's ancestors once for all its entries.
        """
        self.refuse(
            [
                ("r/", b"", D),
                ("r/cafe\u0301/x", b"1", F),
                ("r/caf\u00e9", b"2", F),
                ("r/cafe\u0301/y", b"3", F),
            ],
            match="below a file or link",
        )

    def test_writeThroughLink(self):
        """
        An entry below a link (link then file through it) is refused.
        """
        self.refuse(
            [("r/", b"", D), ("r/evil", b"/etc", L), ("r/evil/passwd", b"x", F)],
            match="below a file or link",
        )

    def test_escapingLinkThenFile(self):
        """
        A relative link escaping the root, with an entry written through it,
        is refused.
        """
        self.refuse([("r/", b"", D), ("r/up", b"../../outside", L), ("r/up/x", b"x", F)])

    def test_specialTypes(self):
        """
        FIFOs, devices and sockets are refused.
        """
        for fmt in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            self.refuse([("r", b"", fmt | 0o644)], match="not a file, folder or link")

    def test_multipleRoots(self):
        """
        Entries under two top-level names are refused.
        """
        self.refuse([("a/", b"", D), ("b/", b"", D)], match="more than one top-level")

    def test_linkRoot(self):
        """
        A top-level link is refused.
        """
        self.refuse([("r", b"/etc", L)])

    def test_tooManyEntries(self):
        """
        More entries than the limit are refused.
        """
        entries = [("r/", b"", D)] + [(f"r/{i}", b"", F) for i in range(10)]
        self.refuse(entries, Limits(maxEntries=5), match="more than 5 entries")

    def test_tooLarge(self):
        """
        More bytes than the limit are refused.
        """
        self.refuse([("r", b"x" * 1000, F)], Limits(maxUnpacked=999), match="more than 999")

    def test_ratioBomb(self):
        """
        An entry that expands too much is refused.
        """
        self.refuse(
            [("r", b"\0" * (3 << 20), F, zipfile.ZIP_DEFLATED)],
            Limits(maxRatio=100),
            match="expands",
        )

    def test_encrypted(self):
        """
        Encrypted entries are refused.
        """
        path = craft(os.path.abspath("enc.zip"), [("r", b"data", F)])
        with open(path, "r+b") as f:
            data = bytearray(f.read())
        # set bit 0 of the general purpose flags in both headers
        data[6] |= 1
        cd = data.rfind(b"PK\x01\x02")
        data[cd + 8] |= 1
        with open(path, "wb") as f:
            f.write(data)
        os.mkdir("out")
        self.assertRaises(ArchiveError, extractStream, path, "out", Limits())

    def test_notAZip(self):
        """
        Garbage is refused as not a zip.
        """
        with open("g.zip", "wb") as f:
            f.write(b"garbage" * 100)
        os.mkdir("out")
        self.assertRaises(ArchiveError, extractStream, "g.zip", "out", Limits())

    def test_nestedZipIsJustAFile(self):
        """
        A zip inside the zip is stored as a file, never opened.
        """
        craft("inner.zip", [("r/", b"", D), ("r/../x", b"", F)])
        with open("inner.zip", "rb") as f:
            inner = f.read()
        craft("outer.zip", [("r/", b"", D), ("r/inner.zip", inner, F)])
        os.mkdir("out")
        extractStream("outer.zip", "out", Limits())
        with open("out/r/inner.zip", "rb") as f:
            self.assertEqual(f.read(), inner)
