# -*- test-case-name: tests.test_archive -*-
"""
Checking and unpacking zip archives held in a file (a restore, on the
client), and what the zip makers share: the method choice and the entry
layout.  Zips are made as they are sent by L{backup_proto.zipstream}; the
server unpacks uploads as they arrive with L{backup_proto.unzipstream},
which applies the same checks.

One module serves the client (backup, restore) and the server (receive,
restore), so that the two sides apply I{the same} checks to a zip they did
not make (C{../shared/SECURITY.md} T1-T8).

Archive layout: a folder C{name} is stored as C{name/} and entries below it;
a single file as one entry C{name}.  Unix modes are in the high 16 bits of
C{external_attr}; a symbolic link is an entry with C{S_IFLNK} whose content
is the link's target; modification times are in the "extended timestamp"
extra field (0x5455), to the second.

Unpacking is fail-closed: L{checkArchive} reads the whole central directory
and refuses the archive if any entry is unsafe, before a byte is written;
L{extractArchive} then writes only into a fresh directory, never through a
link, and counts what it writes.
"""

import ctypes
import os
import stat
import struct
import time
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field

from isal import isal_zlib

#: Bytes per read and write when copying file data.
COPY_BLOCK = 1 << 20

#: ISA-L deflate level for deflated entries: standard deflate streams (any
#: zip reader inflates them) made several times faster than zlib's level 1.
DEFLATE_LEVEL = 1

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


#: What zipfile and zlib raise for a corrupt or unsupported zip.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, isal_zlib.error, EOFError, ValueError,
              NotImplementedError, OverflowError)


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


@dataclass
class Entry:
    """
    One checked archive entry.

    @ivar parts: the path components, the first being the archive's root.
    @ivar kind: C{"file"}, C{"dir"} or C{"link"}.
    @ivar mode: permission bits to apply (C{0o777} at most).
    @ivar mtime: seconds since the epoch.
    @ivar target: a link's target, else C{None}.
    """

    info: zipfile.ZipInfo
    parts: tuple
    kind: str
    mode: int
    mtime: int
    target: str = None


@dataclass
class ArchiveIndex:
    """
    What L{checkArchive} found: the root name, whether the archive is a
    C{"dir"} or a C{"file"}, its entries, file count and unpacked size.
    """

    root: str
    kind: str
    entries: list
    files: int
    size: int


@dataclass
class ArchiveReport:
    """
    What L{backup_proto.zipstream.planArchive} put into an archive, and what it had to leave out.

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
    @return: a raw deflate compressor (ISA-L, L{DEFLATE_LEVEL}): the stream
        for a zip entry.
    """
    return isal_zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)


def rawDeflate(data):
    compressor = newDeflater()
    return compressor.compress(data) + compressor.flush()


def chooseMethod(path, head, size, compression):
    """
    Pick how to store a file: C{ZIP_STORED} for small files, already
    compressed formats and data that does not shrink (C{head}, its first
    64 KiB, is deflated as a sample), or expands so much that the server's
    ratio limit would refuse it; C{ZIP_DEFLATED} otherwise.

    @return: C{(method, packed)}: C{packed} is the raw deflate stream of the
        whole file when the sample was the whole file, else C{None}.
    """
    if compression == "store" or size < 512:
        return zipfile.ZIP_STORED, None
    if compression == "deflate":
        return zipfile.ZIP_DEFLATED, None
    if os.path.splitext(path)[1].lower() in COMPRESSED_SUFFIXES:
        return zipfile.ZIP_STORED, None
    packed = rawDeflate(head)
    if len(packed) > len(head) * 0.9 or len(packed) * 50 < len(head):
        return zipfile.ZIP_STORED, None
    return zipfile.ZIP_DEFLATED, (packed if len(head) == size else None)


def _useFastInflate(stream, info):
    """
    Make a zipfile entry stream use ISA-L to inflate.  zipfile has no hook
    for this; its readers keep the codec in C{_decompressor} (CPython 3.8 to
    3.14), and the format is the same raw deflate.  Where the attribute is
    missing, zlib stays.
    """
    if info.compress_type != zipfile.ZIP_DEFLATED:
        return
    if getattr(stream, "_decompressor", None) is not None and stream.tell() == 0:
        stream._decompressor = isal_zlib.decompressobj(-15)


# ---------------------------------------------------------------- checking


def checkName(name):
    """
    Check one entry name and split it into components.

    Refused: empty names, NUL and control characters, backslashes, absolute
    paths, drives, empty, C{.} and C{..} components, over-long names and
    components, and excessive depth.

    @raise ArchiveError: naming the entry.
    @return: C{(parts, isDir)}.
    """
    shown = repr(name)[1:-1][:200]
    if not name:
        raise ArchiveError("archive has an entry with an empty name")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ArchiveError(f"entry '{shown}' has a control character in its name")
    if "\\" in name:
        raise ArchiveError(f"entry '{shown}' has a backslash in its name")
    if name.startswith("/"):
        raise ArchiveError(f"entry '{shown}' has an absolute path")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise ArchiveError(f"entry '{shown}' has a drive letter")
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise ArchiveError(f"entry '{shown}' has a name that is too long")
    isDir = name.endswith("/")
    parts = tuple((name[:-1] if isDir else name).split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise ArchiveError(f"entry '{shown}' has an empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT_BYTES:
            raise ArchiveError(f"entry '{shown}' has a component that is too long")
    if len(parts) > _MAX_DEPTH:
        raise ArchiveError(f"entry '{shown}' is nested too deeply")
    return parts, isDir


def entryMtime(info):
    extra = info.extra
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        body = extra[i + 4 : i + 4 + size]
        if tag == _EXT_TIMESTAMP and len(body) >= 5 and body[0] & 1:
            return struct.unpack_from("<l", body, 1)[0]
        i += 4 + size
    return int(time.mktime(info.date_time + (0, 0, -1)))


def entryKind(info, isDir):
    mode = info.external_attr >> 16
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


def checkArchive(zf, limits):
    """
    Check every entry of an open archive without writing anything.

    Refuses the archive whole for: an unsafe name (L{checkName}); an entry
    that is not a file, folder or link; an encrypted entry or a compression
    method other than stored or deflated; duplicate names; an entry below a
    file or a link (writing through a link); entries under more than one
    root, or a file root with other entries; too many entries, too many
    bytes, or too high a compression ratio; a link target that is empty,
    too long, or not UTF-8.

    @param zf: an open L{zipfile.ZipFile}.
    @param limits: the L{Limits} to apply.
    @raise ArchiveError: naming the first problem.
    @return: an L{ArchiveIndex}.
    """
    infos = zf.infolist()
    if not infos:
        raise ArchiveError("archive is empty")
    if len(infos) > limits.maxEntries:
        raise ArchiveError(f"archive has more than {limits.maxEntries} entries")
    entries = []
    kinds = {}
    total = 0
    files = 0
    for info in infos:
        parts, isDir = checkName(info.filename)
        shown = "/".join(parts)[:200]
        kind, mode = entryKind(info, isDir)
        if kind is None:
            raise ArchiveError(f"entry '{shown}' is not a file, folder or link")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"entry '{shown}' is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise ArchiveError(f"entry '{shown}' uses an unsupported compression method")
        key = unicodedata.normalize("NFC", "/".join(parts))
        if key in kinds:
            raise ArchiveError(f"archive has two entries named '{shown}'")
        kinds[key] = kind
        total += info.file_size
        if total > limits.maxUnpacked:
            raise ArchiveError(f"archive unpacks to more than {limits.maxUnpacked} bytes")
        if (
            info.file_size > limits.ratioFloor
            and info.file_size > limits.maxRatio * max(info.compress_size, 1)
        ):
            raise ArchiveError(f"entry '{shown}' expands more than {limits.maxRatio} times")
        target = None
        if kind == "link":
            if not 0 < info.file_size <= _MAX_LINK_TARGET:
                raise ArchiveError(f"link '{shown}' has an empty or over-long target")
            try:
                target = zf.read(info).decode("utf-8")
            except (UnicodeDecodeError, zipfile.BadZipFile, zlib.error) as e:
                raise ArchiveError(f"link '{shown}' has an unreadable target") from e
            if "\x00" in target or len(target) != len(target.strip("\x00")):
                raise ArchiveError(f"link '{shown}' has a NUL in its target")
        if kind == "file":
            files += 1
        entries.append(Entry(info, parts, kind, mode, entryMtime(info), target))

    root = entries[0].parts[0]
    for entry in entries:
        if entry.parts[0] != root:
            raise ArchiveError("archive has more than one top-level entry")
        for depth in range(1, len(entry.parts)):
            parent = unicodedata.normalize("NFC", "/".join(entry.parts[:depth]))
            if kinds.get(parent, "dir") != "dir":
                raise ArchiveError(
                    f"entry '{'/'.join(entry.parts)[:200]}' is below a file or link"
                )
    rootKind = kinds.get(unicodedata.normalize("NFC", root), "dir")
    if rootKind == "link":
        raise ArchiveError("archive's top-level entry is a link")
    if rootKind == "file" and len(entries) != 1:
        raise ArchiveError("archive's top-level file has other entries")
    return ArchiveIndex(root, rootKind, entries, files, total)


def checkArchiveFile(zipPath, limits):
    """
    L{checkArchive} on the zip at C{zipPath} (blocking).

    @raise ArchiveError: also for a file that is not a readable zip.
    """
    try:
        with zipfile.ZipFile(zipPath) as zf:
            return checkArchive(zf, limits)
    except ZIP_ERRORS as e:
        raise ArchiveError(f"not a valid zip archive ({e})") from None


# ---------------------------------------------------------------- unpacking


def makeDirs(dest, parts, made):
    path = dest
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        key = parts[: i + 1]
        if key not in made:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    raise ArchiveError("archive entry collides with another") from None
            made.add(key)
    return path


class _Releaser:
    """
    Gives back the page cache and disk blocks of the part of a zip that has
    been unpacked, by punching holes in it (C{fallocate(2)}), when the zip is
    thrown away afterwards anyway.  New page-cache pages are slow on this
    kind of machine (a VM), so recycling the zip's pages for the unpacked
    files roughly halves the time to unpack a large file, and the zip's
    dirty pages are never written to disk.  Does nothing where
    C{fallocate} cannot punch holes.
    """

    _PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    _fallocate = None

    def __init__(self, path):
        self._fd = None
        self._done = 0
        try:
            if _Releaser._fallocate is None:
                libc = ctypes.CDLL(None, use_errno=True)
                libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong,
                                           ctypes.c_longlong]
                _Releaser._fallocate = libc.fallocate
            self._fd = os.open(path, os.O_WRONLY)
        except (OSError, AttributeError):
            self._fd = None

    def release(self, upto):
        """
        Punch out bytes C{0..upto} of the zip (everything already read).
        """
        if self._fd is None or upto <= self._done:
            return
        if self._fallocate(self._fd, self._PUNCH, 0, upto) != 0:
            self.close()
            return
        self._done = upto

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: Punch the consumed part of a stored entry every this many bytes.
_RELEASE_EVERY = 64 << 20


def _writeFile(zf, entry, path, budget, progress, releaser=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    written = 0
    stored = entry.info.compress_type == zipfile.ZIP_STORED
    try:
        with zf.open(entry.info) as src:
            _useFastInflate(src, entry.info)
            while True:
                block = src.read(COPY_BLOCK)
                if not block:
                    break
                written += len(block)
                if written > entry.info.file_size or written > budget:
                    raise ArchiveError(
                        f"entry '{'/'.join(entry.parts)[:200]}' is larger than it declares"
                    )
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view):]
                if progress is not None:
                    progress(len(block))
                if releaser is not None and stored and written % _RELEASE_EVERY < len(block):
                    # the data starts after the local header, past this offset
                    releaser.release(entry.info.header_offset + written)
        os.fchmod(fd, entry.mode)
        os.utime(fd, (entry.mtime, entry.mtime))
    finally:
        os.close(fd)
    return written


def extractArchive(zipPath, dest, limits, progress=None, applyDirs=True, consume=False):
    """
    Check and unpack an archive into C{dest} (blocking: run in a thread).

    C{dest} must be a fresh, empty folder that the caller created; on error
    the caller removes it.  Files are created with C{O_EXCL|O_NOFOLLOW};
    links are created last and nothing is ever written below one; folder
    modes and times are applied last, deepest first (or later by the caller
    with L{applyDirAttributes}, if C{applyDirs} is false).

    @param consume: the zip is thrown away afterwards, whatever happens:
        release its pages as it is unpacked (L{_Releaser}).
    @raise ArchiveError: the archive is unsafe, corrupt or over a limit.
    @return: the L{ArchiveIndex}.
    """
    try:
        with zipfile.ZipFile(zipPath) as zf:
            index = checkArchive(zf, limits)
            extractChecked(zf, index, dest, limits, progress, applyDirs, consume)
    except ZIP_ERRORS as e:
        raise ArchiveError(f"archive is corrupt ({e})") from None
    return index


def extractChecked(zf, index, dest, limits, progress=None, applyDirs=True, consume=False):
    """
    Unpack an archive already checked by L{checkArchive}, from the same open
    C{zf} (validating one object and extracting another is how parser
    differentials slip through: SECURITY.md T5).  See L{extractArchive}.
    """
    made = set()
    links = []
    budget = limits.maxUnpacked
    offsets = [e.info.header_offset for e in index.entries]
    releaser = None
    if consume and zf.filename and offsets == sorted(offsets):
        # only when entries come in file order: nothing released is read again
        releaser = _Releaser(zf.filename)
    try:
        for entry in index.entries:
            if releaser is not None:
                releaser.release(entry.info.header_offset)
            if entry.kind == "dir":
                makeDirs(dest, entry.parts, made)
            elif entry.kind == "file":
                parent = makeDirs(dest, entry.parts[:-1], made)
                path = os.path.join(parent, entry.parts[-1])
                budget -= _writeFile(zf, entry, path, budget, progress, releaser)
            else:
                links.append(entry)
        for entry in links:
            parent = makeDirs(dest, entry.parts[:-1], made)
            path = os.path.join(parent, entry.parts[-1])
            os.symlink(entry.target, path)
            os.utime(path, (entry.mtime, entry.mtime), follow_symlinks=False)
    except FileExistsError:
        raise ArchiveError("archive has two entries for one path") from None
    except ZIP_ERRORS as e:
        raise ArchiveError(f"archive is corrupt ({e})") from None
    finally:
        if releaser is not None:
            releaser.close()
    if applyDirs:
        applyDirAttributes(dest, index)


def applyDirAttributes(dest, index):
    """
    Give the unpacked folders of C{index} below C{dest} their modes and
    modification times, deepest first (writing into a folder changes its
    time, and a read-only folder cannot be filled or moved).
    """
    dirs = [e for e in index.entries if e.kind == "dir"]
    for entry in sorted(dirs, key=lambda e: len(e.parts), reverse=True):
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
