"""
Tests for L{backup_proto.allocator}.
"""

import os
import subprocess
import sys
import textwrap

from backup_proto import allocator
from backup_proto.allocator import (
    ARENA_MAX,
    M_ARENA_MAX,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD,
    TRIM_THRESHOLD,
    tuneAllocator,
)
from tests.helpers import TestCase


class FakeLibc:
    """
    A C library whose C{mallopt} records its calls.
    """

    def __init__(self, answer=1):
        self.calls = []
        self._answer = answer

    def mallopt(self, parameter, value):
        self.calls.append((parameter, value))
        return self._answer


#: Makes and drops two 3 MiB buffers 50 times, after tuning if argv[1] is
#: "tuned", and prints the page faults that took.
FAULTS = textwrap.dedent("""
    import resource, sys
    from backup_proto.allocator import tuneAllocator
    if sys.argv[1] == "tuned":
        assert tuneAllocator(environ={})
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffers = [bytearray(3 << 20) for _ in range(2)]
    del buffers
    before = faults()
    for _ in range(50):
        a = bytearray(3 << 20)
        b = bytearray(3 << 20)
        del a, b
    print(faults() - before)
""")


class TuneAllocatorTests(TestCase):
    def test_thresholds(self):
        """
        Both thresholds are set, the mmap one first (setting it is what
        stops glibc from moving the trim threshold), and the count of arenas.
        """
        libc = FakeLibc()
        self.assertTrue(tuneAllocator(libc, environ={}))
        self.assertEqual(
            libc.calls,
            [
                (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
                (M_ARENA_MAX, ARENA_MAX),
            ],
        )

    def test_userSettingsStand(self):
        """
        A user who tuned the allocator through the environment keeps it.
        """
        for name in allocator.USER_SETTINGS:
            libc = FakeLibc()
            self.assertFalse(tuneAllocator(libc, environ={name: "1"}))
            self.assertEqual(libc.calls, [])

    def test_noMallopt(self):
        """
        A C library without C{mallopt} (not glibc) is left alone.
        """
        self.assertFalse(tuneAllocator(object(), environ={}))

    def test_refused(self):
        """
        A refused setting is reported.
        """
        self.assertFalse(tuneAllocator(FakeLibc(answer=0), environ={}))

    def faults(self, mode):
        env = {k: v for k, v in os.environ.items() if k not in allocator.USER_SETTINGS}
        out = subprocess.run(
            [sys.executable, "-c", FAULTS, mode],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return int(out)

    def test_fewerFaults(self):
        """
        With glibc's own thresholds, buffers of a few MiB made and dropped
        in turn are faulted in anew each time; tuned, their pages are
        reused.
        """
        if not hasattr(os, "confstr") or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
            self.skipTest("not glibc")
        untuned = self.faults("default")
        if untuned < 10_000:
            self.skipTest(f"this glibc keeps the pages by itself ({untuned} faults)")
        self.assertLess(self.faults("tuned"), 1_000)


class EntryPointTests(TestCase):
    def test_client(self):
        """
        The client's console script tunes the allocator before it runs.
        """
        from backup_client import cli

        order = []
        self.patch(cli, "tuneAllocator", lambda: order.append("tune"))
        self.patch(cli, "run", lambda argv: order.append("run"))
        cli.main()
        self.assertEqual(order, ["tune", "run"])
