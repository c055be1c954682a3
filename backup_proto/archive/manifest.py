# -*- test-case-name: tests.test_manifest -*-
"""
Snapshot manifests: every entry of a snapshot with what an incremental
backup compares and a restore needs, readable without walking the tree;
and the keep list with which an incremental backup names the parent's
files it keeps (C{docs/protocol.rst}, "Incremental backups").

An entry is a tuple C{(path, kind, size, mtimeNs, mode, target, crc,
owner, link)}:

 - C{path}: the components joined with C{/}, the first being the
   snapshot's root name;
 - C{kind}: C{"file"}, C{"dir"} or C{"link"};
 - C{size}: a file's bytes, a link target's UTF-8 bytes, 0 for a folder;
 - C{mtimeNs}: the modification time in nanoseconds;
 - C{mode}: the permission bits, setuid, setgid and sticky included
   (C{0o7777} at most: the server's own copy never has the last three);
 - C{target}: a link's target, else C{None};
 - C{crc}: the CRC-32 of a file's content or a link's target, else
   C{None};
 - C{owner}: C{(uid, gid, user, group)}, the names C{None} where the
   client had none, or C{None} when the zip named no owner;
 - C{link}: for a file of a hard-link group, the path of the group's
   first file (its own path on that one), else C{None}.

A manifest written before owners and links were recorded has lines of the
first seven fields: they read as entries whose C{owner} and C{link} are
C{None}.

On disk a manifest is one JSON array per entry, one per line, gzipped; on
the wire (C{ENTRIES}) the same arrays.  Its digest is the SHA-256 of the
uncompressed lines, so that it names the content, not one compressor's
output.
"""

import base64
import functools
import hashlib
import json
import os
import zlib

from isal import igzip

from backup_proto.archive.index import Interned

KINDS = ("file", "dir", "link")

#: Base64 characters of the keep list per C{KEEP} message.
KEEP_PAGE = 12_000

_BUFFER = 64 << 10

#: Compression of a manifest on disk: it is written once, in the commit's
#: critical path, and read whole each time a backup uses it as a parent.
_LEVEL = 1


class ManifestError(ValueError):
    """
    A manifest (from the disk or the wire) is malformed, or is not the one
    its digest names.
    """


#: JSON's string encoding, non-ASCII kept as it is (the C one, where
#: present): an entry is formatted by hand around it, at a third of the
#: time C{json.dumps} takes for the same text (a manifest is written in the
#: commit's critical path, an entry per file).
_string = json.encoder.encode_basestring


@functools.lru_cache(maxsize=256)
def _ownerText(owner):
    """
    @return: the JSON text of an owner (cached: a tree has few).
    """
    if owner is None:
        return "null"
    uid, gid, user, group = owner
    user = "null" if user is None else _string(user)
    group = "null" if group is None else _string(group)
    return f"[{int(uid)},{int(gid)},{user},{group}]"


def encodeEntry(entry):
    """
    @return: the JSON text of one entry, as bytes (no newline): the same as
        C{json.dumps(list(entry), ensure_ascii=False, separators=(",",
        ":"))}.
    """
    path, kind, size, mtimeNs, mode, target, crc, owner, link = entry
    target = "null" if target is None else _string(target)
    crc = "null" if crc is None else int(crc)
    link = "null" if link is None else _string(link)
    text = (
        f'[{_string(path)},"{kind}",{int(size)},{int(mtimeNs)},{int(mode)},{target},{crc},'
        f"{_ownerText(owner)},{link}]"
    )
    return text.encode("utf-8")


def _isInt(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _isId(value):
    return _isInt(value) and 0 <= value < 1 << 32


def _isName(value):
    return value is None or isinstance(value, str) and 0 < len(value) < 256


def _checkOwner(owner):
    """
    @return: C{owner} (decoded JSON) as a tuple, C{None} for C{None}.
    @raise ManifestError: it is malformed.
    """
    if owner is None:
        return None
    if not (
        isinstance(owner, list)
        and len(owner) == 4
        and _isId(owner[0])
        and _isId(owner[1])
        and _isName(owner[2])
        and _isName(owner[3])
    ):
        raise ManifestError("manifest entry has a malformed owner")
    return tuple(owner)


def checkEntry(obj):
    """
    @raise ManifestError: unless C{obj} (decoded JSON) is a well-formed
        entry (of 9 fields, or of the first 7 from an older manifest).
    @return: the entry as a tuple of 9.
    """
    if not isinstance(obj, list) or len(obj) not in (7, 9):
        raise ManifestError("manifest entry is not a list of 9 fields")
    if len(obj) == 7:
        obj = obj + [None, None]
    path, kind, size, mtimeNs, mode, target, crc, owner, link = obj
    if (
        not isinstance(path, str)
        or not path
        or kind not in KINDS
        or not _isInt(size)
        or size < 0
        or not _isInt(mtimeNs)
        or not _isInt(mode)
        or not 0 <= mode <= 0o7777
        or not (target is None if kind != "link" else isinstance(target, str))
        or not (crc is None if kind == "dir" else _isInt(crc) and 0 <= crc < 1 << 32)
        or not (link is None or kind == "file" and isinstance(link, str) and link)
    ):
        raise ManifestError("manifest entry has a malformed field")
    return (path, kind, size, mtimeNs, mode, target, crc, _checkOwner(owner), link)


class ManifestWriter:
    """
    Writes a manifest to a new file, an entry at a time (blocking), and
    counts what it holds.

    @ivar entries: entries written.
    @ivar files: file entries written.
    @ivar size: bytes of the files and link targets.
    """

    def __init__(self, path):
        self.path = path
        self._out = igzip.open(path, "xb", compresslevel=_LEVEL)
        self._digest = hashlib.sha256()
        self._buffer = bytearray()  # the compressor takes larger writes faster
        self.entries = self.files = self.size = 0

    def add(self, path, kind, size, mtimeNs, mode, target=None, crc=None, owner=None, link=None):
        entry = (path, kind, size, mtimeNs, mode, target, crc, owner, link)
        self.addEncoded(encodeEntry(entry), kind, size)

    def addEncoded(self, line, kind, size):
        """
        Add an entry already encoded by L{encodeEntry} (one read from
        another manifest, say).
        """
        self._buffer += line
        self._buffer += b"\n"
        if len(self._buffer) >= _BUFFER:
            self._flush()
        self.entries += 1
        self.size += size if kind != "dir" else 0
        self.files += kind == "file"

    def _flush(self):
        self._out.write(self._buffer)
        self._digest.update(self._buffer)
        self._buffer.clear()

    def close(self):
        """
        Finish the file (not flushed to disk: the caller syncs the tree).

        @return: the manifest's digest, in hex.
        """
        if self._out is not None:
            self._flush()
            self._out.close()
            self._out = None
        return self._digest.hexdigest()

    def discard(self):
        """
        Close and remove the file.
        """
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def readLines(path, digest=None):
    """
    Yield the encoded entries of the manifest at C{path} (blocking), each
    without its newline.

    @param digest: the digest it must have, checked once it is all read.
    @raise ManifestError: at the end, if C{digest} does not match.
    @raise OSError: the file is missing or unreadable.
    """
    hasher = hashlib.sha256()
    try:
        with igzip.open(path, "rb") as f:
            for line in f:
                hasher.update(line)
                yield line.rstrip(b"\n")
    except (EOFError, igzip.BadGzipFile, zlib.error) as e:
        raise ManifestError(f"manifest is damaged ({e})") from None
    if digest is not None and hasher.hexdigest() != digest:
        raise ManifestError("manifest does not match its digest")


#: Lines decoded by one C{json.loads}: a call per line cost three times
#: as much (C{docs/performance.rst}).
_DECODE_BATCH = 1000


def readEntries(path, digest=None):
    """
    L{readLines}, decoded and checked: yield C{(line, entry)}.
    """
    batch = []
    for line in readLines(path, digest):
        batch.append(line)
        if len(batch) == _DECODE_BATCH:
            yield from _decoded(batch)
            batch = []
    yield from _decoded(batch)


def _decoded(lines):
    if not lines:
        return
    try:
        objs = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:
        raise ManifestError("manifest holds a line that is not JSON") from None
    if len(objs) != len(lines):  # a line holding "1,2" would decode as two
        raise ManifestError("manifest holds a line that is not one entry")
    for line, obj in zip(lines, objs):
        yield line, checkEntry(obj)


class EntryAttributes:
    """
    The modes, times, owners and hard-link groups of a manifest's entries
    by path, for a restore to give them
    (L{backup_proto.archive.plan.planArchive}'s C{attributes}), in about
    110 bytes an entry rather than 230: keyed by the path's 64-bit hash,
    mode, time and owner packed in one int (owners are few: each is kept
    once, and the entry holds its number); links are rare, and kept
    apart.  Two paths whose hashes collide get nothing (their files' own
    are used), never each other's.
    """

    def __init__(self):
        self._packed = {}
        self._owners = Interned()
        self._links = {}

    def add(self, path, mode, mtimeNs, owner=None, link=None):
        key = hash(path)
        if key in self._packed:
            self._packed[key] = None
            self._links.pop(key, None)
            return
        self._packed[key] = (((mtimeNs << 32) | self._owners.number(owner)) << 12) | mode
        if link is not None:
            self._links[key] = link

    def get(self, path):
        """
        @return: C{(mode, mtimeNs, owner, link)}, or C{None}.
        """
        key = hash(path)
        packed = self._packed.get(key)
        if packed is None:
            return None
        rest = packed >> 12
        return (
            packed & 0o7777,
            rest >> 32,
            self._owners[rest & 0xFFFFFFFF],
            self._links.get(key),
        )

    @classmethod
    def fromManifest(cls, path, digest):
        """
        Read a manifest (blocking).

        @raise ManifestError: it is damaged.
        """
        attributes = cls()
        for _line, entry in readEntries(path, digest):
            attributes.add(entry[0], entry[4], entry[3], entry[7], entry[8])
        return attributes


class KeepList:
    """
    Which entries of a parent's manifest an incremental backup keeps: one
    bit per entry, in the manifest's order (bit C{i} is bit C{i % 8} of
    byte C{i // 8}).  Sent zlib-compressed: an unchanged tree's list is a
    run of ones.

    @ivar count: the parent manifest's entries.
    @ivar kept: how many bits are set.
    """

    def __init__(self, count, bits=None):
        self.count = count
        self.bits = bytearray((count + 7) // 8) if bits is None else bits
        self.kept = sum(bin(b).count("1") for b in self.bits) if bits is not None else 0

    def keep(self, i):
        if not self.bits[i >> 3] & (1 << (i & 7)):
            self.bits[i >> 3] |= 1 << (i & 7)
            self.kept += 1

    def __contains__(self, i):
        return bool(self.bits[i >> 3] & (1 << (i & 7)))

    def pages(self):
        """
        @return: the C{bits} fields of the C{KEEP} messages that carry this
            list: base64 pieces of its zlib stream, at least one.
        """
        text = base64.b64encode(zlib.compress(bytes(self.bits), 9)).decode("ascii")
        return [text[i : i + KEEP_PAGE] for i in range(0, max(len(text), 1), KEEP_PAGE)]


class KeepListDecoder:
    """
    Rebuilds a L{KeepList} of C{count} entries from its C{KEEP} pages,
    never inflating more than the list's length (a small page cannot
    expand into much memory).
    """

    def __init__(self, count):
        self.count = count
        self._want = (count + 7) // 8
        self._inflater = zlib.decompressobj()
        self._bits = bytearray()
        self._tail = ""  # base64 characters not yet a whole quantum

    def feed(self, text):
        """
        Take the next piece of the list's base64 text (cut anywhere).

        @raise ManifestError: the page is not base64, not zlib, or holds
            more than the list.
        """
        text = self._tail + text
        whole = len(text) - len(text) % 4
        text, self._tail = text[:whole], text[whole:]
        try:
            data = base64.b64decode(text, validate=True)
            out = self._inflater.decompress(data, self._want - len(self._bits) + 1)
        except (ValueError, zlib.error):
            raise ManifestError("keep list is not base64 of a zlib stream") from None
        self._bits += out
        if len(self._bits) > self._want or self._inflater.unconsumed_tail:
            raise ManifestError("keep list is longer than the parent's manifest")

    def finish(self):
        """
        @raise ManifestError: the list is short, its stream unfinished, or
            it names entries past the manifest's end.
        @return: the L{KeepList}.
        """
        inflater = self._inflater
        if self._tail or not inflater.eof or inflater.unused_data or len(self._bits) != self._want:
            raise ManifestError("keep list does not match the parent's manifest")
        if self.count % 8 and self._bits[-1] >> (self.count % 8):
            raise ManifestError("keep list names entries past the parent's manifest")
        return KeepList(self.count, self._bits)


class Selection:
    """
    A partial restore's choice of entries: those at or below any of its
    paths (as the manifest spells them), and the folders above them.  The
    server plans the zip with it and the client checks DEST with it, so
    both pick the same entries.

    @ivar unmatched: the paths no entry has been at or below (so far).
    """

    def __init__(self, paths):
        """
        @param paths: manifest paths, without leading or trailing slashes.
        """
        self.paths = frozenset(paths)
        self.unmatched = set(self.paths)
        self._prefixes = tuple(p + "/" for p in self.paths)
        self._above = set()
        for p in self.paths:
            parts = p.split("/")
            self._above.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def wants(self, entry):
        """
        @return: whether C{entry} is restored, noting which paths it matched.
        """
        path = entry[0]
        if path in self.paths or path.startswith(self._prefixes):
            if self.unmatched:
                self.unmatched.difference_update(
                    [p for p in self.unmatched if path == p or path.startswith(p + "/")]
                )
            return True
        return path in self._above and entry[1] == "dir"


def selectEntries(entries, paths):
    """
    @return: an iterator of the entries a L{Selection} of C{paths} wants,
        in C{entries}' order.
    """
    selection = Selection(paths)
    return (entry for entry in entries if selection.wants(entry))
