# -*- test-case-name: tests.test_spool -*-
"""
Where a zip's plan keeps the deflate streams it makes, so that sending the
zip does not deflate every file a second time.

The protocol declares a zip's size before its first byte, so
L{backup_proto.archive.plan.planArchive} deflates each compressible file once
just to count its bytes.  Deflating (about 330 MB/s on one core here) is
the slowest step of sending a large compressible file, and the counted
stream is the very one the zip will carry: it is written here and read back
when the zip is sent, which costs a copy through the page cache instead of
a second deflate.  Memory stays flat: nothing is kept in the process,
whatever the tree holds.  (Small files are not kept: see
L{backup_proto.archive.plan._planFile}.)

The files are unnamed temporary files (C{O_TMPFILE} where the system has
it): nothing is left behind, however the process ends.  There is one per
plan thread, so each is written in order without a lock.  Once the spool
holds its limit, or its folder is full, later files are simply deflated
again when they are sent.
"""

import os
import tempfile
import threading

from backup_proto.archive.policy import COPY_BLOCK, ArchiveError

#: Bytes of deflate streams one spool keeps at most.  The files are on disk
#: (the temporary folder), but a C{/tmp} on tmpfs holds them in memory, so
#: the limit stays modest; trees whose compressible part deflates to more
#: than this are partly deflated twice.
SPOOL_LIMIT = 256 << 20


class _SpoolFile:
    """
    One plan thread's temporary file and the end of what it keeps.
    """

    __slots__ = ("file", "end")

    def __init__(self, file):
        self.file = file
        self.end = 0


class Spool:
    """
    Deflate streams kept for the second pass (see the module docstring).
    Plan threads keep streams through L{keeper}; L{read} gives one back.
    """

    def __init__(self, limit=SPOOL_LIMIT, directory=None):
        """
        @param directory: where the files go; default the temporary folder
            (C{TMPDIR}).
        """
        self._left = limit
        self._directory = directory
        self._lock = threading.Lock()
        self._local = threading.local()
        self._files = []
        self._closed = False

    def keeper(self):
        """
        Start keeping one deflate stream, in the calling thread's file.

        @return: a L{_Keeper}, or C{None} once the spool is full or closed.
        """
        spoolFile = getattr(self._local, "file", None)
        if spoolFile is None:
            with self._lock:
                if self._left <= 0 or self._closed:
                    return None
                try:
                    spoolFile = _SpoolFile(tempfile.TemporaryFile(dir=self._directory))
                except OSError:
                    self._left = 0
                    return None
                self._files.append(spoolFile)
            self._local.file = spoolFile
        if self._left <= 0:
            return None
        return _Keeper(self, spoolFile)

    def _take(self, size):
        with self._lock:
            if size > self._left:
                self._left = 0  # full: later streams are not kept either
                return False
            self._left -= size
            return True

    def _full(self):
        with self._lock:
            self._left = 0

    def read(self, where, length):
        """
        Yield a kept stream, in blocks of at most L{COPY_BLOCK} bytes.

        @param where: what L{_Keeper.finish} returned.
        @param length: the stream's length.
        """
        spoolFile, offset = where
        fd = spoolFile.file.fileno()  # ValueError once closed
        while length > 0:
            block = os.pread(fd, min(COPY_BLOCK, length), offset)
            if not block:
                raise ArchiveError("a kept deflate stream is missing from the spool")
            offset += len(block)
            length -= len(block)
            yield block

    def close(self):
        """
        Drop everything kept (the files' space is freed at once).
        """
        with self._lock:
            self._closed = True
            files, self._files = self._files, []
            self._left = 0
        for spoolFile in files:
            spoolFile.file.close()


class _Keeper:
    """
    Keeps one deflate stream, written piece by piece as it is made.  A
    stream that does not fit is dropped whole: L{finish} returns C{None}.
    """

    def __init__(self, spool, spoolFile):
        self._spool = spool
        self._file = spoolFile
        self._start = self._end = spoolFile.end

    def write(self, data):
        if self._file is None or not data:
            return
        if not self._spool._take(len(data)):
            self._file = None
            return
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self._file.file.fileno(), view, self._end)
                self._end += written
                view = view[written:]
        except (OSError, ValueError):  # a full disk, or the spool was closed
            self._spool._full()
            self._file = None

    def finish(self):
        """
        @return: where the stream is, for L{Spool.read}; C{None} if it was
            dropped.
        """
        if self._file is None:
            return None
        self._file.end = self._end
        return self._file, self._start
