# -*- test-case-name: tests.test_flushahead -*-
"""
Writing an upload's unpacked files to disk while the upload still arrives.

A snapshot is committed only once its tree is on disk (one C{syncfs} in
L{backup_proto.archive.tree.syncTree}).  Left alone, the kernel holds the
unpacked files in memory and writes them all out in that final flush,
after the last byte has arrived, while the disk sat idle during the
transfer.  A L{FlushAhead} asks for a flush of the file system now and
then while the upload arrives, in a thread of its own, so that the disk
works alongside the transfer and the commit's flush finds little left to
do (C{docs/performance.rst}).  It changes nothing about durability: the
commit still flushes, and waits for it.
"""

import threading

from backup_proto.archive.tree import syncTree

#: Bytes of zip an upload receives between two requests for a flush.
FLUSH_EVERY = 16 << 20


class FlushAhead:
    """
    One per server: flushes run one at a time in a thread of their own,
    started when first needed and ended by L{stop} (the server's service
    calls it); requests that arrive while one runs are merged into the next.
    """

    def __init__(self, every=FLUSH_EVERY, flush=syncTree):
        self.every = every
        self._flush = flush
        self._cond = threading.Condition()
        self._wanted = None
        self._thread = None
        self._stopping = False
        self.flushes = 0

    def request(self, path):
        """
        Ask for the file system holding C{path} to be flushed soon (does
        not wait; callable from any thread).  Ignored once stopped.
        """
        with self._cond:
            if self._stopping:
                return
            self._wanted = path
            if self._thread is None:
                # a daemon all the same: a forgotten stop must not hang exit
                self._thread = threading.Thread(
                    target=self._run, name="backup-flush-ahead", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def stop(self):
        """
        Run the flush still asked for, if any, then end the thread and wait
        for it.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self):
        while True:
            with self._cond:
                while self._wanted is None and not self._stopping:
                    self._cond.wait()
                if self._wanted is None:
                    return
                path, self._wanted = self._wanted, None
            try:
                self._flush(path)
            except OSError:
                pass  # the upload was thrown away meanwhile; its commit flushes anyway
            self.flushes += 1

    def counter(self, path):
        """
        @return: a callable taking each received piece's length, which
            requests a flush of C{path} every L{every} bytes.
        """
        received = 0

        def count(length):
            nonlocal received
            received += length
            if received >= self.every:
                received = 0
                self.request(path)

        return count
