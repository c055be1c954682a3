# -*- test-case-name: tests.test_allocator -*-
"""
Keeping the C allocator from handing a bulk-data buffer's memory back to
the kernel, only to fault it in again for the next buffer.

Bulk data passes through buffers of 64 KiB to a few MiB: frames, chunks,
and the TLS records that Twisted's transports join before each send.
glibc gives an allocation above its mmap threshold (128 KiB at first,
raised to the size of each such block freed) pages of its own, and gives
the top of its heap back to the kernel whenever more than its trim
threshold (twice the mmap threshold) lies free there.  Either way the next
buffer lands on pages that the kernel must map and zero again.  Measured
here: two 3 MiB buffers made and dropped 50 times cost 75,231 page faults
with glibc's defaults and none with L{tuneAllocator}; a server restoring
the mixed tree spent 0.34-0.44 s of its reactor thread in Twisted's
C{FileDescriptor.doWrite}, which joins the pending TLS records into one
buffer before each send.

Fixed thresholds keep buffers of up to L{MMAP_THRESHOLD} on the heap, and
up to L{TRIM_THRESHOLD} of free heap at its top for the next ones;
L{ARENA_MAX} keeps threads from each holding such memory of their own.
Measured here, client and server both tuned or both not, alternated:
restores of the mixed tree took 1.15-1.40 s against 1.34-1.58 s, the
server using 0.64-0.88 s of CPU for each against 0.93-1.05 s; backups of
the large tree took 2.17-2.22 s against 2.55-2.85 s; backups of the small
and mixed trees were 0.02-0.13 s faster (7 of 7); restores of the large
tree were faster in 5 of 8 and slower in 3 (they vary by up to 0.8 s
here either way).  Peak RSS did not grow:
backing up the mixed tree the client peaked at 68.5-69.4 MiB against
69.7-70.8 MiB, and the server was within 1 MiB.
"""

import ctypes
import os

#: C{mallopt} parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Allocations up to this size come from the heap.
MMAP_THRESHOLD = 8 << 20
#: Free memory at the top of the heap kept for later allocations.
TRIM_THRESHOLD = 32 << 20
#: Heaps ("arenas") that threads allocate from at most.  glibc makes up to
#: eight per core, one per thread as they come, and each keeps its own
#: free memory: with the thresholds above, a backup of the mixed tree
#: peaked at 77.7-78.4 MiB in the client with glibc's count, against
#: 67.8-68.7 MiB with 2 (and 69.5-71.2 MiB untuned).  The interpreter's lock
#: already lets one thread at a time allocate in most places.
ARENA_MAX = 2
#: Environment variables with which a user tunes glibc's allocator: if any
#: is set, the user's choice stands.
USER_SETTINGS = (
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_ARENA_MAX",
    "GLIBC_TUNABLES",
)


def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def tuneAllocator(libc=None, environ=os.environ):
    """
    Set glibc's mmap and trim thresholds and its count of arenas for this
    process (and the ones it forks later): call it first thing, before
    threads start.  Elsewhere (musl, other systems: no C{mallopt}), and
    where the user tuned the allocator through the environment, it does
    nothing.

    @param libc: the C library (a stand-in in tests).
    @return: whether all three were set.
    """
    if any(name in environ for name in USER_SETTINGS):
        return False
    mallopt = getattr(_libc() if libc is None else libc, "mallopt", None)
    if mallopt is None:
        return False
    return all(
        [
            mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            mallopt(M_ARENA_MAX, ARENA_MAX),
        ]
    )
