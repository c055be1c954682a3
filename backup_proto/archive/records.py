# -*- test-case-name: tests.test_records,tests.test_zipstream,tests.test_fuzz -*-
"""
Reading a zip's records as its bytes arrive, without I/O: bytes in, events
out.

L{ZipRecordParser} is fed the zip front to back, in pieces of any size,
and calls its handler (a L{RecordHandler}) for each local header, each
piece of entry data, the end of each entry's data (and its data
descriptor), each central directory record and the end record.  It checks
the zip's I{structure}: signatures, record lengths, zip64 fields, the data
descriptor's signature, the number of entries the central directory lists,
and nothing after the end.  What the records I{say} (names, flags, methods,
sizes against the data, the central directory against the local headers)
is the handler's to check: L{backup_proto.archive.extract} does, under
L{backup_proto.archive.policy}.

Every local header must carry the entry's compressed size (a zip made by
L{backup_proto.archive.stream}, or by C{zipfile} into a file, does): the
stream form cannot find where an entry's data ends otherwise.
"""

import struct
from dataclasses import dataclass
from typing import Protocol

from backup_proto.archive.format import (
    CENTRAL,
    CENTRAL_SIG,
    DESCRIPTOR32,
    DESCRIPTOR64,
    DESCRIPTOR_SIG,
    EOCD,
    EOCD64,
    EOCD64_SIG,
    EOCD_SIG,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    LOCAL,
    LOCAL_SIG,
    LOCATOR64,
    LOCATOR64_SIG,
    MARKER,
    ZIP64_TAG,
)
from backup_proto.archive.policy import ArchiveError

_LOCAL_SIG_BYTES = struct.pack("<I", LOCAL_SIG)
_CENTRAL_SIG_BYTES = struct.pack("<I", CENTRAL_SIG)


@dataclass(slots=True)
class LocalHeader:
    """
    An entry's local header, its sizes read from the zip64 field if need
    be.

    @ivar offset: where the header starts in the zip.
    @ivar zip64: whether the sizes were in a zip64 field (its descriptor
        then has 64-bit sizes).
    """

    rawName: bytes
    extra: bytes
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    offset: int
    zip64: bool


@dataclass(slots=True)
class CentralRecord:
    """
    An entry's central directory record, its sizes and offset read from the
    zip64 field if need be.
    """

    rawName: bytes
    extra: bytes
    flags: int
    method: int
    crc: int
    csize: int
    usize: int
    offset: int
    external: int
    dosTime: int
    dosDate: int


class RecordHandler(Protocol):
    """
    What a L{ZipRecordParser} reports, in the zip's order.  Any
    L{ArchiveError} a method raises stops the parse.
    """

    def localHeader(self, header: LocalHeader) -> None:
        """An entry begins; its data (C{header.csize} bytes) follows."""

    def entryData(self, view: memoryview) -> None:
        """The next piece of the entry's data (valid during the call only)."""

    def dataEnd(self) -> None:
        """The last byte of an entry's data has come (entries with data only)."""

    def entryEnd(self, crc: int, csize: int, usize: int) -> None:
        """The entry ended: the CRC-32 and sizes of its descriptor, if it has
        one, else of its local header."""

    def centralRecord(self, record: CentralRecord) -> None:
        """The central directory's next record."""

    def end(self) -> None:
        """The end record came: the zip is complete."""


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


class ZipRecordParser:
    """
    Parses a zip fed to L{feed} piece by piece, for a L{RecordHandler}.

    @ivar position: bytes of the zip consumed so far.
    @ivar entries: local headers read so far.
    @ivar complete: whether the end record has come.
    """

    def __init__(self, handler):
        self._handler = handler
        self._buffer = bytearray()
        self._step = self._header
        self._need = 4
        self._entry = None  # the LocalHeader whose data is arriving
        self._remaining = 0
        self._fixed = None  # a record's fixed fields, while its names arrive
        self._central = 0
        self.entries = 0
        self.complete = False
        self.position = 0

    @property
    def finished(self):
        """
        Whether the whole zip has come, and nothing is left half read.
        """
        return self.complete and not self._buffer

    def feed(self, data):
        """
        Take the next bytes of the zip.

        @raise ArchiveError: the zip is malformed, or the handler refused it.
        """
        view = memoryview(data)
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
        if sig == EOCD_SIG and not self.entries:
            raise ArchiveError("archive is empty")
        if sig == LOCAL_SIG:
            self._expect(LOCAL.size - 4, self._localFixed)
        elif sig == CENTRAL_SIG and self.entries:
            self._expect(CENTRAL.size - 4, self._centralFixed)
        else:
            raise ArchiveError(
                "archive has an unexpected record (not a zip, or a "
                "zip without sizes in its local headers)"
            )

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
        self._fixed = fields
        self._localVariable(bytes(view[LOCAL.size : end]))
        return end

    def _localFixed(self, block):
        fields = self._fixed = LOCAL.unpack(_LOCAL_SIG_BYTES + block)
        self._expect(fields[9] + fields[10], self._localVariable)
        if self._need == 0:
            self._localVariable(b"")

    def _localVariable(self, block):
        _, _, flags, method, _, _, crc, csize, usize, nameLen, _ = self._fixed
        zip64 = csize == MARKER or usize == MARKER
        extra = block[nameLen:]
        if zip64:
            usize, csize = _zip64Values(extra, 2)
        header = LocalHeader(
            block[:nameLen], extra, flags, method, crc, csize, usize, self._recordStart, zip64
        )
        self._handler.localHeader(header)
        self.entries += 1
        self._entry = header
        self._remaining = csize
        if csize == 0:
            self._endData()
        else:
            self._expect(1, self._data)

    def _data(self, view):
        """
        Hand up to the rest of the current entry's data in C{view} over.

        @return: how many bytes were used.
        """
        used = min(len(view), self._remaining)
        self._remaining -= used
        self._handler.entryData(view[:used])
        if self._remaining == 0:
            self._handler.dataEnd()
            self._endData()
        return used

    def _endData(self):
        header = self._entry
        if header.flags & FLAG_DESCRIPTOR:
            self._expect((DESCRIPTOR64 if header.zip64 else DESCRIPTOR32).size, self._descriptor)
            return
        self._entryEnd(header.crc, header.csize, header.usize)

    def _descriptor(self, block):
        struct_ = DESCRIPTOR64 if len(block) == DESCRIPTOR64.size else DESCRIPTOR32
        sig, crc, csize, usize = struct_.unpack(block)
        if sig != DESCRIPTOR_SIG:
            header = self._entry
            name = header.rawName.decode(
                "utf-8" if header.flags & FLAG_UTF8 else "cp437", "replace"
            ).rstrip("/")
            raise ArchiveError(f"entry '{name[:200]}' has no data descriptor")
        self._entryEnd(crc, csize, usize)

    def _entryEnd(self, crc, csize, usize):
        self._entry = None
        self._handler.entryEnd(crc, csize, usize)
        self._expect(4, self._header)

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
        self._fixed = fields
        self._centralVariable(bytes(view[CENTRAL.size : end]))
        return end

    def _centralFixed(self, block):
        fields = self._fixed = CENTRAL.unpack(_CENTRAL_SIG_BYTES + block)
        self._expect(fields[10] + fields[11] + fields[12], self._centralVariable)
        if self._need == 0:
            self._centralVariable(b"")

    def _centralVariable(self, block):
        (
            _,
            _,
            _,
            flags,
            method,
            dosTime,
            dosDate,
            crc,
            csize,
            usize,
            nameLen,
            extraLen,
            _,
            _,
            _,
            external,
            offset,
        ) = self._fixed
        if self._central >= self.entries:
            raise ArchiveError("archive's central directory lists more entries than it holds")
        extra = block[nameLen : nameLen + extraLen]
        wanted = [usize, csize, offset].count(MARKER)
        if wanted:
            values = iter(_zip64Values(extra, wanted))
            usize = next(values) if usize == MARKER else usize
            csize = next(values) if csize == MARKER else csize
            offset = next(values) if offset == MARKER else offset
        self._handler.centralRecord(
            CentralRecord(
                block[:nameLen],
                extra,
                flags,
                method,
                crc,
                csize,
                usize,
                offset,
                external,
                dosTime,
                dosDate,
            )
        )
        self._central += 1
        self._expect(4, self._centralNext)

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
        if self._central != self.entries or count not in (self._central & 0xFFFF, 0xFFFF):
            raise ArchiveError("archive's central directory does not list every entry")
        self.complete = True
        self._handler.end()
        self._expect(commentLen, self._trailer)
        if commentLen == 0:
            self._need = 0

    def _trailer(self, block):
        self._need = 0
