# -*- test-case-name: tests.test_archive,tests.test_zipstream -*-
"""
How a file goes into a zip: stored or deflated (L{chooseMethod}), and the
deflaters that must give the same stream when a file is deflated twice
(once to plan the zip, once to send it).
"""

import os
import zipfile
import zlib

from isal import isal_zlib
from zlib_ng import zlib_ng

#: zlib-ng's deflate level for files deflated as streams (those over
#: L{SAMPLE_SIZE}): standard deflate streams (any zip reader inflates them)
#: made twice as fast as zlib's level 1.  A zip is planned before it is
#: planned (L{backup_proto.archive.plan}), so compressing the same bytes twice
#: must give the same stream, and ISA-L's streaming compressor (faster
#: still) does not always (seen here on 4 of 6,000 files).
DEFLATE_LEVEL = 1
#: ISA-L's level for files deflated whole (L{deflateWhole}).  Level 0, not
#: 1: level 1 keeps its hash table in a buffer that python-isal allocates
#: for each call and does not clear, and its stream for one file of
#: C{small} differed between a plan's thread and the sending one in 17 of
#: 30 plans; level 0 keeps its table in the stream's state, which ISA-L
#: clears, and no stream differed (see L{deflateWhole}).
WHOLE_LEVEL = 0
#: File name endings that are already compressed: stored as they are.
COMPRESSED_SUFFIXES = frozenset(
    ".7z .aac .apk .avi .br .bz2 .deb .docx .epub .flac .gif .gz .heic .jar .jpeg"
    " .jpg .lz .lz4 .lzma .m4a .m4v .mkv .mov .mp3 .mp4 .odt .ogg .opus .pdf .png"
    " .pptx .rar .rpm .tbz .tgz .txz .webm .webp .whl .xlsx .xz .zip .zst".split()
)


COMPRESSION_CHOICES = ("auto", "store", "deflate")
SAMPLE_SIZE = 65536


def newDeflater():
    """
    @return: a raw deflate compressor (zlib-ng, L{DEFLATE_LEVEL}): the
        stream for a zip entry, the same for the same input read in the
        same blocks.
    """
    return zlib_ng.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)


def rawDeflate(data):
    compressor = newDeflater()
    return compressor.compress(data) + compressor.flush()


def deflateWhole(data):
    """
    Deflate a whole file of at most L{SAMPLE_SIZE} bytes in one call, with
    ISA-L at L{WHOLE_LEVEL}: such a file is read in one block when planned
    and again when sent, so it needs no streaming compressor.

    On the 20,000 files of 1-16 KiB of text of the benchmark's C{small}
    tree this ran at 660 MB/s with a ratio of 0.44, against zlib-ng's 356
    MB/s and 0.47 (one thread); ISA-L inflates the result faster too (760
    against 680 MB/s).  It gave the same stream in the plan and when sent
    in 60 plans and streams of C{small}, 15 of C{mixed} and 40 of 6,000
    assorted files of up to 64 KiB, each planned by two threads as the
    client does, and in 24 backups of C{small} through the commands.

    @return: the raw deflate stream.
    """
    return isal_zlib.compress(data, WHOLE_LEVEL, -15)


def storedWithoutLooking(path, size, compression):
    """
    Whether a file is stored whatever its content: C{compression} is
    C{"store"}, it is tiny, or (C{"auto"}) its name says it is compressed
    already.  Such a file need not be read to plan its zip.
    """
    if compression == "store" or size < 512:
        return True
    return compression == "auto" and os.path.splitext(path)[1].lower() in COMPRESSED_SUFFIXES


def chooseMethod(path, head, size, compression):
    """
    Pick how to store a file that L{storedWithoutLooking} does not store
    (the caller asks that first, before it reads the file; asking again
    here cost the plan of 20,000 small files about 0.04 s of CPU):
    C{ZIP_STORED} for data that does not shrink (C{head}, its first 64 KiB,
    is deflated as a sample), or expands so much that the server's ratio
    limit would refuse it; C{ZIP_DEFLATED} otherwise.

    @return: C{(method, packed)}: C{packed} is the file's raw deflate stream
        (L{deflateWhole}) when it is deflated whole (a file of at most
        L{SAMPLE_SIZE} bytes, so the sample is the whole file), else
        C{None}.
    """
    whole = size <= SAMPLE_SIZE
    if compression == "deflate":
        return zipfile.ZIP_DEFLATED, (deflateWhole(head) if whole else None)
    # the sample is deflated the way the file would be
    packed = deflateWhole(head) if whole else rawDeflate(head)
    if len(packed) > len(head) * 0.9 or len(packed) * 50 < len(head):
        return zipfile.ZIP_STORED, None
    return zipfile.ZIP_DEFLATED, (packed if whole else None)
