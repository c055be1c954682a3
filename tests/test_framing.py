"""
Tests for L{backup_proto.wire.frames}.
"""

import json
import os
import re

from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import (
    MAX_CONTROL,
    NULL,
    SCHEMAS,
    Msg,
    checkSourceName,
    decodeFrame,
    encodeControl,
    encodeData,
    parseControl,
)
from tests.helpers import TestCase


class FrameTests(TestCase):
    def test_roundTrip(self):
        """
        A control message decodes to its type and JSON body.
        """
        kind, body = decodeFrame(encodeControl(Msg.LOGIN, user="u", password="p"))
        self.assertIs(kind, Msg.LOGIN)
        self.assertEqual(parseControl(kind, body), {"user": "u", "password": "p"})

    def test_fieldNamedKind(self):
        """
        A field may be called C{kind} (BACKUP has one).
        """
        kind, body = decodeFrame(
            encodeControl(Msg.BACKUP, kind="dir", name="x", size=1, parent=None, manifest=None)
        )
        self.assertEqual(parseControl(kind, body)["kind"], "dir")

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
    def check(self, body, kind=Msg.LOGIN):
        e = self.assertRaises(ProtocolError, parseControl, kind, body)
        self.assertEqual(e.code, Code.BAD_MESSAGE)
        return e

    def test_notJSON(self):
        """
        Bytes that are not UTF-8 JSON are refused.
        """
        self.check(b"\xff\xfe")
        self.check(b"{")

    def test_notObject(self):
        """
        A JSON array or number is refused.
        """
        self.check(b"[1]")
        self.check(b"3")

    def test_missingAndExtra(self):
        """
        A missing field and an unexpected field are refused.
        """
        self.check(b'{"user":"a"}')
        self.check(b'{"user":"a","password":"b","x":1}')

    def test_wrongTypes(self):
        """
        Wrong types are refused; C{true} is not an integer, C{null} is not
        a string.
        """
        self.check(
            b'{"name":"a","kind":"dir","size":"1","parent":null,"manifest":null}', Msg.BACKUP
        )
        self.check(
            b'{"name":"a","kind":"dir","size":true,"parent":null,"manifest":null}', Msg.BACKUP
        )
        self.check(b'{"user":1,"password":"b"}')
        self.check(b'{"user":null,"password":"b"}')

    def test_tooLong(self):
        """
        Bodies over L{MAX_CONTROL} are refused before parsing.
        """
        self.check(b'{"password":"","user":"' + b"a" * MAX_CONTROL + b'"}')

    def test_deepNesting(self):
        """
        Deeply nested JSON is refused, not a crash.
        """
        self.check(b"[" * 5000 + b"]" * 5000)

    def test_null(self):
        """
        A field whose types include L{NULL} may be null, but not absent:
        C{RESTORE {}} is refused (it once meant "the newest").
        """
        self.assertEqual(
            parseControl(Msg.RESTORE, b'{"snapshot":null,"include":[]}'),
            {"snapshot": None, "include": []},
        )
        self.assertEqual(
            parseControl(Msg.RESTORE, b'{"snapshot":"x","include":["x/a"]}'),
            {"snapshot": "x", "include": ["x/a"]},
        )
        e = self.check(b"{}", Msg.RESTORE)
        self.assertEqual(e.message, "RESTORE lacks the field 'snapshot'")

    def test_everyMessageEveryField(self):
        """
        Every control message has a schema, and for each one a body with
        all its fields passes while the same body without any one field is
        C{bad-message}.
        """
        samples = {str: "x", int: 1, bool: True, list: [], dict: {}}
        self.assertEqual(set(SCHEMAS), set(Msg) - {Msg.DATA})
        for kind, schema in SCHEMAS.items():
            full = {}
            for name, types in schema.items():
                first = types[0] if isinstance(types, tuple) else types
                full[name] = samples[first]
            self.assertEqual(parseControl(kind, json.dumps(full).encode()), full)
            for name in schema:
                partial = {k: v for k, v in full.items() if k != name}
                e = self.check(json.dumps(partial).encode(), kind)
                self.assertIn(repr(name), e.message)


class SourceNameTests(TestCase):
    def test_rule(self):
        """
        A backup name is one path component of 1 to 255 bytes of UTF-8
        without control characters, slashes or backslashes, and not C{.}
        or C{..}; a lone surrogate (which JSON can carry) is refused.
        """
        for good in ("docs", "a" * 255, "é" * 127, "my photos", ".hidden"):
            self.assertEqual(checkSourceName(good), good)
        for bad in (
            "",
            ".",
            "..",
            "a/b",
            "a\\b",
            "a\x00",
            "a\x1f",
            "a\x7f",
            "a" * 256,
            "é" * 128,
            "\ud800",
            "x\udc80",
            None,
            3,
        ):
            e = self.assertRaises(ProtocolError, checkSourceName, bad)
            self.assertEqual(e.code, Code.BAD_MESSAGE)


class SpecTests(TestCase):
    def test_messagesMatchSpec(self):
        """
        The message tables of docs/protocol.rst name every message with
        its type byte and exactly the fields of L{SCHEMAS}, and say
        C{null} where the schema allows it.
        """
        spec = os.path.join(os.path.dirname(__file__), "..", "docs", "protocol.rst")
        with open(spec, encoding="utf-8") as f:
            text = f.read()
        rows = {}
        current = None
        for line in text[text.index("\nMessages\n") : text.index("\nStates\n")].splitlines():
            start = re.match(r"([A-Z_]+)\s+0x([0-9A-F]{2})\s(.*)", line)
            if start:
                current = start.group(1)
                self.assertEqual(Msg[current], int(start.group(2), 16), current)
                rows.setdefault(current, "")
                rows[current] += " " + start.group(3)
            elif line.startswith(" ") and current is not None:
                rows[current] += " " + line
            else:
                current = None
        self.assertEqual(set(rows), {m.name for m in Msg})
        for kind, schema in SCHEMAS.items():
            described = dict(re.findall(r'"(\w+)": ([^,}]+)', rows[kind.name]))
            self.assertEqual(set(described), set(schema), kind.name)
            for name, types in schema.items():
                nullable = isinstance(types, tuple) and NULL in types
                self.assertEqual("null" in described[name], nullable, (kind.name, name))
