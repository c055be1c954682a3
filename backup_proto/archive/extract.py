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
central directory, as it arrives, turns the links into links, the
members of a hard-link group into hard links to its first file (an
earlier entry of the zip), and gives files their modes and times (and
owners and setuid, setgid and sticky bits only with C{ownership}: a
restore by root); folders get theirs at the end.  Nothing is ever written
below a link: links are made after all the data, and no entry may lie
below a file or link.

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
import zlib

from isal import isal_zlib

from backup_proto.archive.format import (
    DEFLATED,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    STORED,
    entryFields,
    entryKind,
)
from backup_proto.archive.index import ArchiveIndex, FolderAttributes
from backup_proto.archive.policy import (
    COPY_BLOCK,
    ArchiveError,
    Limits,
    NameIndex,
    TreeRules,
    checkName,
)
from backup_proto.archive.records import ZipRecordParser
from backup_proto.archive.tree import TreeWriter, applyDirAttributes

#: What decoding a name, inflating or unpacking a record raises for bad bytes.
_CORRUPT = (UnicodeDecodeError, zlib.error, isal_zlib.error, struct.error)
_KNOWN_FLAGS = FLAG_DESCRIPTOR | FLAG_UTF8 | 0x06  # 0x06: deflate speed hints
#: What the central directory must repeat of an entry, after its name:
#: flags, method, CRC-32, compressed and uncompressed size, offset.
_RECORD = struct.Struct("<HHIQQQ")
#: Bytes kept per entry until the central directory has compared it.
_DIGEST_SIZE = 16


def _parts(rawName, flags):
    """
    The path components of an entry name already checked by L{checkName},
    and whether it names a folder.
    """
    name = rawName.decode("utf-8" if flags & FLAG_UTF8 else "cp437")
    isDir = name.endswith("/")
    return tuple((name[:-1] if isDir else name).split("/")), isDir


class StreamingExtractor:
    """
    Unpacks a zip fed to L{write} piece by piece into C{dest} (blocking
    calls: use it from one thread).

    The layers: a L{ZipRecordParser} reads the records (no I/O) and calls
    this extractor, which checks what they say against the archive's
    L{TreeRules}, inflates and checks each entry's data, and has a
    L{TreeWriter} make the entries.

    What it keeps per entry is small, so that an archive of many entries
    costs little memory (L{close} releases it): for the central directory,
    a keyed 16-byte digest of each entry's name and record (a mismatch
    cannot be forged without the key, drawn anew per archive); for
    duplicates and entries below a file, what L{TreeRules} keeps; for a
    folder, its path, mode and time packed
    (L{backup_proto.archive.index.FolderAttributes}).

    @ivar _records: the digests of the entries whose data has ended, in
        order (L{_recordDigest}).
    @ivar _header: the L{backup_proto.archive.records.LocalHeader} whose
        data is arriving.
    """

    def __init__(self, dest, limits=None, progress=None, recorder=None, ownership=False):
        """
        @param ownership: give entries their recorded owners and setuid,
            setgid and sticky bits (a restore by root); else those bits
            are dropped (counted in C{droppedSpecial}) and owners left.
        """
        self._dest = dest
        self._ownership = ownership
        self.droppedSpecial = 0
        self._firsts = {}  # path of each hard-link group's first file -> (size, crc)
        self._progress = progress
        self._recorder = recorder
        self._parser = ZipRecordParser(self)
        self._rules = TreeRules(limits or Limits())
        self._tree = TreeWriter(dest, trackFolders=recorder is not None)
        self._recordedFolders = NameIndex()
        self._records = bytearray()
        self._keyedDigest = hashlib.blake2b(digest_size=_DIGEST_SIZE, key=os.urandom(16))
        self._dirs = FolderAttributes()
        self._files = 0
        self._kind = None
        self._header = None
        self._parts = None
        self._written = 0
        self._crc = 0
        self._inflater = None
        self._central = 0

    @property
    def position(self):
        """
        Bytes of the zip consumed so far.
        """
        return self._parser.position

    @property
    def complete(self):
        """
        Whether the zip's end record has arrived.
        """
        return self._parser.complete

    def write(self, data):
        """
        Take the next bytes of the zip.

        @raise ArchiveError: the zip is unsafe, corrupt or over a limit.
        @raise OSError: writing failed (a full disk, say).
        """
        try:
            self._parser.feed(data)
        except _CORRUPT as e:
            raise ArchiveError(f"archive is corrupt ({e})") from None

    # ---------------------------------------------------------- local entries

    def localHeader(self, header):
        flags, method = header.flags, header.method
        if flags & ~_KNOWN_FLAGS:
            raise ArchiveError("archive has an entry with unsupported flags (encrypted?)")
        if method not in (STORED, DEFLATED):
            raise ArchiveError("archive has an entry with an unsupported compression method")
        self._rules.entry()
        name = header.rawName.decode("utf-8" if flags & FLAG_UTF8 else "cp437", "strict")
        parts, isDir = checkName(name)
        path = "/".join(parts)
        if method == STORED and header.csize != header.usize:
            raise ArchiveError(f"entry '{path[:200]}' is stored with two different sizes")
        if flags & FLAG_DESCRIPTOR and method == DEFLATED and not header.csize and not header.usize:
            # zero sizes with a descriptor: the sizes are unknown until the end
            raise ArchiveError(f"entry '{path[:200]}' has no sizes in its local header")
        self._rules.place(parts, path, isDir, header.csize or header.usize)
        if isDir:
            self._tree.makeFolder(parts)
        else:
            self._tree.createFile(parts, header.usize)
        self._header = header
        self._parts = parts
        self._written = 0
        self._crc = 0
        self._inflater = isal_zlib.decompressobj(-15) if method == DEFLATED else None

    def entryData(self, view):
        if self._inflater is None:
            self._output(view)
            return
        inflater = self._inflater
        data = bytes(view)
        while data and not inflater.eof:
            out = inflater.decompress(data, COPY_BLOCK)
            data = inflater.unconsumed_tail
            self._output(out)

    def dataEnd(self):
        inflater = self._inflater
        if inflater is None:
            return
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
        self._written += len(data)
        if self._written > self._header.usize:
            raise ArchiveError(self._what("is larger than it declares"))
        self._rules.unpacked(self._parts, self._written, self._header.csize, len(data))
        self._crc = isal_zlib.crc32(data, self._crc)
        if self._progress is not None:
            self._progress(len(data))
        self._tree.write(data)

    def _what(self, problem):
        return f"entry '{'/'.join(self._parts)[:200]}' {problem}"

    def entryEnd(self, crc, csize, usize):
        header = self._header
        if csize != header.csize:
            raise ArchiveError(self._what("has a descriptor that disagrees with its header"))
        if self._written != usize:
            raise ArchiveError(self._what("does not match its declared size"))
        if self._crc != crc:
            raise ArchiveError(self._what("fails its CRC-32 check"))
        self._tree.finishFile()
        self._records += self._recordDigest(
            header.rawName, header.flags, header.method, crc, csize, usize, header.offset
        )
        self._header = None

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

    def centralRecord(self, record):
        name, flags = record.rawName, record.flags
        start = self._central * _DIGEST_SIZE
        if (
            self._recordDigest(
                name, flags, record.method, record.crc, record.csize, record.usize, record.offset
            )
            != (self._records[start : start + _DIGEST_SIZE])
        ):
            shown = repr(name)[2:-1][:200]
            raise ArchiveError(
                f"entry '{shown}' differs between the central directory and its local header"
            )
        # the same name as the local header's, which was checked
        parts, isDir = _parts(name, flags)
        kind, mode = entryKind(record.external, isDir)
        if kind is None:
            raise ArchiveError(f"entry '{'/'.join(parts)[:200]}' is not a file, folder or link")
        self._central += 1
        mtimeNs, owner, first = entryFields(record.extra, record.dosTime, record.dosDate)
        size, crc, link, target = record.usize, record.crc, None, None
        if first is None:
            target = self._finalize(parts, kind, mode, mtimeNs, owner)
        else:
            link, size, crc = self._linkGroup(parts, kind, record, first, mode, mtimeNs, owner)
        if self._recorder is not None:
            path = "/".join(parts)
            if kind == "dir":
                self._recordedFolders.add(hash(path))
                self._recorder.add(path, kind, 0, mtimeNs, mode, owner=owner)
            else:
                self._recorder.add(path, kind, size, mtimeNs, mode, target, crc, owner, link)

    def _applied(self, mode):
        """
        @return: the mode to give an entry: whole with C{ownership}, else
            without setuid, setgid and sticky.
        """
        if self._ownership or not mode & 0o7000:
            return mode
        self.droppedSpecial += 1
        return mode & 0o777

    def _finalize(self, parts, kind, mode, mtimeNs, owner):
        """
        Give an entry what only the central directory holds: its owner
        (with C{ownership}), mode and time, and for a link, its form (every
        entry's data has arrived, and none lies below a file or link).
        Folders wait for the end.

        @return: a link's target, else C{None}.
        """
        if self._kind is None:
            self._kind = "file" if len(parts) == 1 and kind != "dir" else "dir"
        owner = owner if self._ownership else None
        if kind == "dir":
            self._dirs.add(parts, self._applied(mode), mtimeNs, owner)
        elif kind == "file":
            self._files += 1
            self._tree.setFile(parts, self._applied(mode), mtimeNs, owner)
        else:
            if len(parts) == 1:
                raise ArchiveError("archive's top-level entry is a link")
            return self._tree.makeLink(parts, mtimeNs, owner)
        return None

    def _linkGroup(self, parts, kind, record, first, mode, mtimeNs, owner):
        """
        Make a file of a hard-link group: the first one (naming itself)
        as any file, the others, stored and empty, as links to it.

        @param first: the raw name of the group's first file.
        @return: C{(link, size, crc)} to record: the first file's path,
            size and CRC-32.
        """
        path = "/".join(parts)
        try:
            firstPath = first.decode("utf-8")
        except UnicodeDecodeError:
            firstPath = None
        if kind != "file" or not firstPath:
            raise ArchiveError(f"entry '{path[:200]}' is in a hard-link group but is not a file")
        if firstPath == path:
            if len(self._firsts) >= self._rules.limits.maxLinkGroups:
                limit = self._rules.limits.maxLinkGroups
                raise ArchiveError(f"archive has more than {limit} hard-link groups")
            self._firsts[path] = (record.usize, record.crc)
            self._finalize(parts, kind, mode, mtimeNs, owner)
            return path, record.usize, record.crc
        known = self._firsts.get(firstPath)
        if known is None or record.usize or record.method != STORED:
            raise ArchiveError(
                f"entry '{path[:200]}' is a hard link to '{firstPath[:200]}', "
                "which is not an earlier file of its group"
            )
        self._files += 1
        # a known first path was checked as an entry's name: within DEST
        self._tree.makeHardLink(parts, tuple(firstPath.split("/")), self._applied(mode), mtimeNs)
        return (firstPath, *known)

    def impliedFolders(self):
        """
        @return: the paths of the folders made only because entries lie in
            them (a zip need not list its folders), which the recorder has
            not seen; only known once the zip is complete.
        """
        return [
            path for path in self._tree.madeFolders() if hash(path) not in self._recordedFolders
        ]

    def end(self):
        pass

    # ---------------------------------------------------------- the end

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
        if not self._parser.finished:
            raise ArchiveError("archive ended early")
        index = ArchiveIndex(
            self._rules.root, self._kind, self._dirs, self._files, self._rules.total
        )
        if applyDirs:
            applyDirAttributes(self._dest, index)
        return index

    def close(self):
        """
        Close the file being written, if any (after an error, say), and
        the folder kept open; drop what was kept per entry.
        """
        self._rules.close()
        self._firsts = {}
        self._records = bytearray()
        self._tree.close()


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

    def __init__(self, dest, limits=None, progress=None, recorder=None, ownership=False):
        """
        @param recorder: a L{backup_proto.archive.manifest.ManifestWriter}
            that gets every entry as the central directory confirms it (the
            sink discards it with the rest), or C{None}.
        @param ownership: see L{StreamingExtractor}.
        """
        self.dest = dest
        self.error = None
        self.recorder = recorder
        self._made = False
        self._extractor = StreamingExtractor(dest, limits, progress, recorder, ownership)

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

    def impliedFolders(self):
        return self._extractor.impliedFolders()

    @property
    def droppedSpecial(self):
        """
        Entries whose setuid, setgid or sticky bits were dropped.
        """
        return self._extractor.droppedSpecial

    def discard(self):
        """
        Remove everything unpacked (and the manifest recorded).
        """
        self._extractor.close()
        if self.recorder is not None:
            self.recorder.discard()
        shutil.rmtree(self.dest, ignore_errors=True)
