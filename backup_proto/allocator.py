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
buffer lands on pages that the kernel must map and zero again.

Fixed thresholds keep buffers of up to L{MMAP_THRESHOLD} on the heap, and
up to L{TRIM_THRESHOLD} of free heap at its top for the next ones;
L{ARENA_MAX} keeps threads from each holding such memory of their own.
The measurements: C{docs/performance.rst}, "Memory allocator".
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
#: free memory; the interpreter's lock already lets one thread at a time
#: allocate in most places.
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
