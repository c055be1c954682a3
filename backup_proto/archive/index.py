# -*- test-case-name: tests.test_archive -*-
"""
What an archive held or left out: the results of making one
(L{ArchiveReport}) and of unpacking one (L{ArchiveIndex}).
"""

import struct
from dataclasses import dataclass, field


@dataclass(slots=True)
class Entry:
    """
    One checked archive entry.

    @ivar parts: the path components, the first being the archive's root.
    @ivar kind: C{"file"}, C{"dir"} or C{"link"}.
    @ivar mode: permission bits to apply (C{0o7777} at most).
    @ivar mtimeNs: nanoseconds since the epoch.
    @ivar owner: C{(uid, gid, user, group)} to apply, or C{None}.
    """

    parts: tuple
    kind: str
    mode: int
    mtimeNs: int
    owner: tuple = None


class Interned:
    """
    Values kept once each and named by a small number (0 is C{None}): the
    few owners of a tree's many entries, which then hold only the number.
    """

    def __init__(self):
        self._values = [None]
        self._numbers = {None: 0}

    def number(self, value):
        found = self._numbers.get(value)
        if found is None:
            found = self._numbers[value] = len(self._values)
            self._values.append(value)
        return found

    def __getitem__(self, number):
        return self._values[number]


class FolderAttributes:
    """
    The modes, times and owners of an archive's folders, kept until
    everything is in them (see L{applyDirAttributes}), packed: a folder
    costs its path and 18 bytes, not objects (a hostile archive may hold a
    million folders); each owner is kept once.  Iterating gives L{Entry}s,
    deepest first.
    """

    # mode, mtime in ns, owner's number (0: none), length of the path
    _RECORD = struct.Struct("<IqIH")

    def __init__(self):
        self._byDepth = {}  # depth -> packed records
        self._owners = Interned()

    def add(self, parts, mode, mtimeNs, owner=None):
        path = "/".join(parts).encode("utf-8")
        records = self._byDepth.setdefault(len(parts), bytearray())
        records += self._RECORD.pack(mode, mtimeNs, self._owners.number(owner), len(path))
        records += path

    def __iter__(self):
        size = self._RECORD.size
        for depth in sorted(self._byDepth, reverse=True):
            records = self._byDepth[depth]
            at = 0
            while at < len(records):
                mode, mtimeNs, owner, length = self._RECORD.unpack_from(records, at)
                at += size
                path = records[at : at + length].decode("utf-8")
                at += length
                yield Entry(tuple(path.split("/")), "dir", mode, mtimeNs, self._owners[owner])


@dataclass
class ArchiveIndex:
    """
    What an unpacked archive held: the root name, whether it is a C{"dir"}
    or a C{"file"}, its folders (L{FolderAttributes}, for
    L{applyDirAttributes}), file count and unpacked size.
    """

    root: str
    kind: str
    dirs: FolderAttributes
    files: int
    size: int


@dataclass
class ArchiveReport:
    """
    What L{backup_proto.archive.plan.planArchive} put into an archive, and what it had to leave out.

    @ivar skipped: one line per special file (socket, FIFO, device) skipped.
    @ivar unreadable: one line per file or folder that could not be read.
    @ivar changed: one line per file that changed while it was read.
    @ivar filesNew: files of an incremental backup not in its parent.
    @ivar filesChanged: files in the parent that changed (and are sent).
    @ivar filesUnchanged: files kept from the parent (not sent).
    @ivar bytesUnchanged: their bytes.
    @ivar excluded: files, links and folders left out by the plan's
        C{exclude} (a folder's contents are not counted).
    @ivar hardlinks: files sent as links to another file of the zip
        (counted in C{files}, not in C{size}).
    """

    files: int = 0
    filesNew: int = 0
    filesChanged: int = 0
    filesUnchanged: int = 0
    bytesUnchanged: int = 0
    excluded: int = 0
    hardlinks: int = 0
    dirs: int = 0
    links: int = 0
    size: int = 0
    skipped: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    changed: list = field(default_factory=list)
