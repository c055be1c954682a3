"""
Manifests and keep lists (L{backup_proto.archive.manifest}).
"""

import base64
import gzip
import hashlib
import json
import random
import zlib

from backup_proto.archive.manifest import (
    KEEP_PAGE,
    EntryAttributes,
    KeepList,
    KeepListDecoder,
    ManifestError,
    ManifestWriter,
    checkEntry,
    encodeEntry,
    readEntries,
)
from tests.helpers import TestCase

ENTRIES = [
    ("docs", "dir", 0, 1_700_000_000_000_000_001, 0o1755, None, None, (0, 0, "root", None), None),
    ('docs/é "quoted".txt', "file", 12, -5, 0o4644, None, 0xFFFFFFFF, None, "docs/same"),
    ("docs/link", "link", 3, 0, 0o777, "a\nb", 7, (1000, 2**32 - 1, "é", 'g"x'), None),
    ("docs/same", "file", 12, -5, 0o4644, None, 0xFFFFFFFF, None, "docs/same"),
]


class ManifestFileTests(TestCase):
    def write(self, entries=ENTRIES):
        writer = ManifestWriter("m")
        for entry in entries:
            writer.add(*entry)
        return writer, writer.close()

    def test_roundTrip(self):
        """
        Entries come back as written, in order; the digest is the SHA-256
        of the compact JSON lines, and the writer counts entries, files
        and the bytes of files and link targets.
        """
        writer, digest = self.write()
        self.assertEqual([entry for _line, entry in readEntries("m", digest)], ENTRIES)
        lines = b"".join(encodeEntry(e) + b"\n" for e in ENTRIES)
        self.assertEqual(digest, hashlib.sha256(lines).hexdigest())
        self.assertIn("é".encode(), lines)  # UTF-8, not \u escapes
        self.assertEqual((writer.entries, writer.files, writer.size), (4, 2, 27))

    def test_encodingIsJSON(self):
        """
        L{encodeEntry} writes what C{json.dumps} would, compact and in
        UTF-8, for names with quotes, backslashes, control and non-ASCII
        characters.
        """
        for entry in ENTRIES + [
            ('a"b\\é\u2028\x01', "link", 1, -5, 0o777, 't"\n\x7f', 0, (1, 2, "\x01", None), None)
        ]:
            plain = [list(field) if isinstance(field, tuple) else field for field in entry]
            expected = json.dumps(plain, ensure_ascii=False, separators=(",", ":"))
            self.assertEqual(encodeEntry(entry), expected.encode("utf-8"))

    def test_manyBatches(self):
        """
        Entries are decoded a batch of lines at a time: more than one batch
        comes back whole and in order.
        """
        entries = [(f"d/f{i}", "file", i, i, 0o600, None, i, None, None) for i in range(2500)]
        _writer, digest = self.write(entries)
        self.assertEqual([e for _l, e in readEntries("m", digest)], entries)

    def test_lineOfTwoValues(self):
        """
        A line holding two JSON values is refused, not read as two entries.
        """
        with gzip.open("m", "wb") as f:
            f.write(b'["a","dir",0,0,0,null,null],["b","dir",0,0,0,null,null]\n')
        with self.assertRaises(ManifestError):
            list(readEntries("m"))

    def test_wrongDigest(self):
        """
        A manifest that is not the one its digest names fails once read.
        """
        self.write()
        with self.assertRaises(ManifestError):
            list(readEntries("m", "0" * 64))

    def test_damaged(self):
        """
        A cut gzip file is a L{ManifestError}, not a crash.
        """
        self.write()
        with open("m", "rb") as f:
            data = f.read()
        with open("m", "wb") as f:
            f.write(data[: len(data) // 2])
        with self.assertRaises(ManifestError):
            list(readEntries("m"))

    def test_checkEntry(self):
        """
        Entries of the wrong shape or types are refused.
        """
        for good in ENTRIES:
            plain = [list(field) if isinstance(field, tuple) else field for field in good]
            self.assertEqual(checkEntry(plain), good)
        # a line of an older manifest: no owner, no link
        self.assertEqual(
            checkEntry(["a", "file", 1, 1, 0o644, None, 0]),
            ("a", "file", 1, 1, 0o644, None, 0, None, None),
        )
        for bad in (
            None,
            ["a", "file", 1, 1, 0o644, None],
            ["a", "file", 1, 1, 0o644, None, 0, None],
            ["a", "file", 1, 1, 0o644, None, 0, [0, 0, "r"], None],
            ["a", "file", 1, 1, 0o644, None, 0, [-1, 0, "r", "g"], None],
            ["a", "file", 1, 1, 0o644, None, 0, [0, 1 << 32, None, None], None],
            ["a", "file", 1, 1, 0o644, None, 0, [0, 0, "", None], None],
            ["a", "file", 1, 1, 0o644, None, 0, [0, 0, 5, None], None],
            ["a", "file", 1, 1, 0o644, None, 0, None, ""],
            ["a", "dir", 0, 1, 0o755, None, None, None, "a"],
            ["a", "link", 1, 1, 0o777, "t", 0, None, "a"],
            ["", "file", 1, 1, 0o644, None, 0],
            ["a", "fifo", 1, 1, 0o644, None, 0],
            ["a", "file", True, 1, 0o644, None, 0],
            ["a", "file", -1, 1, 0o644, None, 0],
            ["a", "file", 1, 1.5, 0o644, None, 0],
            ["a", "file", 1, 1, 0o17777, None, 0],
            ["a", "file", 1, 1, 0o644, "t", 0],
            ["a", "file", 1, 1, 0o644, None, None],
            ["a", "file", 1, 1, 0o644, None, 1 << 32],
            ["a", "link", 1, 1, 0o777, None, 0],
            ["a", "dir", 0, 1, 0o755, None, 0],
        ):
            self.assertRaises(ManifestError, checkEntry, bad)


class EntryAttributesTests(TestCase):
    def test_lookup(self):
        """
        Modes (setuid, setgid and sticky bits too), times, owners and
        hard-link groups come back by path, negative times too; a path not
        added, and two paths whose hashes collide, get C{None}.
        """
        attributes = EntryAttributes()
        for path, _kind, _size, mtimeNs, mode, _target, _crc, owner, link in ENTRIES:
            attributes.add(path, mode, mtimeNs, owner, link)
        for path, _kind, _size, mtimeNs, mode, _target, _crc, owner, link in ENTRIES:
            self.assertEqual(attributes.get(path), (mode, mtimeNs, owner, link))
        self.assertIsNone(attributes.get("docs/other"))
        # -1 and -2 hash alike in CPython: a stand-in for a colliding pair
        attributes.add(-1, 0o600, 5)
        attributes.add(-2, 0o644, 6)
        self.assertIsNone(attributes.get(-1))
        self.assertIsNone(attributes.get(-2))

    def test_fromManifest(self):
        writer = ManifestWriter("m")
        for entry in ENTRIES:
            writer.add(*entry)
        attributes = EntryAttributes.fromManifest("m", writer.close())
        self.assertEqual(attributes.get("docs/link"), (0o777, 0, ENTRIES[2][7], None))
        self.assertEqual(attributes.get("docs/same")[3], "docs/same")


class KeepListTests(TestCase):
    def roundTrip(self, keep):
        decoder = KeepListDecoder(keep.count)
        for page in keep.pages():
            decoder.feed(page)
        return decoder.finish()

    def test_roundTrip(self):
        """
        Lists of every length through their pages come back bit for bit,
        with their count of kept entries; a list too random to fit one
        page takes several.
        """
        rng = random.Random(3)
        for count in (0, 1, 7, 8, 9, 1000, 300_000):
            keep = KeepList(count)
            for i in range(count):
                if rng.random() < 0.5:
                    keep.keep(i)
            back = self.roundTrip(keep)
            self.assertEqual(back.bits, keep.bits)
            self.assertEqual(back.kept, keep.kept)
            self.assertEqual(
                [i for i in range(count) if i in back][:50],
                [i for i in range(count) if i in keep][:50],
            )
        self.assertGreater(len(keep.pages()), 2)
        self.assertTrue(all(len(p) <= KEEP_PAGE for p in keep.pages()))

    def test_cutAnywhere(self):
        """
        The base64 text may be cut at any character, not only at whole
        quanta of four.
        """
        keep = KeepList(1000)
        for i in range(0, 1000, 3):
            keep.keep(i)
        text = "".join(keep.pages())
        for cut in (1, 2, 3, 5, 7):
            decoder = KeepListDecoder(1000)
            for at in range(0, len(text), cut):
                decoder.feed(text[at : at + cut])
            self.assertEqual(decoder.finish().bits, keep.bits)
        decoder = KeepListDecoder(1000)
        decoder.feed(text[:-1])
        self.assertRaises(ManifestError, decoder.finish)

    def test_unchangedIsSmall(self):
        """
        Keeping all of 200,000 entries takes well under a kilobyte.
        """
        keep = KeepList(200_000)
        for i in range(200_000):
            keep.keep(i)
        self.assertEqual(len(keep.pages()), 1)
        self.assertLess(len(keep.pages()[0]), 200)

    def test_refused(self):
        """
        Not base64, not zlib, too short, too long, bits past the end,
        data after the stream: each a L{ManifestError}.  A small page that
        would inflate to much more than the list stops at the list's
        length.
        """

        def pieces(data):
            return [base64.b64encode(zlib.compress(data)).decode()]

        cases = [
            (9, ["!!!"]),
            (9, [base64.b64encode(b"not zlib").decode()]),
            (9, pieces(b"\x01")),
            (9, pieces(b"\x01\x01\x01")),
            (9, pieces(b"\x01\x02")),  # bit 9 of 9 entries
            (8, [base64.b64encode(zlib.compress(b"\x01") + b"junk").decode()]),
            (16, pieces(bytes(100 << 20))),
        ]
        for count, pages in cases:
            decoder = KeepListDecoder(count)
            with self.assertRaises(ManifestError, msg=(count, pages[0][:20])):
                for page in pages:
                    decoder.feed(page)
                decoder.finish()
