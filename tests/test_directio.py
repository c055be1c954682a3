"""
Tests for L{backup_proto.archive.directio}.
"""

import errno
import os
import threading

from backup_proto.archive import directio
from backup_proto.archive.directio import (
    ALIGN,
    BUFFER_SIZE,
    DIRECT_MIN,
    DirectReadAhead,
    DirectWriter,
    enableDirect,
    readAheadThreads,
)
from tests.helpers import TestCase


class DirectWriterTests(TestCase):
    def writeFiles(self, sizes, piece=65536 + 3):
        """
        Write files of the given sizes through one writer, in odd pieces;
        return their contents and whether each went past the page cache.
        """
        writer = DirectWriter()
        contents, direct = [], []
        for n, size in enumerate(sizes):
            data = os.urandom(size)
            fd = os.open(f"f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                direct.append(writer.start(fd, size))
                for i in range(0, size, piece):
                    writer.write(data[i : i + piece])
                writer.finish()
            finally:
                os.close(fd)
            contents.append(data)
        writer.close()
        for n, data in enumerate(contents):
            with open(f"f{n}", "rb") as f:
                self.assertEqual(f.read(), data, f"file {n}")
        return direct

    def test_sizes(self):
        """
        Large files, with and without a partial last block, and small ones
        in between, are written exactly; only large ones go direct (where
        the file system allows it).
        """
        sizes = [DIRECT_MIN + 12345, 100, DIRECT_MIN + BUFFER_SIZE, DIRECT_MIN + ALIGN + 1, 0]
        direct = self.writeFiles(sizes)
        self.assertEqual((direct[1], direct[4]), (False, False))
        self.assertEqual(direct[0], direct[2])  # all or none of the large ones
        self.assertEqual(direct[0], direct[3])

    def test_refused(self):
        """
        Where O_DIRECT cannot be switched on, files are written the
        ordinary way.
        """
        self.patch(directio, "enableDirect", lambda fd: False)
        self.assertEqual(self.writeFiles([DIRECT_MIN + 5]), [False])

    def test_writeRefusedMidway(self):
        """
        A direct write refused with EINVAL (an alignment the device does
        not accept) is redone without O_DIRECT, for the rest of the file.
        """
        self.patch(directio, "enableDirect", lambda fd: True)
        calls = []
        realWrite = os.write

        def write(fd, data):
            calls.append(len(data))
            if len(calls) == 2:
                raise OSError(errno.EINVAL, "Invalid argument")
            return realWrite(fd, data)

        self.patch(directio.os, "write", write)
        self.writeFiles([DIRECT_MIN + 2 * BUFFER_SIZE + 777])  # the second buffer is refused
        self.assertGreater(len(calls), 2)


class DirectReadAheadTests(TestCase):
    """
    L{DirectReadAhead} reads the next block while the caller holds one.
    """

    block = 16 * ALIGN

    def threads(self):
        """
        @return: an executor of reads, shut down at cleanup (after the
            descriptors are closed: cleanups run last first).
        """
        threads = readAheadThreads()
        self.addCleanup(threads.shutdown)
        return threads

    def openDirect(self, size):
        """
        Write a file of C{size} random bytes and open it with O_DIRECT on.

        @return: its content and the descriptor (closed at cleanup).
        """
        data = os.urandom(size)
        with open("f", "wb") as f:
            f.write(data)
        fd = os.open("f", os.O_RDONLY)
        self.addCleanup(os.close, fd)
        if not enableDirect(fd):
            self.skipTest("this file system refuses O_DIRECT")
        return data, fd

    def recordReads(self, before=None):
        """
        Count the reads (their offsets); C{before(offset)} runs in the
        reading thread before each.
        """
        offsets = []
        real = directio._readAt

        def readAt(fd, want, buffer, offset):
            offsets.append(offset)
            if before is not None:
                before(offset)
            return real(fd, want, buffer, offset)

        self.patch(directio, "_readAt", readAt)
        return offsets

    def test_blocks(self):
        """
        The blocks are the file's bytes in the sizes asked for, the last
        one short; each read starts where the one before ended.
        """
        data, fd = self.openDirect(3 * self.block + 100)
        offsets = self.recordReads()
        reader = DirectReadAhead(self.block, self.threads())
        blocks = [bytes(b) for b in reader.blocks(fd, [ALIGN] + [self.block] * 3)]
        self.assertEqual(
            [len(b) for b in blocks], [ALIGN, self.block, self.block, self.block - ALIGN + 100]
        )
        self.assertEqual(b"".join(blocks), data)
        self.assertEqual(offsets, [0, ALIGN, ALIGN + self.block, ALIGN + 2 * self.block])

    def test_endsEarly(self):
        """
        A file shorter than the sizes asked for (it shrank) ends at its
        short block, with no read after it.
        """
        data, fd = self.openDirect(self.block + 5000)
        offsets = self.recordReads()
        blocks = [
            bytes(b)
            for b in DirectReadAhead(self.block, self.threads()).blocks(fd, [self.block] * 4)
        ]
        self.assertEqual(b"".join(blocks), data)
        self.assertEqual(offsets, [0, self.block])

    def test_readsAhead(self):
        """
        While the caller holds a block, the next one is read.
        """
        data, fd = self.openDirect(2 * self.block)
        secondRead = threading.Event()
        self.recordReads(lambda offset: offset and secondRead.set())
        blocks = DirectReadAhead(self.block, self.threads()).blocks(fd, [self.block] * 2)
        first = bytes(next(blocks))
        # not asked for yet: only a read ahead can set it
        self.assertTrue(secondRead.wait(30))
        self.assertEqual(first + bytes(next(blocks)), data)
        self.assertEqual(list(blocks), [])

    def test_closeWaits(self):
        """
        Closing the blocks waits for the read under way, which uses the
        descriptor and the buffer that the caller frees next.
        """
        data, fd = self.openDirect(2 * self.block)
        gate = threading.Event()
        self.recordReads(lambda offset: offset and gate.wait(30))
        blocks = DirectReadAhead(self.block, self.threads()).blocks(fd, [self.block] * 2)
        self.assertEqual(bytes(next(blocks)), data[: self.block])
        closer = threading.Thread(target=blocks.close)
        closer.start()
        closer.join(0.2)
        self.assertTrue(closer.is_alive())  # held by the second read
        gate.set()
        closer.join(30)
        self.assertFalse(closer.is_alive())
