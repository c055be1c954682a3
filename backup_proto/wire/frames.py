# -*- test-case-name: tests.test_framing -*-
"""
Frames and messages of the backup protocol (C{docs/protocol.rst}), and the
rules of it that client and server both apply (L{MAX_RESENDS},
L{checkSourceName}), so that the client need not load the server.

On the wire every frame is a 4-byte big-endian length, then that many bytes:
one message-type byte and the message body.  Control messages carry a UTF-8
JSON object; C{DATA} carries one AES-GCM sealed chunk.  Nothing larger than
L{MAX_FRAME} is ever accepted, so a peer cannot make us buffer more than one
frame.
"""

import enum
import json

from backup_proto.wire.crypto import CHUNK_SIZE, TAG_SIZE
from backup_proto.wire.errors import Code, ProtocolError

#: Largest control message body (a JSON object).
MAX_CONTROL = 16 * 1024
#: Larger bodies some messages may have: a page of a manifest holds at
#: least one entry of any length (a path and a link target of 4,096 bytes
#: each, escaped).
CONTROL_LIMITS = {}

#: JSON's null, where a field may hold it.
NULL = type(None)

#: Largest frame: a full DATA chunk plus its tag and the type byte, with
#: headroom.  Kept near 64 KiB: Twisted's IntNStringReceiver re-copies its
#: buffer on every read, so big frames cost quadratic time (Twisted #6358).
MAX_FRAME = CHUNK_SIZE + TAG_SIZE + 1024

#: How many times a client may ask for a transfer to be sent again.
MAX_RESENDS = 3


class Msg(enum.IntEnum):
    """
    Message types (the first byte of a frame).
    """

    # client -> server
    REGISTER = 0x01
    LOGIN = 0x02
    PUBKEY = 0x03
    LIST = 0x04
    BACKUP = 0x05
    RESTORE = 0x06
    COMMIT = 0x07
    RESEND = 0x08
    MANIFEST = 0x09
    KEEP = 0x0A
    FORGET = 0x0B
    USAGE = 0x0C
    PASSWD = 0x0D
    # both directions
    DATA = 0x10
    # server -> client
    OK = 0x80
    SESSION_KEY = 0x81
    SNAPSHOTS = 0x82
    READY = 0x83
    CKSUM = 0x84
    DONE = 0x85
    RESTORE_BEGIN = 0x86
    ENTRIES = 0x87
    FORGOTTEN = 0x88
    USAGE_INFO = 0x89
    ERROR = 0xEE


def encodeData(sealed):
    """
    @return: the frame body of a C{DATA} message (without the length prefix).
    """
    return bytes((Msg.DATA,)) + sealed


def encodeControl(kind, /, **fields):
    """
    @return: the frame body of the control message C{kind} with C{fields}
        as its JSON object.
    """
    body = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return bytes((kind,)) + body.encode("utf-8")


def decodeFrame(frame):
    """
    Split a frame into its message type and body.

    @raise ProtocolError: for an empty frame or an unknown type.
    @return: C{(Msg, bytes)}
    """
    if not frame:
        raise ProtocolError(Code.BAD_FRAME, "empty frame")
    try:
        kind = Msg(frame[0])
    except ValueError:
        raise ProtocolError(Code.BAD_FRAME, f"unknown message type 0x{frame[0]:02x}") from None
    return kind, frame[1:]


#: The TCP port a server listens on and a client connects to by default.
DEFAULT_PORT = 40445

#: A snapshot as both sides know it (a row of C{SNAPSHOTS}, C{DONE}'s
#: C{snapshot}): its fields, in the catalog's column order, and their types.
SNAPSHOT_FIELDS = {
    "id": str,
    "source": str,
    "kind": str,
    "created": str,
    "zip_size": int,
    "size": int,
    "files": int,
    "parent": (str, NULL),
    "added": int,
}

#: The JSON object of every control message: each field and the types its
#: value may have (C{docs/protocol.rst}, "Messages").  Every field is
#: required; L{NULL} among the types lets it be null.
SCHEMAS = {
    Msg.REGISTER: {"user": str, "password": str},
    Msg.LOGIN: {"user": str, "password": str},
    Msg.PUBKEY: {"key": str},
    Msg.LIST: {},
    Msg.BACKUP: {
        "name": str,
        "size": int,
        "kind": str,
        "parent": (str, NULL),
        "manifest": (str, NULL),
    },
    Msg.RESTORE: {"snapshot": (str, NULL), "include": list},
    Msg.COMMIT: {"crc": int},
    Msg.RESEND: {},
    Msg.MANIFEST: {"snapshot": str},
    Msg.KEEP: {"bits": str, "more": bool},
    Msg.FORGET: {"ids": list, "policy": (dict, NULL), "source": (str, NULL), "dry_run": bool},
    Msg.USAGE: {},
    Msg.PASSWD: {"old": str, "new": str},
    Msg.OK: {"user": str},
    Msg.SESSION_KEY: {"wrapped": str},
    Msg.SNAPSHOTS: {"snapshots": list, "more": bool},
    Msg.READY: {"transfer": int, "attempt": int},
    Msg.CKSUM: {"crc": int, "size": int, "rejected": int},
    Msg.DONE: {"snapshot": dict},
    Msg.RESTORE_BEGIN: {
        "snapshot": str,
        "name": str,
        "kind": str,
        "size": int,
        "transfer": int,
        "attempt": int,
    },
    Msg.ENTRIES: {"entries": list, "more": bool, "manifest": str},
    Msg.FORGOTTEN: {"snapshots": list, "state": (str, NULL), "more": bool},
    Msg.USAGE_INFO: {
        "snapshots": int,
        "size": int,
        "used": int,
        "quota": (int, NULL),
        "newest": (str, NULL),
        "trash": int,
        "append_only": bool,
        "min_age_days": int,
        "policy": (str, NULL),
    },
    Msg.ERROR: {"code": str, "message": str, "fatal": bool},
}

#: Largest C{ENTRIES} body: one frame.
MAX_ENTRIES_PAGE = 65_000
CONTROL_LIMITS[Msg.ENTRIES] = MAX_ENTRIES_PAGE


def parseControl(kind, body):
    """
    Decode and check the JSON object of a control message against its
    entry in L{SCHEMAS}.

    @raise ProtocolError: (L{Code.BAD_MESSAGE}) for bad JSON, a non-object,
        a missing, unexpected or wrongly typed field.  (C{bool} never
        passes for C{int}.)
    @return: the object as a C{dict}.
    """
    schema = SCHEMAS[kind]
    if len(body) > CONTROL_LIMITS.get(kind, MAX_CONTROL):
        raise ProtocolError(Code.BAD_MESSAGE, f"{kind.name} message too long")
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(Code.BAD_MESSAGE, f"{kind.name} body is not a JSON object") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Code.BAD_MESSAGE, f"{kind.name} body is not a JSON object")
    for name in obj:
        if name not in schema:
            raise ProtocolError(Code.BAD_MESSAGE, f"{kind.name} has an unexpected field {name!r}")
    for name, types in schema.items():
        if name not in obj:
            raise ProtocolError(Code.BAD_MESSAGE, f"{kind.name} lacks the field {name!r}")
        _checkType(kind, name, obj[name], types)
    return obj


def _checkType(kind, name, value, types):
    if not isinstance(types, tuple):
        types = (types,)
    if isinstance(value, bool) and bool not in types:
        ok = False
    else:
        ok = isinstance(value, types)
    if not ok:
        raise ProtocolError(Code.BAD_MESSAGE, f"{kind.name} field {name!r} has the wrong type")


def checkSourceName(name):
    """
    @raise ProtocolError: unless C{name} is one safe path component (the
        top-level name of a backup).
    """
    try:
        encoded = name.encode("utf-8")  # a lone surrogate (JSON's \ud800, say) fails
    except (AttributeError, UnicodeEncodeError):
        encoded = b""
    if (
        not encoded
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
        or len(encoded) > 255
    ):
        raise ProtocolError(Code.BAD_MESSAGE, "backup name must be one safe path component")
    return name
