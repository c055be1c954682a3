# -*- test-case-name: tests.test_zipstream,tests.test_archive -*-
"""
The zip records both sides share: signatures, record layouts, flags and
the encoding of times and modes; the maker (L{backup_proto.archive.plan},
L{backup_proto.archive.stream}) writes them and the reader
(L{backup_proto.archive.records}) reads them.

Archive layout: a folder C{name} is stored as C{name/} and entries below it;
a single file as one entry C{name}.  Unix modes are in the high 16 bits of
C{external_attr}; a symbolic link is an entry with C{S_IFLNK} whose content
is the link's target; modification times are in the "extended timestamp"
extra field (0x5455), to the second, with ours (L{NANOSECONDS_TAG}) for
the nanoseconds past it.  Owners are in Info-ZIP's Unix field (0x7875, the
ids) and ours (L{NAMES_TAG}, the names); a hard link names its group's
first file in ours (L{HARDLINK_TAG}); all three in the central directory
only.
"""

import functools
import grp
import pwd
import stat
import struct
import time

STORED = 0
DEFLATED = 8
LOCAL_SIG = 0x04034B50
CENTRAL_SIG = 0x02014B50
DESCRIPTOR_SIG = 0x08074B50
EOCD_SIG = 0x06054B50
EOCD64_SIG = 0x06064B50
LOCATOR64_SIG = 0x07064B50
LOCAL = struct.Struct("<IHHHHHIIIHH")
CENTRAL = struct.Struct("<IHHHHHHIIIHHHHHII")
DESCRIPTOR32 = struct.Struct("<IIII")
DESCRIPTOR64 = struct.Struct("<IIQQ")
EOCD = struct.Struct("<IHHHHIIH")
EOCD64 = struct.Struct("<IQHHIIQQQQ")
LOCATOR64 = struct.Struct("<IIQI")
FLAG_DESCRIPTOR = 0x08
FLAG_UTF8 = 0x800
ZIP64_TAG = 0x0001
#: A 32-bit size or offset field holding this value is in the zip64 extra.
MARKER = 0xFFFFFFFF
#: Sizes and offsets from this value on are written in a zip64 extra field
#: (tests lower it, and L{ZIP64_COUNT}, to check zip64 on small zips).
ZIP64_LIMIT = MARKER
#: From this many entries on the end records are zip64 ones.
ZIP64_COUNT = 0xFFFF
VERSION = 20
VERSION64 = 45
MADE_BY = (3 << 8) | VERSION64  # Unix, so that readers honour the mode bits
#: A local header's zip64 field: tag, size, and both sizes.
ZIP64_LOCAL = struct.Struct("<HHQQ")
EXT_TIMESTAMP = 0x5455
#: Our extra field (C{docs/protocol.rst}, "Archives"): the nanoseconds to
#: add to the extended timestamp's second, a signed 32-bit count.
NANOSECONDS_TAG = 0x6E73
NANOSECONDS = struct.Struct("<HHl")
#: Info-ZIP's "new Unix" field: version 1, then each id's size and value.
UNIX_IDS_TAG = 0x7875
_UNIX_IDS = struct.Struct("<HHBBIBI")
#: Our field with the owner's user and group names (each a byte of length,
#: then UTF-8), beside the ids: a root restore maps names first, as tar does.
NAMES_TAG = 0x6E6F
#: Our field marking a file of a hard-link group: the UTF-8 name of the
#: group's first entry (the entry's own on that first one, which carries
#: the data; the others are stored, empty, and linked to it).
HARDLINK_TAG = 0x6C68


def dosTimeDate(seconds):
    t = time.localtime(max(seconds, 315532800))  # DOS times start in 1980
    return (t.tm_hour << 11) | (t.tm_min << 5) | (t.tm_sec // 2), (
        ((t.tm_year - 1980) << 9) | (t.tm_mon << 5) | t.tm_mday
    )


@functools.lru_cache(maxsize=256)
def externalAttributes(mode):
    """
    @return: a zip entry's external attributes for C{mode} (cached: a tree
        has few distinct modes, and each entry then shares one int).
    """
    external = (stat.S_IFMT(mode) | stat.S_IMODE(mode)) << 16
    if stat.S_ISDIR(mode):
        external |= 0x10  # MS-DOS directory flag
    return external


def wholeSeconds(ns):
    """
    @return: C{ns} nanoseconds in whole seconds, cut toward zero: the
        second both an entry's DOS time and its extra field hold, worked
        out from the exact time (a float's rounding can reach the next one).
    """
    return ns // 1_000_000_000 if ns >= 0 else -(-ns // 1_000_000_000)


def extraTimes(mtimeNs):
    """
    @return: an entry's extra fields for its modification time: the
        extended timestamp (whole seconds), and ours with the nanoseconds
        past that second when there are any (C{docs/protocol.rst},
        "Archives").  Nothing for a time the extended timestamp cannot hold.
    """
    seconds = wholeSeconds(mtimeNs)
    if not -(2**31) <= seconds < 2**31:
        return b""
    fields = struct.pack("<HHBl", EXT_TIMESTAMP, 5, 1, seconds)
    fraction = mtimeNs - seconds * 1_000_000_000
    if fraction:
        fields += NANOSECONDS.pack(NANOSECONDS_TAG, 4, fraction)
    return fields


@functools.lru_cache(maxsize=64)
def _userName(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


@functools.lru_cache(maxsize=64)
def _groupName(gid):
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return None


def _nameBytes(name):
    raw = (name or "").encode("utf-8", "surrogateescape")
    return raw if len(raw) < 256 else b""


@functools.lru_cache(maxsize=256)
def ownerFields(uid, gid, user=None, group=None, lookUp=True):
    """
    @return: the extra fields naming an entry's owner: Info-ZIP's ids and
        our names (looked up here unless given or C{lookUp} is false),
        cached: a tree has few owners, and its entries share one bytes.
    """
    if lookUp:
        user = _userName(uid) if user is None else user
        group = _groupName(gid) if group is None else group
    fields = _UNIX_IDS.pack(UNIX_IDS_TAG, 11, 1, 4, uid & 0xFFFFFFFF, 4, gid & 0xFFFFFFFF)
    user, group = _nameBytes(user), _nameBytes(group)
    if user or group:
        body = bytes([len(user)]) + user + bytes([len(group)]) + group
        fields += struct.pack("<HH", NAMES_TAG, len(body)) + body
    return fields


def hardlinkField(leader):
    """
    @param leader: the UTF-8 name of the group's first entry.
    @return: the extra field that puts an entry in that hard-link group.
    """
    return struct.pack("<HH", HARDLINK_TAG, len(leader)) + leader


@functools.lru_cache(maxsize=256)
def _owner(ids, names):
    """
    @return: C{(uid, gid, user, group)} from the bodies of the two owner
        fields (C{None} for what is missing or malformed), or C{None}.
    """
    uid = gid = user = group = None
    if len(ids) >= 1 and ids[0] == 1:
        at = 1
        values = []
        for _ in range(2):
            if at >= len(ids) or ids[at] not in (1, 2, 4) or at + 1 + ids[at] > len(ids):
                values = None
                break
            values.append(int.from_bytes(ids[at + 1 : at + 1 + ids[at]], "little"))
            at += 1 + ids[at]
        if values:
            uid, gid = values
    if names:
        try:
            length = names[0]
            user = names[1 : 1 + length].decode("utf-8") or None
            glength = names[1 + length]
            group = names[2 + length : 2 + length + glength].decode("utf-8") or None
            if 2 + length + glength != len(names):
                user = group = None
        except (IndexError, UnicodeDecodeError):
            user = group = None
    if uid is None:
        return None
    return (uid, gid, user, group)


def entryFields(extra, dosTime, dosDate):
    """
    Read what an entry's central extra field says (one pass).

    @return: C{(mtimeNs, owner, leader)}: the modification time in
        nanoseconds (the extended timestamp's second plus our nanoseconds
        field's, else the DOS time: local time, to two seconds); the owner
        C{(uid, gid, user, group)} or C{None}; the raw name of its
        hard-link group's first entry, or C{None}.
    """
    seconds = fraction = leader = None
    ids = names = b""
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4 : i + 4 + size]
        if tag == EXT_TIMESTAMP and len(body) >= 5 and body[0] & 1:
            seconds = struct.unpack_from("<l", body, 1)[0]
        elif tag == NANOSECONDS_TAG and len(body) == 4:
            (fraction,) = struct.unpack("<l", body)
        elif tag == UNIX_IDS_TAG:
            ids = body
        elif tag == NAMES_TAG:
            names = body
        elif tag == HARDLINK_TAG:
            leader = body
        i += 4 + size
    owner = _owner(ids, names) if ids else None
    return _mtimeNs(seconds, fraction, dosTime, dosDate), owner, leader


def _mtimeNs(seconds, fraction, dosTime, dosDate):
    if seconds is not None:
        if fraction is not None and -1_000_000_000 < fraction < 1_000_000_000:
            return seconds * 1_000_000_000 + fraction
        return seconds * 1_000_000_000
    dos = time.mktime(
        (
            (dosDate >> 9) + 1980,
            max((dosDate >> 5) & 0xF, 1),
            max(dosDate & 0x1F, 1),
            dosTime >> 11,
            (dosTime >> 5) & 0x3F,
            (dosTime & 0x1F) * 2,
            0,
            0,
            -1,
        )
    )
    return int(dos) * 1_000_000_000


def entryKind(externalAttr, isDir):
    """
    @return: C{(kind, mode)} of an entry from its C{external_attr}:
        C{("dir" | "file" | "link", permission bits)} (setuid, setgid and
        sticky included: C{0o7777} at most), or C{(None, 0)} for any other type,
        or one that disagrees with the name's trailing slash.
    """
    mode = externalAttr >> 16
    fmt = stat.S_IFMT(mode)
    if fmt == 0:
        return ("dir" if isDir else "file"), (0o755 if isDir else 0o644)
    perm = stat.S_IMODE(mode)
    if stat.S_ISDIR(mode) and isDir:
        return "dir", perm
    if stat.S_ISREG(mode) and not isDir:
        return "file", perm
    if stat.S_ISLNK(mode) and not isDir:
        return "link", 0o777
    return None, 0


def endRecords(count, centralOffset, centralSize):
    """
    The end of central directory record, after a zip64 one (and its
    locator) when the counts or offsets need it.
    """
    end = centralOffset + centralSize
    if count >= ZIP64_COUNT or centralOffset >= ZIP64_LIMIT or centralSize >= ZIP64_LIMIT:
        return (
            EOCD64.pack(
                EOCD64_SIG, 44, MADE_BY, VERSION64, 0, 0, count, count, centralSize, centralOffset
            )
            + LOCATOR64.pack(LOCATOR64_SIG, 0, end, 1)
            + EOCD.pack(EOCD_SIG, 0, 0, 0xFFFF, 0xFFFF, MARKER, MARKER, 0)
        )
    return EOCD.pack(EOCD_SIG, 0, 0, count, count, centralSize, centralOffset, 0)
