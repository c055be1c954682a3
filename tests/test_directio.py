"""
Tests for L{backup_proto.directio}.
"""

import errno
import os

from backup_proto import directio
from backup_proto.directio import ALIGN, BUFFER_SIZE, DIRECT_MIN, DirectWriter
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
                    writer.write(data[i:i + piece])
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
