# -*- test-case-name: tests.test_zipstream -*-
"""
Making a planned zip (L{backup_proto.archive.plan}) as a stream of bytes.

L{ArchiveStream} produces the zip's bytes, file by file, as the sender asks
for them: zipping overlaps with sending, and the zip is never written to a
disk (on this kind of machine each byte written costs as much as sending
it); only kept deflate streams pass through the spool's unnamed files.

The layout is the one L{backup_proto.archive.format} documents.  File
entries set general-purpose bit 3: their CRC-32 (and the sizes again) are
in a data descriptor after the data, since a file is read only once while
it is sent; their sizes are in the local header too, as the planned sizes,
so that a reader can unpack the stream as it arrives
(L{backup_proto.archive.extract}).  Any zip reader reads the result.

A file whose deflate stream the plan kept is sent as it was when planned,
and not read again.  Any other file that changes between the passes is
handled the way GNU tar handles one that changes while it is read: what is
sent keeps the planned length (a stored file that shrank is padded with
zeros, one that grew is cut), the archive stays valid, and the file is
reported in L{ArchiveReport.changed}.  The one case that cannot be kept to
its planned length, a deflated file whose new content compresses worse,
stops the stream with L{ArchiveChanged}.
"""

import os
from array import array

from isal import isal_zlib

from backup_proto.archive.compression import SAMPLE_SIZE, deflateWhole, newDeflater
from backup_proto.archive.directio import DIRECT_MIN, DirectReadAhead, enableDirect
from backup_proto.archive.format import DEFLATED, STORED, endRecords
from backup_proto.archive.plan import READ_FLAGS, planArchive, readBlocks
from backup_proto.archive.policy import COPY_BLOCK, ArchiveError
from backup_proto.archive.spool import Spool


class ArchiveChanged(ArchiveError):
    """
    A file changed while it was being sent in a way the planned zip cannot
    hold: nothing was stored, and the backup can simply be run again.
    """


def _fileData(plan, entry, changed, direct):
    """
    Yield a file entry's data, exactly C{entry.csize} bytes (the file is
    read once); return the CRC-32 and length of what was sent.

    @param direct: an aligned buffer with which to read large stored files
        past the page cache, or C{None}.
    """
    if entry.spooled is not None:
        yield from plan.spool.read(entry.spooled, entry.csize)
        return entry.crc, entry.usize
    want = entry.usize
    crc = 0
    sent = 0
    # a file of at most SAMPLE_SIZE bytes is deflated whole, as it was planned
    # (chooseMethod); a larger one as a stream
    whole = [] if entry.method == DEFLATED and want <= SAMPLE_SIZE else None
    deflater = newDeflater() if entry.method == DEFLATED and whole is None else None
    why = None
    try:
        fd = os.open(plan.pathOf(entry), READ_FLAGS)
    except OSError as e:
        fd, why = None, e.strerror
    if fd is not None and not (
        direct is not None and entry.method == STORED and want >= DIRECT_MIN and enableDirect(fd)
    ):
        direct = None
    blocks = readBlocks(fd, want, direct) if fd is not None else None
    try:
        for block in blocks or ():
            want -= len(block)
            crc = isal_zlib.crc32(block, crc)
            if whole is not None:
                whole.append(block)
                continue
            if deflater is not None:
                block = deflater.compress(block)
                if sent + len(block) > entry.csize:
                    raise ArchiveChanged(_changedText(entry))
            sent += len(block)
            yield block
        if fd is not None:
            after = os.fstat(fd)
            if want or after.st_size != entry.usize or after.st_mtime_ns != entry.mtimeNs:
                why = "changed while it was read"
    finally:
        if blocks is not None:
            blocks.close()  # a read ahead under way ends before its file is closed
        if fd is not None:
            os.close(fd)
    usize = entry.usize
    if entry.method == DEFLATED:
        tail = deflateWhole(b"".join(whole)) if whole is not None else deflater.flush()
        if sent + len(tail) > entry.csize:
            raise ArchiveChanged(_changedText(entry))
        sent += len(tail)
        yield tail
        usize -= want  # what was read
    if sent < entry.csize:
        # a stored file that shrank gets zeros, as tar does; a deflate
        # stream is complete already, and readers ignore what follows it
        zeros = bytes(min(COPY_BLOCK, entry.csize - sent))
        while sent < entry.csize:
            pad = zeros[: entry.csize - sent]
            if entry.method == STORED:
                crc = isal_zlib.crc32(pad, crc)
            sent += len(pad)
            yield pad
    if why is not None:
        changed.append(f"{entry.name.decode('utf-8', 'replace')}: {why}")
    return crc, usize


def _changedText(entry):
    return (
        f"{entry.name.decode('utf-8', 'replace')} changed while it was being sent; "
        "nothing was stored: run the backup again"
    )


def _generate(plan, changed, readAhead):
    # the CRC-32 and length of each entry as sent, in arrays (a list of
    # pairs took about 100 bytes an entry); folders and links as planned
    sentCRCs = array("q")
    sentSizes = array("q")
    direct = DirectReadAhead(COPY_BLOCK, readAhead) if readAhead is not None else None
    for entry in plan.entries:
        yield entry.localHeader()
        if entry.content is not None:
            yield entry.content
            crc, usize = entry.crc, entry.usize
        else:
            crc, usize = yield from _fileData(plan, entry, changed, direct)
            yield entry.descriptor(crc, usize)
        sentCRCs.append(crc)
        sentSizes.append(usize)
    records = []
    pending = 0
    for entry, offset, crc, usize in zip(plan.entries, plan.offsets, sentCRCs, sentSizes):
        record = entry.centralRecord(offset, crc, usize)
        records.append(record)
        pending += len(record)
        if pending >= COPY_BLOCK:
            yield b"".join(records)
            records, pending = [], 0
    records.append(endRecords(len(plan.entries), plan.centralOffset, plan.centralSize))
    yield b"".join(records)


class ArchiveStream:
    """
    The bytes of a planned zip, read like a file (C{read} and C{close}; the
    sender reads it in a thread).  Each stream reads the files anew, so a
    resend makes a new one from the same plan.

    @ivar changed: one line per file that changed while it was read.
    """

    def __init__(self, plan, readAhead=None):
        """
        @param readAhead: if given, an executor
            (L{backup_proto.archive.directio.readAheadThreads}) with which to
            read large stored files past the page cache, the next block
            always on its way: for files that are not likely to be cached,
            such as a snapshot's on the server.
        """
        self.changed = []
        self._blocks = _generate(plan, self.changed, readAhead)
        self._block = b""
        self._offset = 0

    def read(self, n):
        """
        @return: the next C{n} bytes, fewer only at the end of the zip.
        @raise ArchiveChanged: see the module docstring.
        """
        parts = []
        while n > 0:
            if self._offset >= len(self._block):
                self._block = next(self._blocks, None)
                self._offset = 0
                if self._block is None:
                    self._block = b""
                    break
                continue
            # a copy: a block may be a view of a buffer that the next block reuses
            piece = bytes(self._block[self._offset : self._offset + n])
            self._offset += len(piece)
            n -= len(piece)
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self):
        self._blocks.close()


def writeArchive(source, zipPath, name=None, compression="auto"):
    """
    Plan a zip and write it to a new file (blocking), for tools and tests.

    @return: the L{ArchiveReport}, with C{changed} filled in.
    """
    plan = planArchive(source, name, compression, Spool())
    stream = ArchiveStream(plan)
    fd = os.open(zipPath, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            while True:
                block = stream.read(COPY_BLOCK)
                if not block:
                    break
                f.write(block)
    finally:
        stream.close()
        plan.close()
    plan.report.changed = stream.changed
    return plan.report
