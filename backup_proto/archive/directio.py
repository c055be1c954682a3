# -*- test-case-name: tests.test_directio -*-
"""
Writing and reading large files past the page cache (C{O_DIRECT}).

On this kind of machine (a VM) a page-cache page the guest has not used
before costs more than the copy into it, so large files are written and
read past the cache at two to three times the speed (C{docs/performance.rst}).  The
unpacked files of a snapshot are read rarely, so they need not stay
cached.  The final C{syncfs} still makes them durable.

C{O_DIRECT} wants the buffer address, the file offset and the length
aligned to the device's block size; L{DirectWriter} copies data into a
page-aligned C{mmap} buffer, writes whole buffers, and writes the last
partial block with C{O_DIRECT} switched off.  Where C{O_DIRECT} is refused
(tmpfs, some file systems, other systems), it writes the ordinary way.
"""

import errno
import fcntl
import mmap
import os
from concurrent.futures import ThreadPoolExecutor, wait

#: Files at least this large are written with C{O_DIRECT} (and, on the
#: server, read so for restores); smaller files gain nothing and pay for
#: the switches (C{docs/performance.rst}).
DIRECT_MIN = 256 << 10
#: The aligned buffer: bytes per write.
BUFFER_SIZE = 1 << 20
#: Alignment assumed for offsets and lengths (the largest common block size).
ALIGN = 4096
#: Threads of a read-ahead executor (L{readAheadThreads}), shared by the
#: streams its owner makes (each has at most one read under way).
READ_AHEAD_THREADS = 4

_O_DIRECT = getattr(os, "O_DIRECT", 0)


def enableDirect(fd):
    """
    Switch C{O_DIRECT} on for C{fd}.

    @return: whether it is on.
    """
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
    except OSError:
        return False
    return True


def _disableDirect(fd):
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~_O_DIRECT)


def _writeAll(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class DirectWriter:
    """
    Writes one file after another, large ones through one aligned buffer.
    Use L{start} for each file (an open, empty descriptor), L{write} for
    its data, and L{finish} before closing it.
    """

    def __init__(self):
        self._buffer = None
        self._fill = 0
        self._fd = None
        self._direct = False

    def start(self, fd, size):
        """
        Begin writing a file of C{size} bytes on C{fd}: with C{O_DIRECT} if
        it is large enough and the file system allows it.

        @return: whether this file goes past the page cache.
        """
        self._fd = fd
        self._fill = 0
        self._direct = size >= DIRECT_MIN and enableDirect(fd)
        if self._direct and self._buffer is None:
            self._buffer = mmap.mmap(-1, BUFFER_SIZE)
        return self._direct

    def write(self, data):
        """
        Write C{data} (any bytes-like object) to the current file.
        """
        if not self._direct:
            _writeAll(self._fd, data)
            return
        view = memoryview(data)
        while view:
            piece = view[: BUFFER_SIZE - self._fill]
            self._buffer[self._fill : self._fill + len(piece)] = piece
            self._fill += len(piece)
            view = view[len(piece) :]
            if self._fill == BUFFER_SIZE:
                self._flush(BUFFER_SIZE)
                if not self._direct:
                    _writeAll(self._fd, view)
                    return

    def _flush(self, length):
        try:
            written = os.write(self._fd, memoryview(self._buffer)[:length])
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            written = 0
        if written != length:
            # refused or short (not expected for a regular file): the
            # rest of the file goes the ordinary way
            _disableDirect(self._fd)
            self._direct = False
            _writeAll(self._fd, memoryview(self._buffer)[written:length])
        self._fill = 0

    def finish(self):
        """
        Write what is buffered for the current file: the aligned part with
        C{O_DIRECT}, the tail without.
        """
        if self._direct and self._fill:
            fill = self._fill
            aligned = fill - fill % ALIGN
            tail = bytes(memoryview(self._buffer)[aligned:fill])
            if aligned:
                self._flush(aligned)
            if tail:
                if self._direct:
                    _disableDirect(self._fd)
                _writeAll(self._fd, tail)
        self._fd = None
        self._fill = 0
        self._direct = False

    def close(self):
        """
        Free the buffer.
        """
        if self._buffer is not None:
            self._buffer.close()
            self._buffer = None


def _readAt(fd, want, buffer, offset):
    """
    Read up to C{want} bytes at C{offset} (aligned) of C{fd}, which has
    C{O_DIRECT} on (L{enableDirect}), through C{buffer} (an C{mmap} of at
    least C{want} bytes rounded up to L{ALIGN}).

    @return: a view of the bytes read in C{buffer} (fewer at the end of
        the file), valid until C{buffer} is read into again.  Not a copy:
        a copy of each block made restores slower (C{docs/performance.rst}).
    """
    length = -(-want // ALIGN) * ALIGN
    got = os.preadv(fd, [memoryview(buffer)[:length]], offset)
    return memoryview(buffer)[: min(got, want)]


def readAheadThreads():
    """
    @return: a new executor for L{DirectReadAhead}'s reads, of
        L{READ_AHEAD_THREADS} threads started as needed; its owner shuts it
        down (the server's service, or the command that made it).
    """
    return ThreadPoolExecutor(READ_AHEAD_THREADS, thread_name_prefix="backup-read-ahead")


class DirectReadAhead:
    """
    Reads files that have C{O_DIRECT} on with the next block always on its
    way: a block is read in a thread of its own into one of two aligned
    buffers while the caller works on the block before it, in the other.

    C{O_DIRECT} reads get no read-ahead from the kernel, so one after the
    other they leave the disk idle while each block is handled (C{docs/performance.rst}).
    Only blocks of one file are read ahead, so a file's first block is
    always waited for: L{backup_proto.archive.stream} reads these files in
    whole blocks from the start.
    """

    def __init__(self, size, threads):
        """
        @param size: the largest block that will be asked for.
        @param threads: the executor that reads ahead (L{readAheadThreads}).
        """
        self._buffers = (mmap.mmap(-1, size), mmap.mmap(-1, size))
        self._threads = threads

    def blocks(self, fd, sizes):
        """
        Yield the blocks of C{fd} from its start, of the given sizes (each
        a multiple of L{ALIGN} but the last), stopping early at the end of
        the file.  Each is a view of a buffer, valid until the next one is
        asked for.  Close the generator before closing C{fd}: it waits for
        a read under way.
        """
        threads = self._threads
        sizes = iter(sizes)
        want = next(sizes, 0)
        offset = 0
        turn = 0
        reading = None
        if want:
            reading = threads.submit(_readAt, fd, want, self._buffers[turn], offset)
        try:
            while reading is not None:
                block = reading.result()
                reading = None
                if not block:
                    return
                offset += len(block)
                if len(block) == want:  # a short block is the end of the file
                    want = next(sizes, 0)
                    if want:
                        turn ^= 1
                        reading = threads.submit(_readAt, fd, want, self._buffers[turn], offset)
                yield block
        finally:
            if reading is not None:
                wait([reading])
