"""
Tests for L{backup_proto.wire.cksum}: it must equal GNU C{cksum}.
"""

import os
import shutil
import subprocess
import zlib

from backup_proto.wire.cksum import Cksum, cksumBytes, cksumFile
from tests.helpers import TestCase


class FixedVectorTests(TestCase):
    """
    Vectors checked against coreutils C{cksum}.
    """

    def test_empty(self):
        """
        The empty input gives 4294967295, unlike C{zlib.crc32}'s 0.
        """
        self.assertEqual(cksumBytes(b""), 4294967295)
        self.assertNotEqual(cksumBytes(b""), zlib.crc32(b""))

    def test_check(self):
        """
        C{123456789} gives 930766865.
        """
        self.assertEqual(cksumBytes(b"123456789"), 930766865)

    def test_oneByte(self):
        """
        One byte C{a} gives 1220704766 (C{printf a | cksum}).
        """
        self.assertEqual(cksumBytes(b"a"), 1220704766)

    def test_incremental(self):
        """
        Feeding the data in pieces of any size gives the same CRC.
        """
        data = os.urandom(200_001)
        whole = cksumBytes(data)
        for step in (1, 7, 4096, 65536, 100_000):
            c = Cksum()
            for i in range(0, len(data), step):
                c.update(memoryview(data)[i : i + step])
            self.assertEqual(c.value(), whole)
            self.assertEqual(c.length, len(data))

    def test_valueDoesNotDisturb(self):
        """
        Reading the value midway leaves the running CRC intact.
        """
        c = Cksum()
        c.update(b"1234")
        c.value()
        c.update(b"56789")
        self.assertEqual(c.value(), 930766865)


class CoreutilsTests(TestCase):
    """
    Random files of several sizes against the C{cksum} binary.
    """

    def setUp(self):
        super().setUp()
        if shutil.which("cksum") is None:
            self.skipTest("coreutils cksum is not installed")

    def test_randomFiles(self):
        """
        For sizes around byte, chunk and length-suffix boundaries, our CRC
        and length equal what C{cksum} prints.
        """
        for size in (0, 1, 255, 256, 65535, 65536, 65537, 1 << 20, 3 * (1 << 20) + 5):
            path = f"r{size}.bin"
            with open(path, "wb") as f:
                f.write(os.urandom(size))
            out = subprocess.run(["cksum", path], capture_output=True, check=True, text=True)
            crc, length, _ = out.stdout.split()
            self.assertEqual(cksumFile(path), (int(crc), int(length)), size)
