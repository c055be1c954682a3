"""
Tests for L{backup_proto.archive.spool} (deflate streams kept between a zip's plan
and its stream) and its use by L{backup_proto.archive.plan}.
"""

import errno
import os
import random
import threading

from backup_proto.archive import plan as planModule
from backup_proto.archive import spool as spoolModule
from backup_proto.archive.compression import SAMPLE_SIZE
from backup_proto.archive.format import DEFLATED
from backup_proto.archive.plan import planArchive
from backup_proto.archive.policy import COPY_BLOCK
from backup_proto.archive.spool import Spool
from backup_proto.archive.stream import ArchiveStream
from tests.helpers import TestCase, makeTrickyTree, treeSignature
from tests.test_zipstream import feed, readAll


def keep(spool, *pieces):
    keeper = spool.keeper()
    if keeper is None:
        return None
    for piece in pieces:
        keeper.write(piece)
    return keeper.finish()


def textTree(path, files=40, size=40_000):
    """
    A folder of compressible files of about C{size} to 4 x C{size} bytes.
    """
    os.mkdir(path)
    rng = random.Random(files)
    words = [f"{rng.random():.6f}"[2:] for _ in range(500)]
    for i in range(files):
        text = " ".join(rng.choice(words) for _ in range(size * (1 + i % 4) // 7))
        with open(os.path.join(path, f"f{i:03}.txt"), "w") as f:
            f.write(text)
    return path


class SpoolTests(TestCase):
    def test_readBack(self):
        """
        A kept stream reads back whole, in blocks, however it was written;
        streams kept after it do not disturb it.
        """
        spool = Spool(directory=".")
        self.addCleanup(spool.close)
        first = keep(spool, b"abc", b"", b"def")
        big = os.urandom(COPY_BLOCK + 5)
        second = keep(spool, big[:100], big[100:])
        self.assertEqual(b"".join(spool.read(first, 6)), b"abcdef")
        blocks = list(spool.read(second, len(big)))
        self.assertEqual([len(b) for b in blocks], [COPY_BLOCK, 5])
        self.assertEqual(b"".join(blocks), big)

    def test_threadsKeepApart(self):
        """
        Threads keep streams side by side, each in its own file.
        """
        spool = Spool(directory=".")
        self.addCleanup(spool.close)
        kept = {}

        def work(n):
            kept[n] = [keep(spool, bytes([n]) * (i + 1) * 1000) for i in range(20)]

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(len({where[0] for where in kept[0] + kept[3]}), 2)
        for n, wheres in kept.items():
            for i, where in enumerate(wheres):
                self.assertEqual(
                    b"".join(spool.read(where, (i + 1) * 1000)), bytes([n]) * (i + 1) * 1000
                )

    def test_limit(self):
        """
        A stream that would pass the limit is dropped, and the spool keeps
        nothing more after it.
        """
        spool = Spool(limit=1000, directory=".")
        self.addCleanup(spool.close)
        self.assertIsNotNone(keep(spool, b"x" * 600))
        self.assertIsNone(keep(spool, b"y" * 300, b"y" * 300))
        self.assertIsNone(keep(spool, b"z"))

    def test_diskFull(self):
        """
        A write that fails (a full disk) drops the stream and stops the
        spool; nothing is raised.
        """
        spool = Spool(directory=".")
        self.addCleanup(spool.close)

        def full(*args):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(spoolModule.os, "pwrite", full)
        self.assertIsNone(keep(spool, b"x" * 100))
        self.assertIsNone(spool.keeper())

    def test_closed(self):
        """
        A closed spool keeps nothing, and reading from it fails rather than
        reading some other file.
        """
        spool = Spool(directory=".")
        where = keep(spool, b"data")
        spool.close()
        spool.close()
        self.assertIsNone(spool.keeper())
        self.assertRaises(ValueError, list, spool.read(where, 4))

    def test_nothingNamed(self):
        """
        The spool's files have no names: its folder stays empty.
        """
        os.mkdir("tmp")
        spool = Spool(directory="tmp")
        keep(spool, b"data" * 1000)
        self.assertEqual(os.listdir("tmp"), [])
        spool.close()


class PlanSpoolTests(TestCase):
    def test_sameZip(self):
        """
        With a spool the plan keeps the stream of every deflated file over
        L{SAMPLE_SIZE} (not of smaller ones), and the zip is byte
        for byte the one made by deflating again.
        """
        src = makeTrickyTree(os.path.abspath("src"))
        textTree(os.path.join(src, "texts"))
        for compression in ("auto", "deflate"):
            plain = readAll(ArchiveStream(planArchive(src, compression=compression)))
            plan = planArchive(src, compression=compression, spool=Spool(directory="."))
            self.addCleanup(plan.close)
            deflated = [e for e in plan.entries if e.method == DEFLATED]
            big = [e.spooled is not None for e in deflated if e.usize > SAMPLE_SIZE]
            small = [e.spooled is None for e in deflated if e.usize <= SAMPLE_SIZE]
            self.assertGreater(len(big), 20)
            self.assertGreater(len(small), 5)
            self.assertTrue(all(big + small))
            self.assertEqual(readAll(ArchiveStream(plan)), plain)

    def test_notReadAgain(self):
        """
        Sending a spooled file does not read it again: it is sent as it was
        when planned, and the unpacked tree is the planned one.
        """
        src = textTree(os.path.abspath("src"), size=80_000)
        before = treeSignature(src)
        plan = planArchive(src, spool=Spool(directory="."))
        self.addCleanup(plan.close)
        for name in os.listdir(src):
            os.unlink(os.path.join(src, name))
        stream = ArchiveStream(plan)
        data = readAll(stream)
        self.assertEqual((len(data), stream.changed), (plan.size, []))
        feed(data, "out")
        self.assertEqual(treeSignature("out/src"), before)

    def test_partlySpooled(self):
        """
        When the spool fills up, the files past it are deflated again when
        sent; the zip is the same.
        """
        src = textTree(os.path.abspath("src"), size=80_000)
        plain = readAll(ArchiveStream(planArchive(src)))
        plan = planArchive(src, spool=Spool(limit=200_000, directory="."))
        self.addCleanup(plan.close)
        spooled = [
            e.spooled is not None
            for e in plan.entries
            if e.method == DEFLATED and e.usize > SAMPLE_SIZE
        ]
        self.assertIn(True, spooled)
        self.assertIn(False, spooled)
        self.assertEqual(readAll(ArchiveStream(plan)), plain)

    def test_changedWhileReadNotKept(self):
        """
        A file whose size or mtime differs from its listing once it is read
        is not kept: the stream reads it again, and reports the change.
        """
        src = textTree(os.path.abspath("src"), files=1, size=100_000)
        path = os.path.join(src, "f000.txt")
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
        spool = Spool(directory=".")
        self.addCleanup(spool.close)
        entry = planModule._planFile(path, "f000.txt", st, "auto", spool)
        self.assertEqual(entry.method, DEFLATED)
        self.assertIsNone(entry.spooled)
        unchanged = planModule._planFile(path, "f000.txt", os.stat(path), "auto", spool)
        self.assertIsNotNone(unchanged.spooled)

    def test_failedPlanClosesSpool(self):
        """
        A plan that fails closes the spool it was given.
        """
        spool = Spool(directory=".")
        self.assertRaises(FileNotFoundError, planArchive, "missing", spool=spool)
        self.assertIsNone(spool.keeper())
