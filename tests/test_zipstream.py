"""
Tests for L{backup_proto.archive.plan} and L{backup_proto.archive.stream}
(a zip made as it is read) and L{backup_proto.archive.extract} (a zip
unpacked as it arrives).
"""

import itertools
import os
import random
import stat
import struct
import threading
import time
import tracemalloc
import zipfile
from datetime import datetime

from backup_proto.archive import directio
from backup_proto.archive import format as formatModule
from backup_proto.archive import plan as planModule
from backup_proto.archive.compression import SAMPLE_SIZE, deflateWhole, rawDeflate
from backup_proto.archive.directio import readAheadThreads
from backup_proto.archive.extract import ExtractSink, StreamingExtractor, extractStream
from backup_proto.archive.format import CENTRAL_SIG, EOCD64_SIG
from backup_proto.archive.plan import planArchive
from backup_proto.archive.policy import ArchiveError, Limits, NameIndex
from backup_proto.archive.stream import ArchiveChanged, ArchiveStream, writeArchive
from tests.helpers import TestCase, makeTrickyTree, treeSignature
from tests.test_archive import D, F, craft


def readAll(stream, piece=65536):
    parts = []
    while True:
        data = stream.read(piece)
        if not data:
            return b"".join(parts)
        parts.append(data)


def feed(data, dest, piece=7919, limits=None):
    """
    Unpack C{data} with a L{StreamingExtractor}, C{piece} bytes at a time.
    """
    os.mkdir(dest)
    extractor = StreamingExtractor(dest, limits)
    try:
        for i in range(0, len(data), piece):
            extractor.write(data[i : i + piece])
        return extractor.finish()
    finally:
        extractor.close()


class StreamRoundTripTests(TestCase):
    def test_tree(self):
        """
        The planned size is exactly the stream's length; any zip reader
        reads the stream; unpacked as it arrives, in odd-sized pieces, the
        tree is identical (bytes, modes, mtimes, links).
        """
        src = makeTrickyTree(os.path.abspath("src"))
        for compression in ("auto", "store", "deflate"):
            plan = planArchive(src, compression=compression)
            data = readAll(ArchiveStream(plan))
            self.assertEqual(len(data), plan.size)
            with open(f"{compression}.zip", "wb") as f:
                f.write(data)
            with zipfile.ZipFile(f"{compression}.zip") as zf:
                self.assertIsNone(zf.testzip())
                methods = {i.compress_type for i in zf.infolist() if i.file_size > 1000}
            expected = {
                "store": {zipfile.ZIP_STORED},
                "deflate": {zipfile.ZIP_DEFLATED},
                "auto": {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED},
            }[compression]
            self.assertEqual(methods, expected)
            index = feed(data, f"out-{compression}")
            self.assertEqual((index.root, index.kind), ("src", "dir"))
            self.assertEqual(treeSignature(src), treeSignature(f"out-{compression}/src"))

    def test_anyPieces(self):
        """
        Headers that arrive whole in one piece are read in one step
        (L{StreamingExtractor._wholeLocal}, C{_wholeCentral}); whatever the
        pieces, the tree, the index and the position are the same, and so
        is the refusal of a zip whose central directory disagrees with a
        local header.
        """
        src = makeTrickyTree(os.path.abspath("src"))
        data = readAll(ArchiveStream(planArchive(src)))
        central = data.index(struct.pack("<I", CENTRAL_SIG))
        bad = bytearray(data)
        bad[central + 16] ^= 1  # the first central record's CRC
        indexes = set()
        for piece in (1, 29, 46, 997, len(data)):
            extractor = StreamingExtractor(os.path.abspath(f"out-{piece}"))
            os.mkdir(f"out-{piece}")
            for i in range(0, len(data), piece):
                extractor.write(data[i : i + piece])
            index = extractor.finish()
            self.assertEqual(extractor.position, len(data))
            indexes.add(
                (
                    index.root,
                    index.kind,
                    index.files,
                    index.size,
                    tuple(sorted((d.parts, d.mode, d.mtimeNs) for d in index.dirs)),
                )
            )
            self.assertEqual(treeSignature(src), treeSignature(f"out-{piece}/src"))
            e = self.assertRaises(ArchiveError, feed, bytes(bad), f"bad-{piece}", piece)
            self.assertIn("differs between the central directory", str(e))
        self.assertEqual(len(indexes), 1)

    def test_singleFile(self):
        """
        A single file is one entry at the root; its mode and mtime survive.
        """
        with open("one.txt", "w") as f:
            f.write("hello " * 1000)
        os.chmod("one.txt", 0o640)
        os.utime("one.txt", (1_400_000_000, 1_400_000_000))
        data = readAll(ArchiveStream(planArchive("one.txt")))
        index = feed(data, "out")
        self.assertEqual((index.root, index.kind, index.files), ("one.txt", "file", 1))
        st = os.stat("out/one.txt")
        self.assertEqual((st.st_mode & 0o777, int(st.st_mtime)), (0o640, 1_400_000_000))

    def test_zip64(self):
        """
        With the zip64 thresholds lowered, sizes, offsets and the end
        records take their zip64 forms; zipfile and the streaming reader
        both read them.
        """
        self.patch(planModule, "ZIP64_LIMIT", 1000)
        self.patch(formatModule, "ZIP64_LIMIT", 1000)
        self.patch(formatModule, "ZIP64_COUNT", 3)
        src = makeTrickyTree(os.path.abspath("src"))
        plan = planArchive(src)
        self.assertTrue(any(e.zip64 for e in plan.entries))
        data = readAll(ArchiveStream(plan))
        self.assertEqual(len(data), plan.size)
        self.assertIn(struct.pack("<I", EOCD64_SIG), data)
        with open("z.zip", "wb") as f:
            f.write(data)
        with zipfile.ZipFile("z.zip") as zf:
            self.assertIsNone(zf.testzip())
        feed(data, "out")
        self.assertEqual(treeSignature(src), treeSignature("out/src"))

    def test_resendReadsAgain(self):
        """
        Two streams of one plan give the same bytes (a resend).
        """
        src = makeTrickyTree(os.path.abspath("src"))
        plan = planArchive(src)
        self.assertEqual(readAll(ArchiveStream(plan)), readAll(ArchiveStream(plan), 1000))

    def test_linkToFileNamed(self):
        """
        A link named as the source is followed, and its name kept: the file
        it points to is stored under the link's name.
        """
        with open("real.txt", "wb") as f:
            f.write(b"content")
        os.symlink("real.txt", "named")
        data = readAll(ArchiveStream(planArchive("named")))
        feed(data, "out")
        with open("out/named", "rb") as f:
            self.assertEqual(f.read(), b"content")

    def test_otherRootName(self):
        """
        A tree planned under another root name (as a restore names a
        snapshot's folder after its source) is stored under that name, with
        each file's content read from the tree.
        """
        src = makeTrickyTree(os.path.abspath("src"))
        plan = planArchive(src, name="renamed")
        self.assertEqual(
            plan.pathOf(plan.entries[-1]),
            os.path.join(src, plan.entries[-1].name.decode()[len("renamed/") :]),
        )
        index = feed(readAll(ArchiveStream(plan)), "out")
        self.assertEqual((index.root, index.kind), ("renamed", "dir"))
        self.assertEqual(treeSignature(src), treeSignature("out/renamed"))

    def test_zipfileMade(self):
        """
        A zip that C{zipfile} wrote into a file (sizes in its local
        headers) unpacks as it arrives too.
        """
        craft(
            "c.zip",
            [("r/", b"", D), ("r/a", b"x" * 5000, F, zipfile.ZIP_DEFLATED), ("r/b", b"y", F)],
        )
        os.mkdir("out")
        index = extractStream("c.zip", "out")
        self.assertEqual(index.files, 2)
        with open("out/r/a", "rb") as f:
            self.assertEqual(f.read(), b"x" * 5000)


class NanosecondTests(TestCase):
    """
    Modification times survive to the nanosecond: files, folders and
    links, after 1970 and before it, and a zip without our nanoseconds
    field still gives whole seconds.
    """

    TIMES = {
        "src/a.txt": 1_764_500_000_123_456_789,
        "src/dir/b.bin": 1_764_500_000_999_999_999,
        "src/dir": 1_700_000_000_000_000_001,
        "src/old": -1_500_000_000_250_000_000,
        "src/link": 1_600_000_000_500_000_000,
        "src/whole": 1_600_000_000_000_000_000,
    }

    def test_roundTrip(self):
        os.makedirs("src/dir")
        for name in ("src/a.txt", "src/dir/b.bin", "src/old", "src/whole"):
            with open(name, "wb") as f:
                f.write(os.urandom(100))
        os.symlink("a.txt", "src/link")
        for name, ns in self.TIMES.items():
            os.utime(name, ns=(ns, ns), follow_symlinks=False)
        feed(readAll(ArchiveStream(planArchive("src"))), "out")
        for name, ns in self.TIMES.items():
            restored = os.lstat(os.path.join("out", name)).st_mtime_ns
            self.assertEqual(restored, ns, name)

    def test_extraFields(self):
        """
        The nanoseconds field is only written when there are nanoseconds,
        and is read with the extended timestamp's second.
        """
        from backup_proto.archive.format import entryFields, extraTimes

        self.assertEqual(len(extraTimes(1_600_000_000 * 10**9)), 9)
        for ns in (1, 10**9 - 1, -(10**9) + 1, 1_764_500_000_123_456_789, -123_456_789):
            self.assertEqual(entryFields(extraTimes(ns), 0, 0)[0], ns)
        self.assertEqual(extraTimes(2**31 * 10**9 + 5), b"")

    def test_foreignZipWholeSeconds(self):
        """
        A zip made by zipfile (no nanoseconds field) unpacks to whole
        seconds.
        """
        os.makedirs("src")
        with open("src/f", "wb") as f:
            f.write(b"x")
        ns = 1_764_500_000_123_456_789
        os.utime("src/f", ns=(ns, ns))
        with zipfile.ZipFile("z.zip", "w") as zf:
            zf.write("src", "src/")
            info = zipfile.ZipInfo("src/f", time.localtime(1_764_500_000)[:6])
            info.external_attr = 0o100644 << 16
            zf.writestr(info, b"x")
        os.mkdir("out")
        extractStream("z.zip", "out")
        self.assertEqual(os.stat("out/src/f").st_mtime_ns, 1_764_500_000 * 10**9)


class PlanMemoryTests(TestCase):
    def test_entryCost(self):
        """
        A plan holds little per file: a restore of a snapshot of many small
        files plans them all at once, on a server serving others.  With
        each entry keeping its path, extra field and offset as objects of
        its own, this plan held about 620 bytes a file; now about 310.
        """
        os.makedirs("src/folder")
        for i in range(2000):
            with open(f"src/folder/file{i:05}.txt", "wb") as f:
                f.write(b"x")
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        before = tracemalloc.get_traced_memory()[0]
        plan = planArchive(os.path.abspath("src"), compression="store")
        held = tracemalloc.get_traced_memory()[0] - before
        self.assertEqual(len(plan.entries), 2002)
        self.assertLess(held / len(plan.entries), 400)


def sendCompressingBetter(case, name, before, after):
    """
    Plan C{src} with C{deflate} while its file C{name} holds C{before},
    give the file C{after} (which deflates to less), and send the zip: it
    keeps its planned length, reports the file, and unpacks to C{after}.

    @param case: the L{TestCase} that asserts this.
    @return: the zip's bytes.
    """
    with open(f"src/{name}", "wb") as f:
        f.write(before)
    plan = planArchive("src", compression="deflate")
    with open(f"src/{name}", "wb") as f:
        f.write(after)
    os.utime(f"src/{name}", ns=(1, 1))
    stream = ArchiveStream(plan)
    data = readAll(stream)
    case.assertEqual(len(data), plan.size)
    case.assertEqual(stream.changed, [f"src/{name}: changed while it was read"])
    feed(data, "out")
    with open(f"out/src/{name}", "rb") as f:
        case.assertEqual(f.read(), after)
    return data


class ChangedFileTests(TestCase):
    """
    A file that changes between planning and sending, handled as GNU tar
    does: the archive keeps its planned length and stays valid, and the
    file is reported.
    """

    def setUp(self):
        super().setUp()
        os.mkdir("src")
        with open("src/data", "wb") as f:
            f.write(os.urandom(100_000))

    def test_shrunk(self):
        plan = planArchive("src", compression="store")
        with open("src/data", "r+b") as f:
            f.truncate(60_000)
        stream = ArchiveStream(plan)
        data = readAll(stream)
        self.assertEqual(len(data), plan.size)
        self.assertEqual(stream.changed, ["src/data: changed while it was read"])
        feed(data, "out")
        with open("out/src/data", "rb") as f, open("src/data", "rb") as g:
            self.assertEqual(f.read(), g.read() + bytes(40_000))

    def test_grown(self):
        plan = planArchive("src", compression="store")
        with open("src/data", "ab") as f:
            f.write(b"more")
        stream = ArchiveStream(plan)
        data = readAll(stream)
        self.assertEqual(len(data), plan.size)
        self.assertEqual(len(stream.changed), 1)
        feed(data, "out")
        self.assertEqual(os.path.getsize("out/src/data"), 100_000)

    def test_vanished(self):
        plan = planArchive("src", compression="store")
        os.unlink("src/data")
        stream = ArchiveStream(plan)
        data = readAll(stream)
        self.assertEqual(len(data), plan.size)
        self.assertIn("src/data", stream.changed[0])
        feed(data, "out")

    def test_deflatedCompressesWorse(self):
        """
        A deflated file whose new content does not fit its planned deflate
        size stops the stream with L{ArchiveChanged}.
        """
        with open("src/data", "wb") as f:
            f.write(b"compressible text " * 10_000)
        plan = planArchive("src", compression="deflate")
        with open("src/data", "wb") as f:
            f.write(os.urandom(180_000))
        self.assertRaises(ArchiveChanged, readAll, ArchiveStream(plan))

    def test_deflatedCompressesBetter(self):
        """
        A deflated file that now compresses better is padded after its
        deflate stream; readers ignore the padding.
        """
        data = sendCompressingBetter(
            self, "data", os.urandom(50_000) + b"a" * 50_000, b"a" * 100_000
        )
        with open("z.zip", "wb") as f:
            f.write(data)
        with zipfile.ZipFile("z.zip") as zf:
            self.assertEqual(zf.read("src/data"), b"a" * 100_000)


def textOf(rng, size):
    """
    C{size} bytes of word-like text (deflate makes it about a third its
    size).
    """
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 9))) for _ in range(300)]
    count = size // 3 + 1
    seps = rng.choices([b" ", b" ", b"\n", b", "], k=count)
    return b"".join(w + sep for w, sep in zip(rng.choices(words, k=count), seps))[:size]


def entryData(zipPath, name):
    """
    An entry's data as it lies in the zip (its deflate stream, for a
    deflated entry).
    """
    with zipfile.ZipFile(zipPath) as zf:
        info = zf.getinfo(name)
    with open(zipPath, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        nameLen, extraLen = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + nameLen + extraLen)
        return f.read(info.compress_size)


class WholeDeflateTests(TestCase):
    """
    A file of at most L{SAMPLE_SIZE} bytes is deflated whole, by ISA-L
    (L{deflateWhole}), when planned and again when sent.
    """

    def setUp(self):
        super().setUp()
        self.rng = random.Random(6)
        os.mkdir("src")

    def test_smallFileDeflatedWhole(self):
        """
        The entry's data is the file's whole-file deflate stream, in either
        mode that deflates, and it unpacks to the file.
        """
        text = textOf(self.rng, SAMPLE_SIZE)
        with open("src/t.txt", "wb") as f:
            f.write(text)
        self.assertNotEqual(deflateWhole(text), rawDeflate(text))
        for compression in ("auto", "deflate"):
            writeArchive("src", f"{compression}.zip", compression=compression)
            self.assertEqual(entryData(f"{compression}.zip", "src/t.txt"), deflateWhole(text))
            with zipfile.ZipFile(f"{compression}.zip") as zf:
                self.assertEqual(zf.read("src/t.txt"), text)

    def test_largerFileStreamed(self):
        """
        A file one byte over L{SAMPLE_SIZE} is deflated as a stream
        (zlib-ng), not whole.
        """
        text = textOf(self.rng, SAMPLE_SIZE + 1)
        with open("src/t.txt", "wb") as f:
            f.write(text)
        writeArchive("src", "t.zip", compression="deflate")
        data = entryData("t.zip", "src/t.txt")
        self.assertNotEqual(data, deflateWhole(text))
        with zipfile.ZipFile("t.zip") as zf:
            self.assertEqual(zf.read("src/t.txt"), text)

    def test_compressesWorse(self):
        """
        A small file whose new content deflates to more than planned stops
        the stream with L{ArchiveChanged}.
        """
        with open("src/t.txt", "wb") as f:
            f.write(textOf(self.rng, 30_000))
        plan = planArchive("src", compression="deflate")
        with open("src/t.txt", "wb") as f:
            f.write(os.urandom(30_000))
        self.assertRaises(ArchiveChanged, readAll, ArchiveStream(plan))

    def test_compressesBetter(self):
        """
        A small file that now deflates to less is padded after its stream,
        reported, and unpacks to its new content.
        """
        sendCompressingBetter(self, "t.txt", textOf(self.rng, 30_000), b"a" * 30_000)


def callWithin(seconds, f, *args):
    """
    Call C{f} in a thread and fail if it has not returned after C{seconds}.

    @return: what it returned, or the exception it raised.
    """
    outcome = []

    def run():
        try:
            outcome.append(f(*args))
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise AssertionError(f"{f.__name__} still runs after {seconds} s")
    return outcome[0]


class FIFOInPlaceTests(TestCase):
    """
    A FIFO that takes a regular file's place after the walk saw the file
    is not waited on: opening one for reading would wait for a writer.
    """

    def setUp(self):
        super().setUp()
        os.mkdir("src")
        with open("src/data", "wb") as f:
            f.write(b"some text " * 1000)

    def tearDown(self):
        # free a thread that still waits on the FIFO, if the test failed
        try:
            os.close(os.open("src/data", os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        super().tearDown()

    def test_plan(self):
        """
        A file planned without a status (as the walk hands files over) is
        refused once it is no longer a regular file.
        """
        os.unlink("src/data")
        os.mkfifo("src/data")
        error = callWithin(10, planModule._planFile, "src/data", "src/data", None, "auto", None)
        self.assertIsInstance(error, OSError)
        self.assertEqual(error.strerror, "no longer a regular file")

    def test_stream(self):
        """
        A planned file that is a FIFO when the zip is sent is sent as an
        empty file padded to its planned size, and reported as changed.
        """
        plan = planArchive("src", compression="store")
        os.unlink("src/data")
        os.mkfifo("src/data")
        stream = ArchiveStream(plan)
        data = callWithin(10, readAll, stream)
        self.assertEqual(len(data), plan.size)
        self.assertEqual(stream.changed, ["src/data: changed while it was read"])
        feed(data, "out")
        with open("out/src/data", "rb") as f:
            self.assertEqual(f.read(), bytes(10_000))


class ExtractorMemoryTests(TestCase):
    def test_entryCost(self):
        """
        Until the central directory has compared them, the reader keeps
        little per entry (a 16-byte digest of its record and 8 bytes for
        its name), and drops it when closed.  With a record object and the
        name kept per entry it held about 350 bytes an entry, with hashes
        of names in a dict about 105.
        """
        count = 10_000
        with zipfile.ZipFile("many.zip", "w") as z:
            z.writestr("root/", b"")
            for i in range(count):
                z.writestr(f"root/folder-{i // 500:03}/file-name-{i:08}.txt", b"")
        with open("many.zip", "rb") as f:
            data = f.read()
        centralStart = struct.unpack_from("<I", data, len(data) - 22 + 16)[0]
        os.mkdir("out")
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        extractor = StreamingExtractor(os.path.abspath("out"), Limits())
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, centralStart, 65536):
            extractor.write(data[i : min(i + 65536, centralStart)])
        held = tracemalloc.get_traced_memory()[0] - before
        # the index's buckets cost up to 256 KiB however few the entries
        self.assertLess(held, (256 << 10) + 30 * count)
        extractor.write(data[centralStart:])
        self.assertEqual(extractor.finish().files, count)
        self.assertLess(tracemalloc.get_traced_memory()[0] - before, 64 << 10)


class FolderMemoryTests(TestCase):
    def test_folderCost(self):
        """
        A folder entry costs the reader its packed path, mode and time and
        8 bytes of name hash: with the folders' paths cached for making
        folders and an object for each one's attributes, a zip of many
        empty folders held about 890 bytes a folder.  Their modes and times
        are still applied.
        """
        count = 10_000
        with zipfile.ZipFile("folders.zip", "w") as z:
            z.writestr("root/", b"")
            for i in range(count):
                info = zipfile.ZipInfo(f"root/f{i // 100:03}/sub-{i:06}/", (2001, 2, 3, 4, 5, 6))
                info.external_attr = (0o40750 << 16) | 0x10
                z.writestr(info, b"")
        with open("folders.zip", "rb") as f:
            data = f.read()
        os.mkdir("out")
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        extractor = StreamingExtractor(os.path.abspath("out"), Limits())
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, len(data), 65536):
            extractor.write(data[i : i + 65536])
        held = tracemalloc.get_traced_memory()[0] - before
        # the name indexes' buckets and the cache of folders made cost up to
        # 768 KiB however few the entries
        self.assertLess(held, (768 << 10) + 100 * count)
        tracemalloc.stop()
        extractor.finish()
        st = os.stat("out/root/f099/sub-009999")
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o750)
        self.assertEqual(st.st_mtime, datetime(2001, 2, 3, 4, 5, 6).timestamp())


class NameIndexTests(TestCase):
    def test_membership(self):
        """
        Thousands of hashes share the buckets, negative ones included; each
        is found, and others are not.
        """
        index = NameIndex()
        values = [hash(f"root/folder/file-{i}") for i in range(20_000)]
        for value in values[::2]:
            index.add(value)
        self.assertEqual(
            [value in index for value in values], [i % 2 == 0 for i in range(len(values))]
        )
        self.assertTrue(any(value < 0 for value in values[::2]))

    def test_matchOnlyOnKeys(self):
        """
        A key's bytes that appear across two stored keys are no match.
        """
        index = NameIndex()
        value = 0x1122334455667788
        lower = index._KEY.unpack(b"\x00" * 4 + index._KEY.pack(value)[:4])[0]
        upper = index._KEY.unpack(index._KEY.pack(value)[4:] + b"\x00" * 4)[0]
        # two keys whose bytes hold the value's across their boundary
        index._buckets[value % index._BUCKETS] = bytearray(
            index._KEY.pack(lower) + index._KEY.pack(upper)
        )
        self.assertNotIn(value, index)
        index.add(value)
        self.assertIn(value, index)


class StreamRefusalTests(TestCase):
    """
    What the streaming reader refuses because it reads a stream: damage
    only a CRC or the central directory shows, a stream cut short or too
    long.  The checks on names, types and limits are in
    C{tests.test_archive.RefusalTests} and, through the server, in
    C{tests.test_hostile}.
    """

    def setUp(self):
        super().setUp()
        src = makeTrickyTree(os.path.abspath("src"))
        self.data = bytearray(readAll(ArchiveStream(planArchive(src, compression="store"))))

    def assertRefused(self, data, text):
        e = self.assertRaises(ArchiveError, feed, bytes(data), "out")
        self.assertIn(text, str(e))

    def test_crcMismatch(self):
        """
        A byte flipped in a file's data fails the entry's CRC-32.
        """
        self.data[len(self.data) // 3] ^= 1  # inside the tree's 3 MB of random data
        self.assertRefused(self.data, "fails its CRC-32 check")

    def test_centralDiffers(self):
        """
        A central directory that disagrees with the local headers (here,
        one CRC) is refused.
        """
        central = self.data.index(struct.pack("<I", CENTRAL_SIG))
        self.data[central + 16] ^= 1
        self.assertRefused(self.data, "differs between the central directory")

    def test_centralNameDiffers(self):
        """
        A central directory that names an entry otherwise than its local
        header (same length, one letter changed) is refused: the reader
        keeps only a digest of each local record, and the name is in it.
        """
        central = self.data.index(struct.pack("<I", CENTRAL_SIG))
        self.data[central + 46 + 2] ^= 1  # the third byte of the first name
        self.assertRefused(self.data, "differs between the central directory")

    def test_truncated(self):
        self.assertRefused(self.data[:-10], "ended early")

    def test_trailingData(self):
        self.assertRefused(self.data + b"x", "data after its end")

    def test_notAZip(self):
        self.assertRefused(b"hello world, not a zip", "unexpected record")

    def test_empty(self):
        with zipfile.ZipFile("e.zip", "w"):
            pass
        with open("e.zip", "rb") as f:
            self.assertRefused(f.read(), "archive is empty")

    def test_ratioLimit(self):
        """
        An entry inflating beyond the ratio limit is refused while it is
        being written.
        """
        craft("bomb.zip", [("r/", b"", D), ("r/a", bytes(5 << 20), F, zipfile.ZIP_DEFLATED)])
        with open("bomb.zip", "rb") as f:
            e = self.assertRaises(
                ArchiveError, feed, f.read(), "out", limits=Limits(maxRatio=10, ratioFloor=1 << 20)
            )
        self.assertIn("expands more than", str(e))


class ExtractSinkTests(TestCase):
    def test_errorKept(self):
        """
        A bad archive does not raise from C{write} (the transfer goes on);
        L{ExtractSink.finish} raises it, and C{discard} removes what was
        unpacked.
        """
        sink = ExtractSink(os.path.abspath("tree"))
        sink.write(b"PK\x03\x04" + b"\xff" * 100)
        sink.write(b"more")
        sink.close()
        self.assertRaises(ArchiveError, sink.finish)
        sink.discard()
        self.assertFalse(os.path.exists("tree"))

    def test_writeArchive(self):
        """
        L{writeArchive} writes the stream to a file, and returns the report.
        """
        src = makeTrickyTree(os.path.abspath("src"))
        report = writeArchive(src, "w.zip")
        self.assertEqual(report.links, 2)
        sink = ExtractSink(os.path.abspath("tree"))
        with open("w.zip", "rb") as f:
            sink.write(f.read())
        sink.close()
        sink.finish()
        self.assertEqual(treeSignature(src), treeSignature("tree/src"))


def openDescriptors():
    return len(os.listdir("/proc/self/fd"))


class FolderDescriptorTests(TestCase):
    """
    The extractor names entries relative to a descriptor of their folder
    (L{StreamingExtractor._folderFd}): one is open at a time, and none is
    left open after the end, or after a refusal.
    """

    def setUp(self):
        super().setUp()
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("needs /proc/self/fd to count open descriptors")
        src = os.path.abspath("src")
        for i in range(12):
            os.makedirs(f"{src}/d{i}/e")
            for j in range(3):
                for folder in (f"{src}/d{i}", f"{src}/d{i}/e"):
                    with open(f"{folder}/f{j}", "wb") as f:
                        f.write(os.urandom(100 * j))
        self.src = src
        self.data = readAll(ArchiveStream(planArchive(src)))

    def test_oneAtATime(self):
        """
        While a tree of 25 folders arrives, the extractor holds at most two
        descriptors (a file's and its folder's); after L{finish}, none, and
        the tree is whole.
        """
        before = openDescriptors()
        os.mkdir("out")
        extractor = StreamingExtractor(os.path.abspath("out"))
        most = 0
        for i in range(0, len(self.data), 997):
            extractor.write(self.data[i : i + 997])
            most = max(most, openDescriptors() - before)
        extractor.finish()
        self.assertEqual(most, 2)
        self.assertEqual(openDescriptors(), before)
        self.assertEqual(treeSignature(self.src), treeSignature("out/src"))

    def test_closedOnRefusal(self):
        """
        A stream refused in its central directory (a record whose CRC-32
        disagrees with its local header), after its files were created,
        leaves no descriptor open once the extractor is closed, as its
        callers do.
        """
        data = bytearray(self.data)
        central = data.index(struct.pack("<I", CENTRAL_SIG))
        data[central + 16] ^= 1  # the first central record's CRC
        before = openDescriptors()
        e = self.assertRaises(ArchiveError, feed, bytes(data), "out")
        self.assertIn("differs between the central directory", str(e))
        self.assertEqual(openDescriptors(), before)


class PlannedLengthTests(TestCase):
    def test_counted(self):
        """
        L{PlannedEntry.spanLength} and C{centralLength} count exactly the
        bytes that C{localHeader}, C{descriptor} and C{centralRecord} pack,
        with and without zip64 fields, a timestamp field, a descriptor and
        a UTF-8 name.
        """
        from backup_proto.archive.format import ZIP64_LIMIT
        from backup_proto.archive.plan import PlannedEntry

        sizes = (0, 10, ZIP64_LIMIT - 1, ZIP64_LIMIT, ZIP64_LIMIT + 5)
        checked = 0
        for name, usize, csize, content, mtimeNs in itertools.product(
            (b"a/b.txt", "r/\u00e9t\u00e9".encode()),
            sizes,
            sizes,
            (None, b"target"),
            (1_600_000_000 * 10**9, 2**33 * 10**9),
        ):
            entry = PlannedEntry(
                name=name,
                method=0,
                external=0o100644 << 16,
                dosTime=0,
                dosDate=33,
                usize=usize,
                csize=csize,
                content=content,
                mtimeNs=mtimeNs,
            )
            self.assertEqual(
                entry.spanLength(), len(entry.localHeader()) + csize + len(entry.descriptor())
            )
            for offset in (0, ZIP64_LIMIT - 1, ZIP64_LIMIT):
                self.assertEqual(entry.centralLength(offset), len(entry.centralRecord(offset)))
                checked += 1
        self.assertEqual(checked, 2 * 5 * 5 * 2 * 2 * 3)


class PlanStopTests(TestCase):
    def test_stopped(self):
        """
        A plan whose C{stop} event is set stops with L{PlanStopped}.
        """
        import threading

        from backup_proto.archive.plan import PlanStopped

        makeTrickyTree(os.path.abspath("src"))
        stop = threading.Event()
        stop.set()
        self.assertRaises(PlanStopped, planArchive, "src", stop=stop)
        self.assertEqual(planArchive("src", stop=threading.Event()).report.files, 7)


class DirectReadTests(TestCase):
    def test_sameBytes(self):
        """
        Reading large stored files past the page cache gives the same zip,
        whatever the file's length (here not a multiple of the block size).
        """
        from backup_proto.archive.directio import DIRECT_MIN
        from backup_proto.archive.policy import COPY_BLOCK

        os.mkdir("src")
        size = DIRECT_MIN + 8 * COPY_BLOCK + 12345
        with open("src/big", "wb") as f:
            f.write(os.urandom(size))
        with open("src/small", "wb") as f:
            f.write(os.urandom(5000))
        plan = planArchive("src", compression="store")
        calls = []
        real = directio._readAt
        self.patch(directio, "_readAt", lambda *a: calls.append(1) or real(*a))
        threads = readAheadThreads()
        self.addCleanup(threads.shutdown)
        direct = readAll(ArchiveStream(plan, readAhead=threads))
        if not calls:
            fd = os.open("src/big", os.O_RDONLY)
            try:
                if not directio.enableDirect(fd):
                    self.skipTest("this file system refuses O_DIRECT")
            finally:
                os.close(fd)
        # blocks of COPY_BLOCK from the start: a stored file's blocks need
        # not be the plan's
        self.assertEqual(len(calls), -(-size // COPY_BLOCK))
        self.assertEqual(direct, readAll(ArchiveStream(plan)))
