"""
Tests for L{backup_proto.archive.records}: the zip record parser on its own,
in memory (no files, no extractor), including fuzzing of its input and of
how it is cut into pieces.
"""

import io
import struct
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_proto.archive.format import CENTRAL_SIG, DESCRIPTOR_SIG, EOCD_SIG, LOCAL_SIG
from backup_proto.archive.policy import ArchiveError
from backup_proto.archive.records import ZipRecordParser
from tests.helpers import TestCase

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RecordingHandler:
    """
    A L{backup_proto.archive.records.RecordHandler} that records its
    events, with each entry's data joined (the pieces depend on the feed).
    """

    def __init__(self):
        self.events = []

    def localHeader(self, header):
        self.events.append(
            (
                "local",
                header.rawName,
                header.method,
                header.csize,
                header.usize,
                header.offset,
                header.zip64,
            )
        )
        self.events.append(["data", b""])

    def entryData(self, view):
        assert isinstance(view, memoryview)
        self.events[-1][1] += bytes(view)

    def dataEnd(self):
        self.events.append(("dataEnd",))

    def entryEnd(self, crc, csize, usize):
        self.events.append(("entryEnd", crc, csize, usize))

    def centralRecord(self, record):
        self.events.append(
            (
                "central",
                record.rawName,
                record.crc,
                record.csize,
                record.usize,
                record.offset,
                record.external >> 16,
            )
        )

    def end(self):
        self.events.append(("end",))


def makeZip(entries, compression=zipfile.ZIP_DEFLATED, zip64=False):
    """
    @return: the bytes of a zip of C{(name, data)} pairs, made by zipfile in
        memory (its local headers carry the sizes).
    """
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            info.external_attr = (0o40755 if name.endswith("/") else 0o100644) << 16
            with zf.open(info, "w", force_zip64=zip64) as f:
                f.write(data)
    return out.getvalue()


def parse(data, pieces=None):
    """
    @param pieces: the lengths to cut C{data} into (the rest in one piece).
    @return: the L{RecordingHandler} and the parser.
    """
    handler = RecordingHandler()
    parser = ZipRecordParser(handler)
    at = 0
    for length in pieces or ():
        parser.feed(data[at : at + length])
        at += length
    parser.feed(data[at:])
    return handler, parser


ENTRIES = [
    ("top/", b""),
    ("top/a.txt", b"hello " * 500),
    ("top/empty", b""),
    ("top/b.bin", bytes(range(256)) * 40),
]


class ParserTests(TestCase):
    def test_events(self):
        """
        A zip gives, for each entry, its local header, its data whole, the
        end of its data (entries with data only), and its end; then one
        central record per entry, in order, and the end.
        """
        data = makeZip(ENTRIES)
        handler, parser = parse(data)
        locals_ = [e for e in handler.events if e[0] == "local"]
        expected = []
        for local in locals_:
            expected += ["local", "data"] + (["dataEnd"] if local[3] else []) + ["entryEnd"]
        self.assertEqual([e[0] for e in handler.events], expected + ["central"] * 4 + ["end"])
        stored, _ = parse(makeZip(ENTRIES, zipfile.ZIP_STORED))
        self.assertEqual([e[0] for e in stored.events[:3]], ["local", "data", "entryEnd"])
        locals_ = [e for e in handler.events if e[0] == "local"]
        centrals = [e for e in handler.events if e[0] == "central"]
        self.assertEqual([e[1] for e in locals_], [name.encode() for name, _ in ENTRIES])
        self.assertEqual([e[5] for e in locals_], [e[5] for e in centrals])
        self.assertEqual(centrals[1][6], 0o100644)
        for local, (_name, _content) in zip(locals_, ENTRIES):
            at = handler.events.index(local)
            self.assertEqual(len(handler.events[at + 1][1]), local[3])
        self.assertTrue(parser.finished)
        self.assertEqual(parser.position, len(data))
        self.assertEqual(parser.entries, 4)

    def test_zip64(self):
        """
        Sizes and offsets in zip64 fields are read from them.
        """
        data = makeZip([("f", b"x" * 1000)], zipfile.ZIP_STORED, zip64=True)
        handler, _ = parse(data)
        local = handler.events[0]
        self.assertEqual((local[3], local[4], local[6]), (1000, 1000, True))
        self.assertEqual(handler.events[1][1], b"x" * 1000)

    @FUZZ
    @given(st.lists(st.integers(min_value=1, max_value=400), max_size=40))
    def test_anyPieces(self, pieces):
        """
        However the zip is cut into pieces, the events are the same.
        """
        data = makeZip(ENTRIES)
        whole, _ = parse(data)
        cut, parser = parse(data, pieces)
        self.assertEqual(cut.events, whole.events)
        self.assertTrue(parser.finished)

    @FUZZ
    @given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
    def test_anyBytes(self, data, piece):
        """
        Any bytes, in any pieces: the parser raises nothing but
        L{ArchiveError}, and reports nothing after it.
        """
        handler = RecordingHandler()
        parser = ZipRecordParser(handler)
        try:
            for at in range(0, len(data), piece):
                parser.feed(data[at : at + piece])
        except ArchiveError:
            pass

    @FUZZ
    @given(st.data())
    def test_damagedZip(self, draw):
        """
        A real zip with bytes changed anywhere: nothing but L{ArchiveError}
        escapes, and every entry's data handed over has the length its
        header declared.
        """
        data = bytearray(makeZip(ENTRIES))
        for _ in range(draw.draw(st.integers(min_value=1, max_value=4))):
            at = draw.draw(st.integers(min_value=0, max_value=len(data) - 1))
            data[at] = draw.draw(st.integers(min_value=0, max_value=255))
        handler = RecordingHandler()
        try:
            ZipRecordParser(handler).feed(bytes(data))
        except ArchiveError:
            pass
        events = handler.events
        for i, event in enumerate(events):
            if event[0] == "local" and i + 2 < len(events) and events[i + 2][0] != "local":
                self.assertEqual(len(events[i + 1][1]), event[3])


class StructureTests(TestCase):
    """
    What the parser itself refuses: the zip's structure.
    """

    def assertRefused(self, data, text):
        error = self.assertRaises(ArchiveError, parse, data)
        self.assertIn(text, str(error))

    def test_empty(self):
        self.assertRefused(
            struct.pack("<IHHHHIIH", EOCD_SIG, 0, 0, 0, 0, 0, 0, 0), "archive is empty"
        )

    def test_notAZip(self):
        self.assertRefused(b"hello world, not a zip", "unexpected record")

    def test_dataAfterEnd(self):
        self.assertRefused(makeZip(ENTRIES) + b"x", "data after its end")

    def test_noDescriptor(self):
        """
        An entry that announces a data descriptor must have one.
        """
        data = bytearray(makeZip([("f", b"abc")], zipfile.ZIP_STORED))
        # zipfile writes no descriptor into a seekable file: announce one
        data[6:8] = struct.pack("<H", struct.unpack_from("<H", data, 6)[0] | 0x08)
        self.assertRefused(bytes(data), "entry 'f' has no data descriptor")

    def test_centralListsMore(self):
        data = makeZip([("f", b"abc")], zipfile.ZIP_STORED)
        central = data.index(struct.pack("<I", CENTRAL_SIG))
        end = data.index(struct.pack("<I", EOCD_SIG))
        doubled = data[:end] + data[central:end] + data[end:]
        self.assertRefused(doubled, "lists more entries than it holds")

    def test_centralListsFewer(self):
        data = makeZip([("f", b"abc"), ("g", b"def")], zipfile.ZIP_STORED)
        central = data.index(struct.pack("<I", CENTRAL_SIG))
        second = data.index(struct.pack("<I", CENTRAL_SIG), central + 4)
        end = data.index(struct.pack("<I", EOCD_SIG))
        self.assertRefused(data[:second] + data[end:], "does not list every entry")

    def test_zip64FieldMissing(self):
        """
        Sizes marked as in a zip64 field, with no such field: refused.
        """
        data = bytearray(makeZip([("f", b"abc")], zipfile.ZIP_STORED))
        self.assertEqual(struct.unpack_from("<I", data, 0)[0], LOCAL_SIG)
        struct.pack_into("<II", data, 18, 0xFFFFFFFF, 0xFFFFFFFF)
        self.assertRefused(bytes(data), "lacks a zip64 field")

    def test_truncated(self):
        """
        A zip cut short is not finished, and says so without an error.
        """
        data = makeZip(ENTRIES)
        _, parser = parse(data[:-7])
        self.assertFalse(parser.finished)
        _, parser = parse(data[:100])
        self.assertFalse(parser.complete)

    def test_descriptorSignatureConstant(self):
        self.assertEqual(struct.pack("<I", DESCRIPTOR_SIG), b"PK\x07\x08")
