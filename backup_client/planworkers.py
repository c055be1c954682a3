# -*- test-case-name: tests.test_planworkers -*-
"""
Worker processes in which the client plans a backup's files.

A plan opens, reads and deflates each file that it may deflate
(L{backup_proto.archive.plan.planArchive}).  Deflating releases the
interpreter's lock, but everything around it holds the lock, so the plan's
threads hand it to each other thousands of times; on this kind of two-core
machine that cost far more at some times than at others, and worker
processes do not (C{docs/performance.rst}).  A folder's larger files stay with the
threads (their deflate streams go to the plan's spool, and each costs the
lock little for its size).

The workers are forked once, before the client has started any thread: a
process forked while other threads run copies their locks in whatever
state they are in, and a child can then wait forever on one of them.
"""

import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor

from backup_proto.archive.plan import PLAN_THREADS


def _watchParent(reader):
    """
    In a worker: end the process once the client is gone, even if it was
    killed outright (then nothing else would tell the worker to exit).  Only
    the client holds the pipe's write end, so the read returns then.
    """
    os.read(reader, 1)
    os._exit(1)


def _startWorker(reader, writer):
    # Ctrl-C on a terminal reaches the whole process group: the client
    # handles it, and stops its workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the reactor's handlers are the client's: a worker told to end ends
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.close(writer)
    threading.Thread(target=_watchParent, args=(reader,), daemon=True).start()


class PlanWorkers:
    """
    The worker processes of one plan.

    @ivar pool: a L{ProcessPoolExecutor}, to pass to C{planArchive} as its
        C{workers}.
    """

    def __init__(self, count):
        """
        @raise OSError: if the workers could not be started (none is left).
        """
        reader, self._writer = os.pipe()
        self.pool = ProcessPoolExecutor(
            count,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_startWorker,
            initargs=(reader, self._writer),
        )
        try:
            # a pool that forks starts all its workers at its first task
            self.pool.submit(os.getpid)
        except OSError:
            self.close()
            raise
        finally:
            os.close(reader)

    def stop(self):
        """
        Let the workers exit once their tasks are done; pending tasks are
        dropped.  Returns at once (never blocks the reactor): the pool
        joins its workers in its own thread.
        """
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self):
        """
        Wait for the workers to exit, then close the pipe they watch (when
        they could not all be started, and in tests; a client's pipe
        closes when it exits).
        """
        self.pool.shutdown(wait=True, cancel_futures=True)
        os.close(self._writer)


def startPlanWorkers(count=PLAN_THREADS):
    """
    Fork the worker processes for a plan now, if that is safe.

    @return: a L{PlanWorkers}, or C{None} if this process already has other
        threads or the system refuses new processes (the plan then runs in
        threads).
    """
    if threading.active_count() != 1:
        return None
    try:
        return PlanWorkers(count)
    except OSError:
        return None
