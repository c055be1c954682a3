# -*- test-case-name: tests.test_zipstream -*-
"""
Unpacking a zip as its bytes arrive, without a temporary file.

L{StreamingExtractor} reads a zip front to back: each local header, the
entry's data (written into the destination at once), its data descriptor,
then the central directory, which must describe exactly the entries already
seen (same names, methods, sizes, CRCs and offsets, in the same order), and
the end records.  Only what the central directory holds -- an entry's type
(file or link) and mode -- waits for the end: until then every non-folder
entry is a private file (mode 0600, created with C{O_EXCL|O_NOFOLLOW}); the
central directory, as it arrives, turns the links into links and gives
files their modes and times; folders get theirs at the end.  Nothing is
ever written below a link: links are made after all the data, and no entry
may lie below a file or link.

Refused (L{ArchiveError}): unsafe names (L{backup_proto.archive.policy.checkName}),
duplicates after NFC, entries under more than one root or below a file or
link, a link at the top, types other than file, folder and link, encrypted
entries and methods other than stored and deflated, too many entries, too
many bytes or too high a compression ratio (L{backup_proto.archive.policy.Limits}),
and what the stream form adds: sizes missing from a local header (every zip
made by L{backup_proto.archive.stream}, or by C{zipfile} into a file, has them),
a CRC-32 that does not match the data, and a central directory that does
not match the entries.

The destination must be a fresh folder that the caller removes on error.
"""

import hashlib
import os
import shutil
import struct
import unicodedata
import zlib

from isal import isal_zlib

from backup_proto.archive.directio import DirectWriter
from backup_proto.archive.policy import COPY_BLOCK, ArchiveError, Limits, checkName
from backup_proto.archive.index import ArchiveIndex, FolderAttributes
from backup_proto.archive.tree import applyDirAttributes, makeDirs
from backup_proto.archive.format import entryKind, entryMtime
from backup_proto.archive.format import CENTRAL, CENTRAL_SIG, DEFLATED, DESCRIPTOR32, DESCRIPTOR64, DESCRIPTOR_SIG, EOCD, EOCD64, EOCD64_SIG, EOCD_SIG, FLAG_DESCRIPTOR, FLAG_UTF8, LOCAL, LOCAL_SIG, LOCATOR64, LOCATOR64_SIG, MARKER, STORED, ZIP64_TAG

_MAX_LINK_TARGET = 4096
#: Folders whose paths L{StreamingExtractor} keeps for L{makeDirs}.
_MADE_CACHE = 1024
#: What decoding a name, inflating or unpacking a record raises for bad bytes.
_CORRUPT = (UnicodeDecodeError, zlib.error, isal_zlib.error, struct.error)
_KNOWN_FLAGS = FLAG_DESCRIPTOR | FLAG_UTF8 | 0x06  # 0x06: deflate speed hints
_LOCAL_SIG_BYTES = struct.pack("<I", LOCAL_SIG)
_CENTRAL_SIG_BYTES = struct.pack("<I", CENTRAL_SIG)
#: What the central directory must repeat of an entry, after its name:
#: flags, method, CRC-32, compressed and uncompressed size, offset.
_RECORD = struct.Struct("<HHIQQQ")
#: Bytes kept per entry until the central directory has compared it.
_DIGEST_SIZE = 16


class _Seen:
    """
    The entry whose data is arriving, as its local header announced it.
    """

    __slots__ = ("name", "isDir", "flags", "method", "crc", "csize", "usize", "offset",
                 "zip64")

    def __init__(self, name, isDir, flags, method, crc, csize, usize, offset):
        self.name = name  # as in the archive
        self.isDir = isDir
        self.flags = flags
        self.method = method
        self.crc = crc
        self.csize = csize
        self.usize = usize
        self.offset = offset


class _NameIndex:
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


def _nfc(text):
    """
    C{text} in Unicode normal form C (names are compared so): ASCII, which
    most names are, is left as it is without a look at the tables.
    """
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _parts(rawName, flags):
    """
    The path components of an entry name already checked by L{checkName},
    and whether it names a folder.
    """
    name = rawName.decode("utf-8" if flags & FLAG_UTF8 else "cp437")
    isDir = name.endswith("/")
    return tuple((name[:-1] if isDir else name).split("/")), isDir


def _zip64Values(extra, wanted):
    """
    Read the zip64 extra field's values for the fields that are 0xFFFFFFFF.

    @param wanted: how many 8-byte values the record needs.
    """
    i = 0
    while i + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, i)
        if tag == ZIP64_TAG:
            if size < 8 * wanted or i + 4 + size > len(extra):
                raise ArchiveError("archive has a short zip64 field")
            return list(struct.unpack_from(f"<{wanted}Q", extra, i + 4))
        i += 4 + size
    raise ArchiveError("archive lacks a zip64 field it needs")


class StreamingExtractor:
    """
    Unpacks a zip fed to L{write} piece by piece into C{dest} (blocking
    calls: use it from one thread).

    What it keeps per entry is small, so that an archive of many entries
    costs little memory (L{close} releases it): for the central directory,
    a keyed 16-byte digest of each entry's name and record (a mismatch
    cannot be forged without the key, drawn anew per archive); for
    duplicates and entries below a file, the 64-bit hash of its NFC path
    (Python's, keyed per process: two different paths collide with odds
    under 1 in 10^7 at 10^6 entries, and a collision only refuses the
    archive), in 8 bytes of a L{_NameIndex}; for a folder, its path, mode
    and time packed (L{backup_proto.archive.index.FolderAttributes}).

    @ivar position: bytes of the zip consumed so far.
    @ivar _records: the digests of the entries whose data has ended, in
        order (L{_recordDigest}).
    @ivar _folders: the L{_NameIndex} of the folder entries' NFC paths.
    @ivar _others: the L{_NameIndex} of the other entries' NFC paths.
    """

    def __init__(self, dest, limits=None, progress=None):
        self._dest = dest
        self._limits = limits or Limits()
        self._progress = progress
        self._buffer = bytearray()
        self._step = self._header
        self._need = 4
        self._entries = 0
        self._records = bytearray()
        self._keyedDigest = hashlib.blake2b(digest_size=_DIGEST_SIZE, key=os.urandom(16))
        self._folders = _NameIndex()
        self._others = _NameIndex()
        self._checkedParent = None  # the last folder whose ancestors were checked
        self._made = {}  # folder parts -> path, see makeDirs
        self._root = None
        self._total = 0
        self._central = 0
        self._dirs = FolderAttributes()
        self._files = 0
        self._kind = None
        self._done = False
        self._fd = None
        self._folder = None  # (parts, descriptor) of the last folder used, see _folderFd
        self._writer = DirectWriter()
        self._current = None
        self.position = 0

    # ---------------------------------------------------------- feeding

    def write(self, data):
        """
        Take the next bytes of the zip.

        @raise ArchiveError: the zip is unsafe, corrupt or over a limit.
        @raise OSError: writing failed (a full disk, say).
        """
        try:
            self._parse(memoryview(data))
        except _CORRUPT as e:
            raise ArchiveError(f"archive is corrupt ({e})") from None

    def _parse(self, view):
        while view:
            step = self._step
            if step == self._data:
                used = self._data(view)
                self.position += used
                view = view[used:]
                continue
            if not self._buffer and len(view) >= LOCAL.size:
                # a whole header is here: read it in one step rather than
                # its signature, fixed part and names one at a time
                if step == self._header and view[:4] == _LOCAL_SIG_BYTES:
                    used = self._wholeLocal(view)
                elif step == self._centralNext and view[:4] == _CENTRAL_SIG_BYTES:
                    used = self._wholeCentral(view)
                else:
                    used = 0
                if used:
                    view = view[used:]
                    continue
            want = self._need - len(self._buffer)
            if want <= 0:
                raise ArchiveError("archive has data after its end")
            used = min(want, len(view))
            piece = view[:used]
            self.position += used
            view = view[used:]
            if used == want and not self._buffer:
                # the whole record is here: no copy through the buffer
                self._step(bytes(piece))
                continue
            self._buffer += piece
            if len(self._buffer) == self._need:
                block = bytes(self._buffer)
                self._buffer.clear()
                self._step(block)

    def _expect(self, count, step):
        self._need = count
        self._step = step

    # ---------------------------------------------------------- local entries

    def _header(self, block):
        (sig,) = struct.unpack("<I", block)
        self._recordStart = self.position - 4
        if sig == EOCD_SIG and not self._entries:
            raise ArchiveError("archive is empty")
        if sig == LOCAL_SIG:
            self._expect(LOCAL.size - 4, self._localFixed)
        elif sig == CENTRAL_SIG and self._entries:
            self._expect(CENTRAL.size - 4, self._centralFixed)
        else:
            raise ArchiveError("archive has an unexpected record (not a zip, or a "
                               "zip without sizes in its local headers)")

    def _wholeLocal(self, view):
        """
        Read a local header that lies whole in C{view}.

        @return: its length, or 0 if it does not lie whole in C{view}.
        """
        fields = LOCAL.unpack_from(view)
        end = LOCAL.size + fields[9] + fields[10]
        if len(view) < end:
            return 0
        self._recordStart = self.position
        self.position += end
        self._local = fields
        self._localVariable(bytes(view[LOCAL.size:end]))
        return end

    def _localFixed(self, block):
        fields = LOCAL.unpack(_LOCAL_SIG_BYTES + block)
        self._local = fields
        nameLen, extraLen = fields[9], fields[10]
        self._expect(nameLen + extraLen, self._localVariable)
        if self._need == 0:
            self._localVariable(b"")

    def _localVariable(self, block):
        _, _, flags, method, _, _, crc, csize, usize, nameLen, _ = self._local
        offset = self._recordStart
        rawName, extra = block[:nameLen], block[nameLen:]
        if flags & ~_KNOWN_FLAGS:
            raise ArchiveError("archive has an entry with unsupported flags (encrypted?)")
        if method not in (STORED, DEFLATED):
            raise ArchiveError("archive has an entry with an unsupported compression method")
        if self._entries >= self._limits.maxEntries:
            raise ArchiveError(f"archive has more than {self._limits.maxEntries} entries")
        name = rawName.decode("utf-8" if flags & FLAG_UTF8 else "cp437", "strict")
        parts, isDir = checkName(name)
        path = "/".join(parts)
        zip64 = csize == MARKER or usize == MARKER
        if zip64:
            usize, csize = _zip64Values(extra, 2)
        if method == STORED and csize != usize:
            raise ArchiveError(f"entry '{path[:200]}' is stored with two different sizes")
        if flags & FLAG_DESCRIPTOR and method == DEFLATED and csize == 0 and usize == 0:
            # zero sizes with a descriptor: the sizes are unknown until the end
            raise ArchiveError(f"entry '{path[:200]}' has no sizes in its local header")
        entry = _Seen(rawName, isDir, flags, method, crc, csize, usize, offset)
        entry.zip64 = zip64
        self._place(entry, parts, path)
        self._currentParts = parts
        self._entries += 1
        self._current = entry
        self._remaining = csize
        self._written = 0
        self._crc = 0
        self._inflater = isal_zlib.decompressobj(-15) if method == DEFLATED else None
        if csize == 0:
            self._endData()
        else:
            self._expect(1, self._data)

    def _place(self, entry, parts, path):
        """
        Check an entry against the ones before it and create it (a folder,
        or an empty private file to be filled).

        @param path: C{parts} joined with slashes.
        """
        key = hash(_nfc(path))
        if key in self._folders or key in self._others:
            raise ArchiveError(f"archive has two entries named '{path[:200]}'")
        if self._root is None:
            self._root = parts[0]
            self._rootIsFile = not entry.isDir and len(parts) == 1
        elif parts[0] != self._root:
            raise ArchiveError("archive has more than one top-level entry")
        elif self._rootIsFile:
            raise ArchiveError("archive's top-level file has other entries")
        if parts[:-1] != self._checkedParent:
            # entries come folder by folder: their ancestors are checked
            # once per folder (an entry added meanwhile in the same folder
            # is none of them: it has more components)
            parent = parts[0]
            for depth in range(1, len(parts)):
                if hash(_nfc(parent)) in self._others:
                    raise ArchiveError(f"entry '{path[:200]}' is below a file or link")
                parent = f"{parent}/{parts[depth]}"
            self._checkedParent = parts[:-1]
        if entry.isDir:
            if entry.csize or entry.usize:
                raise ArchiveError(f"folder entry '{path[:200]}' has data")
            self._folders.add(key)
            self._makeDirs(parts)
            return
        self._others.add(key)
        try:
            self._fd = os.open(
                parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600,
                dir_fd=self._folderFd(parts[:-1]),
            )
        except FileExistsError:
            raise ArchiveError("archive has two entries for one path") from None
        self._writer.start(self._fd, entry.usize)

    def _data(self, view):
        """
        Consume up to the rest of the current entry's data from C{view}.

        @return: how many bytes were used.
        """
        used = min(len(view), self._remaining)
        piece = view[:used]
        self._remaining -= used
        if self._inflater is None:
            self._output(piece)
        else:
            self._inflate(piece)
        if self._remaining == 0:
            self._endData()
        return used

    def _inflate(self, piece):
        inflater = self._inflater
        data = bytes(piece)
        while data and not inflater.eof:
            out = inflater.decompress(data, COPY_BLOCK)
            data = inflater.unconsumed_tail
            self._output(out)
        if self._remaining == 0:
            while not inflater.eof:
                out = inflater.decompress(b"", COPY_BLOCK)
                if not out:
                    break
                self._output(out)
            if not inflater.eof:
                raise ArchiveError(self._what("has a truncated deflate stream"))

    def _output(self, data):
        if not data:
            return
        entry = self._current
        self._written += len(data)
        self._total += len(data)
        if self._written > entry.usize:
            raise ArchiveError(self._what("is larger than it declares"))
        if self._total > self._limits.maxUnpacked:
            raise ArchiveError(f"archive unpacks to more than {self._limits.maxUnpacked} bytes")
        if (
            self._written > self._limits.ratioFloor
            and self._written > self._limits.maxRatio * max(entry.csize, 1)
        ):
            raise ArchiveError(self._what(f"expands more than {self._limits.maxRatio} times"))
        self._crc = isal_zlib.crc32(data, self._crc)
        if self._progress is not None:
            self._progress(len(data))
        self._writer.write(data)

    def _what(self, problem):
        return f"entry '{'/'.join(self._currentParts)[:200]}' {problem}"

    def _endData(self):
        entry = self._current
        if entry.flags & FLAG_DESCRIPTOR:
            self._expect((DESCRIPTOR64 if entry.zip64 else DESCRIPTOR32).size, self._descriptor)
            return
        self._checkEntry(entry.crc, entry.csize, entry.usize)

    def _descriptor(self, block):
        entry = self._current
        struct_ = DESCRIPTOR64 if len(block) == DESCRIPTOR64.size else DESCRIPTOR32
        sig, crc, csize, usize = struct_.unpack(block)
        if sig != DESCRIPTOR_SIG:
            raise ArchiveError(self._what("has no data descriptor"))
        if csize != entry.csize:
            raise ArchiveError(self._what("has a descriptor that disagrees with its header"))
        entry.crc, entry.usize = crc, usize
        self._checkEntry(crc, csize, usize)

    def _checkEntry(self, crc, csize, usize):
        if self._written != usize:
            raise ArchiveError(self._what("does not match its declared size"))
        if self._crc != crc:
            raise ArchiveError(self._what("fails its CRC-32 check"))
        if self._fd is not None:
            self._writer.finish()
            os.close(self._fd)
            self._fd = None
        entry = self._current
        self._records += self._recordDigest(entry.name, entry.flags, entry.method, crc, csize,
                                            usize, entry.offset)
        self._current = None
        self._expect(4, self._header)

    def _recordDigest(self, name, *record):
        """
        @return: the keyed digest of an entry's raw name and L{_RECORD}
            fields (the record's fixed length at the end makes the pair
            unambiguous).
        """
        digest = self._keyedDigest.copy()  # the key's block is hashed once per archive
        digest.update(name + _RECORD.pack(*record))
        return digest.digest()

    # ---------------------------------------------------------- central directory

    def _wholeCentral(self, view):
        """
        Read a central directory record that lies whole in C{view}.

        @return: its length, or 0 if it does not lie whole in C{view}.
        """
        if len(view) < CENTRAL.size:
            return 0
        fields = CENTRAL.unpack_from(view)
        end = CENTRAL.size + fields[10] + fields[11] + fields[12]
        if len(view) < end:
            return 0
        self.position += end
        self._centralRecord = fields
        self._centralVariable(bytes(view[CENTRAL.size:end]))
        return end

    def _centralFixed(self, block):
        fields = CENTRAL.unpack(_CENTRAL_SIG_BYTES + block)
        self._centralRecord = fields
        self._expect(fields[10] + fields[11] + fields[12], self._centralVariable)
        if self._need == 0:
            self._centralVariable(b"")

    def _centralVariable(self, block):
        (_, _, _, flags, method, _, _, crc, csize, usize, nameLen, extraLen, _, _, _,
         external, offset) = self._centralRecord
        name, extra = block[:nameLen], block[nameLen:nameLen + extraLen]
        index = self._central
        if index >= self._entries:
            raise ArchiveError("archive's central directory lists more entries than it holds")
        wanted = [usize, csize, offset].count(MARKER)
        if wanted:
            values = iter(_zip64Values(extra, wanted))
            usize = next(values) if usize == MARKER else usize
            csize = next(values) if csize == MARKER else csize
            offset = next(values) if offset == MARKER else offset
        start = index * _DIGEST_SIZE
        if self._recordDigest(name, flags, method, crc, csize, usize, offset) != (
            self._records[start:start + _DIGEST_SIZE]
        ):
            shown = repr(name)[2:-1][:200]
            raise ArchiveError(
                f"entry '{shown}' differs between the central directory and its local header"
            )
        # the same name as the local header's, which was checked
        parts, isDir = _parts(name, flags)
        kind, mode = entryKind(external, isDir)
        if kind is None:
            raise ArchiveError(
                f"entry '{'/'.join(parts)[:200]}' is not a file, folder or link")
        self._central += 1
        self._finalize(parts, kind, mode,
                       entryMtime(extra, self._centralRecord[5], self._centralRecord[6]))
        self._expect(4, self._centralNext)

    def _finalize(self, parts, kind, mode, mtime):
        """
        Give an entry what only the central directory holds: its mode and
        time, and for a link, its form (every entry's data has arrived,
        and none lies below a file or link).  Folders wait for the end.
        """
        if self._kind is None:
            self._kind = "file" if len(parts) == 1 and kind != "dir" else "dir"
        if kind == "dir":
            self._dirs.add(parts, mode, mtime)
        elif kind == "file":
            self._files += 1
            folder = self._folderFd(parts[:-1])
            os.chmod(parts[-1], mode, dir_fd=folder)
            os.utime(parts[-1], (mtime, mtime), dir_fd=folder)
        else:
            if len(parts) == 1:
                raise ArchiveError("archive's top-level entry is a link")
            # the entry's folder was made when the entry was placed: a lookup
            path = os.path.join(self._makeDirs(parts[:-1]), parts[-1])
            target = self._linkTarget(path, parts)
            os.unlink(path)
            os.symlink(target, path)
            os.utime(path, (mtime, mtime), follow_symlinks=False)

    def _makeDirs(self, parts):
        """
        L{makeDirs} with a bounded memory of the folders made: past
        L{_MADE_CACHE} it starts afresh (a folder made before is then
        found again with C{mkdir} and C{lstat}), so that an archive of a
        million folders does not keep a million paths.
        """
        if len(self._made) > _MADE_CACHE:
            self._made.clear()
        return makeDirs(self._dest, parts, self._made)

    def _folderFd(self, parts):
        """
        A descriptor of the unpacked folder C{parts} (made if need be), for
        calls that name an entry within it: entries arrive folder by folder,
        so one descriptor is kept, and the kernel looks up a name rather
        than the whole path each time (20,000 files: their modes and times
        took 0.081 s instead of 0.117 s, part of what follows the last
        byte of an upload).
        """
        if self._folder is not None:
            if self._folder[0] == parts:
                return self._folder[1]
            self._closeFolder()
        path = self._makeDirs(parts)
        self._folder = (parts, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
        return self._folder[1]

    def _closeFolder(self):
        if self._folder is not None:
            fd, self._folder = self._folder[1], None
            os.close(fd)

    def _centralNext(self, block):
        (sig,) = struct.unpack("<I", block)
        if sig == CENTRAL_SIG:
            self._expect(CENTRAL.size - 4, self._centralFixed)
        elif sig == EOCD64_SIG:
            self._expect(EOCD64.size - 4, lambda b: self._expect(4, self._centralNext))
        elif sig == LOCATOR64_SIG:
            self._expect(LOCATOR64.size - 4, lambda b: self._expect(4, self._centralNext))
        elif sig == EOCD_SIG:
            self._expect(EOCD.size - 4, self._end)
        else:
            raise ArchiveError("archive has an unexpected record in its central directory")

    def _end(self, block):
        fields = EOCD.unpack(struct.pack("<I", EOCD_SIG) + block)
        count, commentLen = fields[4], fields[7]
        if self._central != self._entries or count not in (
            self._central & 0xFFFF, 0xFFFF
        ):
            raise ArchiveError("archive's central directory does not list every entry")
        self._done = True
        self._expect(commentLen, self._trailer)
        if commentLen == 0:
            self._need = 0

    def _trailer(self, block):
        self._need = 0

    # ---------------------------------------------------------- the end

    @property
    def complete(self):
        """
        Whether the zip's end record has arrived.
        """
        return self._done

    def finish(self, applyDirs=True):
        """
        Check that the whole zip arrived, and give folders their modes and
        times, deepest first (or leave that to the caller, with
        L{backup_proto.archive.tree.applyDirAttributes}, if C{applyDirs} is
        false).  Files and links got theirs as the central directory
        arrived.

        @raise ArchiveError: the zip ended early.
        @return: an L{ArchiveIndex}.
        """
        self.close()
        if not self._done or self._buffer:
            raise ArchiveError("archive ended early")
        index = ArchiveIndex(self._root, self._kind, self._dirs, self._files, self._total)
        if applyDirs:
            applyDirAttributes(self._dest, index)
        return index

    @staticmethod
    def _linkTarget(path, parts):
        shown = "/".join(parts)[:200]
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            raw = os.read(fd, _MAX_LINK_TARGET + 1)
        finally:
            os.close(fd)
        if not 0 < len(raw) <= _MAX_LINK_TARGET:
            raise ArchiveError(f"link '{shown}' has an empty or over-long target")
        try:
            target = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"link '{shown}' has an unreadable target") from None
        if "\x00" in target:
            raise ArchiveError(f"link '{shown}' has a NUL in its target")
        return target

    def close(self):
        """
        Close the file being written, if any (after an error, say), and
        the folder kept open; drop what was kept per entry.
        """
        self._folders = _NameIndex()
        self._others = _NameIndex()
        self._checkedParent = None
        self._records = bytearray()
        self._closeFolder()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._writer.close()


def feedFile(path, write):
    """
    Give the bytes of the file at C{path} to C{write}, a block at a time
    (blocking): a zip kept in a file, to an extractor or a sink.
    """
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(COPY_BLOCK), b""):
            write(block)


def extractStream(source, dest, limits=None):
    """
    Unpack a zip file with L{StreamingExtractor} (blocking), as a reader of
    a whole file would: for tests and tools.
    """
    extractor = StreamingExtractor(dest, limits)
    try:
        feedFile(source, extractor.write)
        return extractor.finish()
    finally:
        extractor.close()


class ExtractSink:
    """
    A L{backup_proto.wire.transfer.ChunkReceiver} sink that unpacks the zip into
    C{dest} (a new folder, made at the first write) as it arrives.  An
    unsafe or corrupt zip does not stop the transfer: the first
    L{ArchiveError} is kept (C{error}), the rest of the data is dropped,
    and L{finish} raises it, so that a transfer damaged on the way can
    still end and be resent.  Storage errors (C{OSError}) are
    raised at once.
    """

    def __init__(self, dest, limits=None, progress=None):
        self.dest = dest
        self.error = None
        self._made = False
        self._extractor = StreamingExtractor(dest, limits, progress)

    def write(self, data):
        if self.error is not None:
            return
        if not self._made:
            os.mkdir(self.dest, 0o700)
            self._made = True
        try:
            self._extractor.write(data)
        except ArchiveError as e:
            self._failed(e)

    def _failed(self, error):
        self.error = error
        self._extractor.close()

    def close(self):
        """
        The transfer ended; what is unpacked stays for L{finish}.
        """
        if self.error is None and not self._extractor.complete:
            self._failed(ArchiveError("archive ended early"))
        self._extractor.close()

    def finish(self, applyDirs=True):
        """
        L{StreamingExtractor.finish} (blocking), or raise the kept error.
        """
        if self.error is not None:
            raise self.error
        return self._extractor.finish(applyDirs)

    def discard(self):
        """
        Remove everything unpacked.
        """
        self._extractor.close()
        shutil.rmtree(self.dest, ignore_errors=True)
