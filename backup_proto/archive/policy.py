# -*- test-case-name: tests.test_archive -*-
"""
What the zip maker (L{backup_proto.archive.zipstream}) and the zip reader
(L{backup_proto.archive.extract}) share: the archive layout, the limits, the
checks on entry names and types, and the file system steps of unpacking.
Both sides use one reader, so that they apply I{the same} checks to a zip
they did not make (C{docs/security.rst}, "What is not trusted").

Archive layout: a folder C{name} is stored as C{name/} and entries below it;
a single file as one entry C{name}.  Unix modes are in the high 16 bits of
C{external_attr}; a symbolic link is an entry with C{S_IFLNK} whose content
is the link's target; modification times are in the "extended timestamp"
extra field (0x5455), to the second.
"""

import ctypes
import os
import re
import stat
import struct
import time
import zipfile
import zlib
from dataclasses import dataclass, field

from isal import isal_zlib
from zlib_ng import zlib_ng

#: Bytes per read and write when copying file data.
COPY_BLOCK = 1 << 20

#: zlib-ng's deflate level for files deflated as streams (those over
#: L{SAMPLE_SIZE}): standard deflate streams (any zip reader inflates them)
#: made twice as fast as zlib's level 1.  A zip is planned before it is
#: made (L{backup_proto.archive.zipstream}), so compressing the same bytes twice
#: must give the same stream, and ISA-L's streaming compressor (faster
#: still) does not always (seen here on 4 of 6,000 files).
DEFLATE_LEVEL = 1

#: ISA-L's level for files deflated whole (L{deflateWhole}).  Level 0, not
#: 1: level 1 keeps its hash table in a buffer that python-isal allocates
#: for each call and does not clear, and its stream for one file of
#: C{small} differed between a plan's thread and the sending one in 17 of
#: 30 plans; level 0 keeps its table in the stream's state, which ISA-L
#: clears, and no stream differed (see L{deflateWhole}).
WHOLE_LEVEL = 0

#: File name endings that are already compressed: stored as they are.
COMPRESSED_SUFFIXES = frozenset(
    ".7z .aac .apk .avi .br .bz2 .deb .docx .epub .flac .gif .gz .heic .jar .jpeg"
    " .jpg .lz .lz4 .lzma .m4a .m4v .mkv .mov .mp3 .mp4 .odt .ogg .opus .pdf .png"
    " .pptx .rar .rpm .tbz .tgz .txz .webm .webp .whl .xlsx .xz .zip .zst".split()
)

COMPRESSION_CHOICES = ("auto", "store", "deflate")

_EXT_TIMESTAMP = 0x5455
_MAX_NAME_BYTES = 4096
_MAX_COMPONENT_BYTES = 255
_MAX_DEPTH = 256
_MAX_LINK_TARGET = 4096
_PERM_BITS = 0o777


class ArchiveError(Exception):
    """
    An archive is unsafe, malformed, or over a limit; the message names the
    first offending entry and never includes a path outside the archive.
    """


@dataclass
class Limits:
    """
    Caps applied to an archive before and while it is unpacked.

    @ivar maxEntries: entries in the central directory.
    @ivar maxUnpacked: total bytes of file contents and link targets.
    @ivar maxRatio: the most an entry larger than C{ratioFloor} may expand
        (uncompressed / compressed size).
    """

    maxEntries: int = 1_000_000
    maxUnpacked: int = 1 << 40
    maxRatio: int = 200
    ratioFloor: int = 1 << 20


@dataclass(slots=True)
class Entry:
    """
    One checked archive entry.

    @ivar parts: the path components, the first being the archive's root.
    @ivar kind: C{"file"}, C{"dir"} or C{"link"}.
    @ivar mode: permission bits to apply (C{0o777} at most).
    @ivar mtime: seconds since the epoch.
    """

    parts: tuple
    kind: str
    mode: int
    mtime: int


class FolderAttributes:
    """
    The modes and times of an archive's folders, kept until everything is
    in them (see L{applyDirAttributes}), packed: a folder costs its path
    and 14 bytes, not objects (a hostile archive may hold a million
    folders).  Iterating gives L{Entry}s, deepest first.
    """

    _RECORD = struct.Struct("<IqH")  # mode, mtime, length of the path

    def __init__(self):
        self._byDepth = {}  # depth -> packed records

    def add(self, parts, mode, mtime):
        path = "/".join(parts).encode("utf-8")
        records = self._byDepth.setdefault(len(parts), bytearray())
        records += self._RECORD.pack(mode, mtime, len(path))
        records += path

    def __iter__(self):
        size = self._RECORD.size
        for depth in sorted(self._byDepth, reverse=True):
            records = self._byDepth[depth]
            at = 0
            while at < len(records):
                mode, mtime, length = self._RECORD.unpack_from(records, at)
                at += size
                path = records[at:at + length].decode("utf-8")
                at += length
                yield Entry(tuple(path.split("/")), "dir", mode, mtime)


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
    What L{backup_proto.archive.zipstream.planArchive} put into an archive, and what it had to leave out.

    @ivar skipped: one line per special file (socket, FIFO, device) skipped.
    @ivar unreadable: one line per file or folder that could not be read.
    @ivar changed: one line per file that changed while it was read.
    """

    files: int = 0
    dirs: int = 0
    links: int = 0
    size: int = 0
    skipped: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    changed: list = field(default_factory=list)


# ---------------------------------------------------------------- choosing


def extraTimestamp(mtime):
    mtime = int(mtime)
    if not -(2**31) <= mtime < 2**31:
        return b""
    return struct.pack("<HHBl", _EXT_TIMESTAMP, 5, 1, mtime)


SAMPLE_SIZE = 65536


def newDeflater():
    """
    @return: a raw deflate compressor (zlib-ng, L{DEFLATE_LEVEL}): the
        stream for a zip entry, the same for the same input read in the
        same blocks.
    """
    return zlib_ng.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)


def rawDeflate(data):
    compressor = newDeflater()
    return compressor.compress(data) + compressor.flush()


def deflateWhole(data):
    """
    Deflate a whole file of at most L{SAMPLE_SIZE} bytes in one call, with
    ISA-L at L{WHOLE_LEVEL}: such a file is read in one block when planned
    and again when sent, so it needs no streaming compressor.

    On the 20,000 files of 1-16 KiB of text of the benchmark's C{small}
    tree this ran at 660 MB/s with a ratio of 0.44, against zlib-ng's 356
    MB/s and 0.47 (one thread); ISA-L inflates the result faster too (760
    against 680 MB/s).  It gave the same stream in the plan and when sent
    in 60 plans and streams of C{small}, 15 of C{mixed} and 40 of 6,000
    assorted files of up to 64 KiB, each planned by two threads as the
    client does, and in 24 backups of C{small} through the commands.

    @return: the raw deflate stream.
    """
    return isal_zlib.compress(data, WHOLE_LEVEL, -15)


def storedWithoutLooking(path, size, compression):
    """
    Whether a file is stored whatever its content: C{compression} is
    C{"store"}, it is tiny, or (C{"auto"}) its name says it is compressed
    already.  Such a file need not be read to plan its zip.
    """
    if compression == "store" or size < 512:
        return True
    return compression == "auto" and os.path.splitext(path)[1].lower() in COMPRESSED_SUFFIXES


def chooseMethod(path, head, size, compression):
    """
    Pick how to store a file that L{storedWithoutLooking} does not store
    (the caller asks that first, before it reads the file; asking again
    here cost the plan of 20,000 small files about 0.04 s of CPU):
    C{ZIP_STORED} for data that does not shrink (C{head}, its first 64 KiB,
    is deflated as a sample), or expands so much that the server's ratio
    limit would refuse it; C{ZIP_DEFLATED} otherwise.

    @return: C{(method, packed)}: C{packed} is the file's raw deflate stream
        (L{deflateWhole}) when it is deflated whole (a file of at most
        L{SAMPLE_SIZE} bytes, so the sample is the whole file), else
        C{None}.
    """
    whole = size <= SAMPLE_SIZE
    if compression == "deflate":
        return zipfile.ZIP_DEFLATED, (deflateWhole(head) if whole else None)
    # the sample is deflated the way the file would be
    packed = deflateWhole(head) if whole else rawDeflate(head)
    if len(packed) > len(head) * 0.9 or len(packed) * 50 < len(head):
        return zipfile.ZIP_STORED, None
    return zipfile.ZIP_DEFLATED, (packed if whole else None)


# ---------------------------------------------------------------- checking


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


def entryMtime(extra, dosTime, dosDate):
    """
    @return: an entry's modification time: the extended timestamp field's,
        else its DOS time (local time, to two seconds).
    """
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4 : i + 4 + size]
        if tag == _EXT_TIMESTAMP and len(body) >= 5 and body[0] & 1:
            return struct.unpack_from("<l", body, 1)[0]
        i += 4 + size
    return int(time.mktime((
        (dosDate >> 9) + 1980, max((dosDate >> 5) & 0xF, 1), max(dosDate & 0x1F, 1),
        dosTime >> 11, (dosTime >> 5) & 0x3F, (dosTime & 0x1F) * 2, 0, 0, -1,
    )))


def entryKind(externalAttr, isDir):
    """
    @return: C{(kind, mode)} of an entry from its C{external_attr}:
        C{("dir" | "file" | "link", permission bits)}, or C{(None, 0)} for
        any other type, or one that disagrees with the name's trailing
        slash.
    """
    mode = externalAttr >> 16
    fmt = stat.S_IFMT(mode)
    if fmt == 0:
        return ("dir" if isDir else "file"), (0o755 if isDir else 0o644)
    perm = stat.S_IMODE(mode) & _PERM_BITS
    if stat.S_ISDIR(mode) and isDir:
        return "dir", perm
    if stat.S_ISREG(mode) and not isDir:
        return "file", perm
    if stat.S_ISLNK(mode) and not isDir:
        return "link", 0o777
    return None, 0


# ---------------------------------------------------------------- unpacking


def makeDirs(dest, parts, made):
    """
    Make the folders C{parts} below C{dest}, each private (0700) until its
    attributes are applied; folders made before are found in C{made}.

    @param parts: a tuple of path components, already checked.
    @param made: a dict from the parts of each folder made to its path
        (shared between calls).
    @return: the path of the deepest folder.
    """
    path = made.get(parts)
    if path is not None:
        return path
    known = len(parts)
    while known and parts[:known] not in made:
        known -= 1
    path = made[parts[:known]] if known else dest
    for i in range(known, len(parts)):
        path = os.path.join(path, parts[i])
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError("archive entry collides with another") from None
        made[parts[: i + 1]] = path
    return path


def applyDirAttributes(dest, index):
    """
    Give the unpacked folders of C{index} below C{dest} their modes and
    modification times, deepest first (writing into a folder changes its
    time, and a read-only folder cannot be filled or moved).
    """
    for entry in index.dirs:  # deepest first
        path = os.path.join(dest, *entry.parts)
        os.chmod(path, entry.mode, follow_symlinks=False)
        os.utime(path, (entry.mtime, entry.mtime), follow_symlinks=False)


_libc = None


def syncTree(path):
    """
    Flush everything written to the file system holding C{path} to disk
    (C{syncfs(2)} on Linux: one call for a whole unpacked tree, instead of an
    C{fsync} per file; C{sync()} elsewhere).
    """
    global _libc
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(_libc, "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsyncDir(path):
    """
    C{fsync} a folder, so that a rename into it is durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
