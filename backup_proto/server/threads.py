# -*- test-case-name: tests.test_tap -*-
"""
The server's own threads, started and stopped with the service: its pools
and the thread that flushes uploads ahead of their commit.

Following Tahoe-LAFS's C{cputhreadpool}: CPU work (PBKDF2, zip, unzip) and
file I/O get pools of their own, so they never starve the reactor's pool
(which also resolves host names), and SQLite gets exactly one thread.
"""

import os
from concurrent.futures import ThreadPoolExecutor

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from backup_proto.archive.directio import readAheadThreads
from backup_proto.archive.flushahead import FlushAhead
from backup_proto.archive.plan import PLAN_THREADS


class WorkerPools(Service):
    """
    The C{cpu}, C{io} and C{db} pools, as a service.

    @ivar cpu: PBKDF2, zipping and unpacking; one thread per core.
    @ivar io: chunk reads and writes of transfers.
    @ivar db: the one SQLite thread.
    @ivar flushAhead: the L{FlushAhead} of uploads.
    @ivar readAhead: the executor of restores' direct reads.
    @ivar plan: the executor that reads restores' files while they are
        planned (in C{cpu} threads), shared by all restores.
    """

    def __init__(self, reactor, cpuThreads=None, ioThreads=8, flushAhead=None):
        self._reactor = reactor
        self.flushAhead = flushAhead if flushAhead is not None else FlushAhead()
        self.readAhead = readAheadThreads()
        self.plan = ThreadPoolExecutor(PLAN_THREADS, thread_name_prefix="backup-plan")
        self.cpu = ThreadPool(0, cpuThreads or os.cpu_count() or 2, name="backup-cpu")
        self.io = ThreadPool(0, ioThreads, name="backup-io")
        self.db = ThreadPool(1, 1, name="backup-db")

    def runCPU(self, f, *args, **kwargs):
        return deferToThreadPool(self._reactor, self.cpu, f, *args, **kwargs)

    def runIO(self, f, *args, **kwargs):
        return deferToThreadPool(self._reactor, self.io, f, *args, **kwargs)

    def runDB(self, f, *args, **kwargs):
        return deferToThreadPool(self._reactor, self.db, f, *args, **kwargs)

    def startService(self):
        super().startService()
        for pool in (self.cpu, self.io, self.db):
            pool.start()

    def stopService(self):
        super().stopService()
        # the pools finish their work first: an upload's last write may ask
        # for a flush
        for pool in (self.db, self.io, self.cpu):
            pool.stop()
        self.flushAhead.stop()
        self.readAhead.shutdown(wait=True)
        self.plan.shutdown(wait=True)
