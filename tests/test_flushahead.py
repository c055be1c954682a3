"""
Tests for L{backup_proto.archive.flushahead}: flushes asked for while an upload
arrives, run in a thread of their own.
"""

import os
import threading

from backup_proto.archive.flushahead import FlushAhead
from tests.helpers import TestCase


class RecordingFlush:
    """
    A flush that records its paths; it can be held to see requests merge.
    """

    def __init__(self):
        self.paths = []
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Semaphore(0)
        self.done = threading.Semaphore(0)

    def __call__(self, path):
        self.entered.release()
        self.hold.wait(30)
        self.paths.append(path)
        self.done.release()
        if path == "gone":
            raise FileNotFoundError(path)


class FlushAheadTests(TestCase):
    def setUp(self):
        super().setUp()
        self.flush = RecordingFlush()
        self.ahead = FlushAhead(every=1000, flush=self.flush)

    def waitFlushes(self, count):
        for _ in range(count):
            self.assertTrue(self.flush.done.acquire(timeout=30))

    def test_everyBytes(self):
        """
        The counter asks for a flush of its path each time another
        C{every} bytes have been received, and not before.
        """
        count = self.ahead.counter("/data/upload")
        count(999)
        self.assertIsNone(self.ahead._thread)
        count(1)
        self.waitFlushes(1)
        count(500)
        count(400)
        count(2000)
        self.waitFlushes(1)
        self.assertEqual(self.flush.paths, ["/data/upload", "/data/upload"])
        self.assertTrue(self.ahead._thread.daemon)

    def test_requestsMerge(self):
        """
        Requests made while a flush runs are merged into one more flush.
        """
        self.flush.hold.clear()
        self.ahead.request("a")
        self.assertTrue(self.flush.entered.acquire(timeout=30))
        for path in ("b", "c", "d"):
            self.ahead.request(path)
        self.flush.hold.set()
        self.waitFlushes(2)
        self.assertEqual(self.flush.paths, ["a", "d"])

    def test_goneFolder(self):
        """
        A folder removed before its flush (an upload thrown away) is
        ignored, and later flushes still run.
        """
        self.ahead.request("gone")
        self.waitFlushes(1)
        self.ahead.request("next")
        self.waitFlushes(1)
        self.assertEqual(self.flush.paths, ["gone", "next"])

    def test_realFlush(self):
        """
        With the real flush, a request for a folder that exists flushes.
        """
        ahead = FlushAhead(every=10)
        os.mkdir("tree")
        ahead.counter(os.path.abspath("tree"))(10)
        ahead.request(os.path.abspath("missing"))
        ahead.stop()
        self.assertGreaterEqual(ahead.flushes, 1)
        self.assertIsNone(ahead._wanted)

    def test_stopDrainsAndEnds(self):
        """
        L{FlushAhead.stop} runs the flush still asked for, ends the thread,
        and later requests are ignored (no thread is started again).
        """
        self.flush.hold.clear()
        self.ahead.request("a")
        self.assertTrue(self.flush.entered.acquire(timeout=30))
        self.ahead.request("b")
        self.flush.hold.set()
        self.ahead.stop()
        self.assertEqual(self.flush.paths, ["a", "b"])
        self.assertFalse(self.ahead._thread.is_alive())
        self.ahead.request("c")
        self.ahead.stop()
        self.assertEqual(self.flush.paths, ["a", "b"])

    def test_stopUnstarted(self):
        """
        Stopping a L{FlushAhead} that never flushed starts nothing.
        """
        self.ahead.stop()
        self.assertIsNone(self.ahead._thread)
