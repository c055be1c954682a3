# -*- test-case-name: tests.test_cksum -*-
"""
POSIX C{cksum}: the CRC that GNU coreutils' C{cksum} prints.

The algorithm (POSIX.1-2017, C{cksum}): CRC-32 with polynomial 0x04C11DB7,
MSB first, initial value 0, over the data followed by the data's length in
as few bytes as needed (least significant byte first), and the result
complemented.  It is I{not} C{zlib.crc32} (a reflected CRC with other
initial and final values): C{cksum} of C{b""} is 4294967295 and of
C{b"123456789"} is 930766865.

The table-driven loop runs in C, in the maintained C{anycrc} library (many
GB/s), so a 1 GiB upload costs well under a second of CRC work.
"""

import anycrc

# init=0 and xorout=0 make the library's result the raw register, so that
# chunks can be chained: calc(b, calc(a)) == calc(a + b).
_crc32 = anycrc.CRC(width=32, poly=0x04C11DB7, init=0, refin=False, refout=False, xorout=0)


class Cksum:
    """
    An incremental POSIX C{cksum}.

    @ivar _crc: the CRC register over the bytes seen so far.
    @ivar length: how many bytes were fed to L{update}.
    """

    def __init__(self):
        self._crc = 0
        self.length = 0

    def update(self, data):
        """
        Feed more bytes (C{bytes}, C{bytearray} or C{memoryview}).
        """
        self._crc = _crc32.calc(data, self._crc)
        self.length += len(data)

    def value(self):
        """
        @return: the C{cksum} CRC of everything fed so far, as C{cksum}
            prints it (an C{int} in 0..2**32-1).  The object stays usable.
        """
        length = self.length
        suffix = bytearray()
        while length:
            suffix.append(length & 0xFF)
            length >>= 8
        return ~_crc32.calc(bytes(suffix), self._crc) & 0xFFFFFFFF


def cksumBytes(data):
    """
    @return: the POSIX C{cksum} CRC of C{data}.
    """
    c = Cksum()
    c.update(data)
    return c.value()


def cksumFile(path, blockSize=1 << 20):
    """
    @return: C{(crc, length)} of the file at C{path}, read in blocks.
    """
    c = Cksum()
    with open(path, "rb") as f:
        while True:
            block = f.read(blockSize)
            if not block:
                break
            c.update(block)
    return c.value(), c.length
