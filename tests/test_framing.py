"""
Tests for L{backup_proto.framing}.
"""


from backup_proto.errors import Code, ProtocolError
from backup_proto.framing import (
    MAX_CONTROL, Msg, decodeFrame, encodeControl, encodeData, parseControl,
)
from tests.helpers import TestCase


class FrameTests(TestCase):
    def test_roundTrip(self):
        """
        A control message decodes to its type and JSON body.
        """
        kind, body = decodeFrame(encodeControl(Msg.LOGIN, user="u", password="p"))
        self.assertIs(kind, Msg.LOGIN)
        self.assertEqual(
            parseControl(kind, body, required={"user": str, "password": str}),
            {"user": "u", "password": "p"},
        )

    def test_fieldNamedKind(self):
        """
        A field may be called C{kind} (BACKUP has one).
        """
        kind, body = decodeFrame(encodeControl(Msg.BACKUP, kind="dir", name="x", size=1))
        self.assertEqual(parseControl(kind, body, required={"kind": str, "name": str,
                                                            "size": int})["kind"], "dir")

    def test_data(self):
        """
        DATA carries raw bytes after the type byte.
        """
        self.assertEqual(decodeFrame(encodeData(b"\x00\xff")), (Msg.DATA, b"\x00\xff"))

    def test_emptyFrame(self):
        """
        An empty frame is a bad frame.
        """
        e = self.assertRaises(ProtocolError, decodeFrame, b"")
        self.assertEqual(e.code, Code.BAD_FRAME)

    def test_unknownType(self):
        """
        An unknown type byte is a bad frame.
        """
        e = self.assertRaises(ProtocolError, decodeFrame, b"\x42{}")
        self.assertEqual(e.code, Code.BAD_FRAME)


class ParseControlTests(TestCase):
    def check(self, body, **schema):
        return self.assertRaises(ProtocolError, parseControl, Msg.LOGIN, body, **schema)

    def test_notJSON(self):
        """
        Bytes that are not UTF-8 JSON are refused.
        """
        self.assertEqual(self.check(b"\xff\xfe").code, Code.BAD_MESSAGE)
        self.assertEqual(self.check(b"{").code, Code.BAD_MESSAGE)

    def test_notObject(self):
        """
        A JSON array or number is refused.
        """
        self.check(b"[1]")
        self.check(b"3")

    def test_missingAndExtra(self):
        """
        A missing required field and an unexpected field are refused.
        """
        self.check(b"{}", required={"user": str})
        self.check(b'{"user":"a","x":1}', required={"user": str})

    def test_wrongTypes(self):
        """
        Wrong types are refused; C{true} is not an integer.
        """
        self.check(b'{"size":"1"}', required={"size": int})
        self.check(b'{"size":true}', required={"size": int})
        self.check(b'{"user":1}', required={"user": str})

    def test_tooLong(self):
        """
        Bodies over L{MAX_CONTROL} are refused before parsing.
        """
        self.check(b'{"user":"' + b"a" * MAX_CONTROL + b'"}', required={"user": str})

    def test_deepNesting(self):
        """
        Deeply nested JSON is refused, not a crash.
        """
        self.check(b"[" * 5000 + b"]" * 5000)

    def test_optional(self):
        """
        Optional fields may be absent or null.
        """
        self.assertEqual(parseControl(Msg.RESTORE, b"{}", optional={"snapshot": str}),
                         {"snapshot": None})
        self.assertEqual(parseControl(Msg.RESTORE, b'{"snapshot":null}',
                                      optional={"snapshot": str}), {"snapshot": None})
