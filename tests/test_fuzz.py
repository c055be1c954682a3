"""
Property-based fuzzing (Hypothesis) of the frame decoder, the message
parser and the archive validator: nothing but the protocol's own errors,
no hang, bounded buffers, and nothing written outside the target.
"""

import io
import os
import stat
import tempfile
import zipfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backup_proto.archive.extract import StreamingExtractor, extractStream
from backup_proto.archive.policy import ArchiveError, Limits
from backup_proto.wire.errors import ProtocolError
from backup_proto.wire.frames import MAX_FRAME, Msg, decodeFrame, parseControl
from tests.helpers import TestCase, makeFactory
from tests.wire import Wire

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class FrameFuzzTests(TestCase):
    def setUp(self):
        super().setUp()
        self.factory = makeFactory(os.path.abspath("data"))

    @FUZZ
    @given(st.lists(st.binary(max_size=3000), max_size=8))
    def test_serverSurvivesAnyBytes(self, pieces):
        """
        Any bytes, in any pieces, into a fresh connection: no exception
        escapes, every reply is a well-formed frame, and the unparsed buffer
        never exceeds one frame.
        """
        wire = Wire(self.factory)
        for piece in pieces:
            wire.send(piece)
            self.assertLessEqual(len(wire.proto._unprocessed), MAX_FRAME + 4 + 3000)
        for kind, _body in wire.received():
            self.assertIn(kind, (Msg.ERROR, Msg.OK))
        wire.proto.connectionLost(None)

    @FUZZ
    @given(st.binary(max_size=200))
    def test_decodeFrame(self, data):
        """
        L{decodeFrame} returns a type and body or raises L{ProtocolError}.
        """
        try:
            kind, body = decodeFrame(data)
        except ProtocolError:
            return
        self.assertEqual(bytes((kind,)) + body, data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


class MessageFuzzTests(TestCase):
    @FUZZ
    @given(
        st.one_of(
            st.binary(max_size=500), json_values.map(lambda v: __import__("json").dumps(v).encode())
        )
    )
    def test_parseControl(self, body):
        """
        Any body parses to a dict of the declared types or raises
        L{ProtocolError}.
        """
        try:
            fields = parseControl(Msg.BACKUP, body)
        except ProtocolError:
            return
        self.assertIsInstance(fields["name"], str)
        self.assertIsInstance(fields["kind"], str)
        self.assertIsInstance(fields["size"], int)
        self.assertNotIsInstance(fields["size"], bool)


names = st.lists(
    st.sampled_from(["x", "..", ".", "", "a", "b\\c", "/", "C:", "\x00", "é", "x" * 300]),
    min_size=1,
    max_size=5,
).map("/".join) | st.text(max_size=30)
modes = st.sampled_from(
    [
        0,
        stat.S_IFREG | 0o644,
        stat.S_IFDIR | 0o755,
        stat.S_IFLNK | 0o777,
        stat.S_IFIFO | 0o644,
        stat.S_IFCHR | 0o600,
        0o4755 | stat.S_IFREG,
    ]
)
entries = st.lists(st.tuples(names, st.binary(max_size=64), modes), min_size=1, max_size=8)


class ArchiveFuzzTests(TestCase):
    @FUZZ
    @given(entries)
    def test_validatorAndExtractor(self, items):
        """
        Any archive is refused with L{ArchiveError} or unpacks strictly
        inside the target folder.
        """
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data, mode in items:
                try:
                    info = zipfile.ZipInfo(name)
                except (ValueError, TypeError):
                    continue
                info.create_system = 3
                info.external_attr = mode << 16
                try:
                    zf.writestr(info, data)
                except (ValueError, UnicodeEncodeError):
                    continue
        with tempfile.TemporaryDirectory(prefix="fuzz-", dir=".") as base:
            self._checkExtract(buffer.getvalue(), os.path.realpath(base))

    def _checkExtract(self, archive, base):
        target = os.path.join(base, "target")
        os.mkdir(target)
        path = os.path.join(base, "a.zip")
        with open(path, "wb") as f:
            f.write(archive)
        try:
            extractStream(path, target, Limits(maxEntries=100, maxUnpacked=1 << 20))
        except ArchiveError:
            pass
        self.assertEqual(sorted(os.listdir(base)), ["a.zip", "target"])
        for root, dirs, files in os.walk(target):
            for name in dirs + files:
                full = (
                    os.path.realpath(os.path.join(root, name))
                    if not os.path.islink(os.path.join(root, name))
                    else os.path.join(root, name)
                )
                self.assertTrue(full.startswith(target + os.sep))
                self.assertFalse(stat.S_IMODE(os.lstat(full).st_mode) & 0o7000)

    @FUZZ
    @given(st.binary(max_size=2000))
    def test_garbageZip(self, data):
        """
        Arbitrary bytes fed as a zip, in arbitrary pieces, raise
        L{ArchiveError} and nothing else (or parse), and write nothing
        outside the target.
        """
        with tempfile.TemporaryDirectory(prefix="fuzz-", dir=".") as base:
            self._checkGarbage(data, os.path.realpath(base))

    def _checkGarbage(self, data, base):
        target = os.path.join(base, "target")
        os.mkdir(target)
        extractor = StreamingExtractor(target, Limits(maxEntries=100, maxUnpacked=1 << 20))
        try:
            for i in range(0, len(data), 97):
                extractor.write(data[i : i + 97])
            extractor.finish()
        except ArchiveError:
            pass
        finally:
            extractor.close()
        self.assertEqual(os.listdir(base), ["target"])
