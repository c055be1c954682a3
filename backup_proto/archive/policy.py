# -*- test-case-name: tests.test_archive -*-
"""
The rules an archive must follow, the same on both sides: they apply
I{the same} checks to a zip they did not make (C{docs/security.rst}, "What
is not trusted"): safe entry names (L{checkName}) and the limits of
entries, bytes and compression ratio (L{Limits}).
"""

import re
import struct
import unicodedata
from dataclasses import dataclass

#: Bytes per read and write when copying file data.
COPY_BLOCK = 1 << 20
_MAX_NAME_BYTES = 4096
_MAX_COMPONENT_BYTES = 255
_MAX_DEPTH = 256
#: Bytes a link's target may hold.
MAX_LINK_TARGET = 4096


class ArchiveError(Exception):
    """
    An archive is unsafe, malformed, or over a limit; the message names the
    first offending entry and never includes a path outside the archive.
    """


class OverQuota(ArchiveError):
    """
    An archive unpacks to more than its account may still store.
    """


@dataclass
class Limits:
    """
    Caps applied to an archive before and while it is unpacked.

    @ivar maxEntries: entries in the central directory.
    @ivar maxUnpacked: total bytes of file contents and link targets.
    @ivar maxRatio: the most an entry larger than C{ratioFloor} may expand
        (uncompressed / compressed size).
    @ivar maxStored: what the account's quota leaves room for, or C{None}.
    @ivar maxLinkGroups: hard-link groups (the path of each one's first
        file is kept until the end).
    """

    maxEntries: int = 1_000_000
    maxLinkGroups: int = 100_000
    maxUnpacked: int = 1 << 40
    maxRatio: int = 200
    ratioFloor: int = 1 << 20
    maxStored: int = None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def checkName(name):
    """
    Check one entry name and split it into components.

    Refused: empty names, NUL and control characters, backslashes, absolute
    paths, drives, empty, C{.} and C{..} components, over-long names and
    components, and excessive depth.

    @raise ArchiveError: naming the entry.
    @return: C{(parts, isDir)}.
    """

    def refuse(problem):
        # the name as shown is made only for a refusal: most names pass
        return ArchiveError(f"entry '{repr(name)[1:-1][:200]}' {problem}")

    if not name:
        raise ArchiveError("archive has an entry with an empty name")
    if _CONTROL.search(name):
        raise refuse("has a control character in its name")
    if "\\" in name:
        raise refuse("has a backslash in its name")
    if name.startswith("/"):
        raise refuse("has an absolute path")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise refuse("has a drive letter")
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise refuse("has a name that is too long")
    isDir = name.endswith("/")
    parts = tuple((name[:-1] if isDir else name).split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise refuse("has an empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT_BYTES:
            raise refuse("has a component that is too long")
    if len(parts) > _MAX_DEPTH:
        raise refuse("is nested too deeply")
    return parts, isDir


def nfc(text):
    """
    C{text} in Unicode normal form C (names are compared so): ASCII, which
    most names are, is left as it is without a look at the tables.
    """
    return text if text.isascii() else unicodedata.normalize("NFC", text)


class NameIndex:
    """
    A set of 64-bit name hashes in 8 bytes each and no object of its own:
    byte strings of packed keys, one per bucket of the hash's low bits (a
    set of ints holds an int object and a slot per name, about 90 bytes).
    """

    _BUCKETS = 4096
    _KEY = struct.Struct("<Q")

    def __init__(self):
        self._buckets = [None] * self._BUCKETS

    def add(self, value):
        value &= 0xFFFF_FFFF_FFFF_FFFF
        which = value % self._BUCKETS
        if self._buckets[which] is None:
            self._buckets[which] = bytearray()
        self._buckets[which] += self._KEY.pack(value)

    def __contains__(self, value):
        value &= 0xFFFF_FFFF_FFFF_FFFF
        bucket = self._buckets[value % self._BUCKETS]
        if bucket is None:
            return False
        key = self._KEY.pack(value)
        at = bucket.find(key)
        while at % 8 and at != -1:  # a match must start on a key
            at = bucket.find(key, at + 1)
        return at != -1


class TreeRules:
    """
    The tree an archive may describe, checked entry by entry without I/O:
    one top-level entry (a file alone, or a folder holding the rest), no
    two entries with one name after NFC, nothing below a file or link, and
    the L{Limits} of entries, bytes and compression ratio.

    What it keeps per entry is small, so that an archive of many entries
    costs little memory (L{close} releases it): the 64-bit hash of each NFC
    path (Python's, keyed per process: two different paths collide with
    odds under 1 in 10^7 at 10^6 entries, and a collision only refuses the
    archive), in 8 bytes of a L{NameIndex}.

    @ivar root: the top-level name, once the first entry came.
    @ivar total: bytes unpacked so far.
    @ivar _folders: the L{NameIndex} of the folder entries' NFC paths.
    @ivar _others: the L{NameIndex} of the other entries' NFC paths.
    """

    def __init__(self, limits):
        self.limits = limits
        self.root = None
        self.total = 0
        self._rootIsFile = False
        self._entries = 0
        self._folders = NameIndex()
        self._others = NameIndex()
        self._checkedParent = None  # the last folder whose ancestors were checked

    def entry(self):
        """
        Count one more entry.

        @raise ArchiveError: over L{Limits.maxEntries}.
        """
        if self._entries >= self.limits.maxEntries:
            raise ArchiveError(f"archive has more than {self.limits.maxEntries} entries")
        self._entries += 1

    def place(self, parts, path, isDir, hasData):
        """
        Check an entry's place against the entries before it, and remember
        it.

        @param path: C{parts} joined with slashes.
        @param hasData: whether it declares any bytes (a folder may not).
        """
        key = hash(nfc(path))
        if key in self._folders or key in self._others:
            raise ArchiveError(f"archive has two entries named '{path[:200]}'")
        if self.root is None:
            self.root = parts[0]
            self._rootIsFile = not isDir and len(parts) == 1
        elif parts[0] != self.root:
            raise ArchiveError("archive has more than one top-level entry")
        elif self._rootIsFile:
            raise ArchiveError("archive's top-level file has other entries")
        if parts[:-1] != self._checkedParent:
            # entries come folder by folder: their ancestors are checked
            # once per folder (an entry added meanwhile in the same folder
            # is none of them: it has more components)
            parent = parts[0]
            for depth in range(1, len(parts)):
                if hash(nfc(parent)) in self._others:
                    raise ArchiveError(f"entry '{path[:200]}' is below a file or link")
                parent = f"{parent}/{parts[depth]}"
            self._checkedParent = parts[:-1]
        if isDir:
            if hasData:
                raise ArchiveError(f"folder entry '{path[:200]}' has data")
            self._folders.add(key)
        else:
            self._others.add(key)

    def unpacked(self, parts, written, csize, length):
        """
        Count C{length} more bytes unpacked, C{written} of them so far for
        the entry C{parts} of C{csize} bytes in the zip.

        @raise ArchiveError: over L{Limits.maxUnpacked} or L{Limits.maxRatio}.
        """
        self.total += length
        limits = self.limits
        if self.total > limits.maxUnpacked:
            raise ArchiveError(f"archive unpacks to more than {limits.maxUnpacked} bytes")
        if limits.maxStored is not None and self.total > limits.maxStored:
            raise OverQuota(f"it unpacks to more than the {limits.maxStored} bytes left")
        if written > limits.ratioFloor and written > limits.maxRatio * max(csize, 1):
            what = "/".join(parts)[:200]
            raise ArchiveError(f"entry '{what}' expands more than {limits.maxRatio} times")

    def close(self):
        """
        Drop what was kept per entry.
        """
        self._folders = NameIndex()
        self._others = NameIndex()
        self._checkedParent = None
