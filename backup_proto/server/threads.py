# -*- test-case-name: tests.test_tap -*-
"""
The server's own thread pools, started and stopped with the service.

Following Tahoe-LAFS's C{cputhreadpool}: CPU work (PBKDF2, zip, unzip) and
file I/O get pools of their own, so they never starve the reactor's pool
(which also resolves host names), and SQLite gets exactly one thread.
"""

import os

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


class WorkerPools(Service):
    """
    The C{cpu}, C{io} and C{db} pools, as a service.

    @ivar cpu: PBKDF2, zipping and unpacking; one thread per core.
    @ivar io: chunk reads and writes of transfers.
    @ivar db: the one SQLite thread.
    """

    def __init__(self, reactor, cpuThreads=None, ioThreads=8):
        self._reactor = reactor
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
        for pool in (self.db, self.io, self.cpu):
            pool.stop()
