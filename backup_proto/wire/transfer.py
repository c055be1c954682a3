# -*- test-case-name: tests.test_transfer -*-
"""
Streaming bytes as sealed DATA chunks, and receiving them.

Both directions use these two classes: the client sends backups and the
server sends restores with L{ChunkSender}; the server receives backups and
the client receives restores with L{ChunkReceiver}.  What is sent is read
from a L{Source} (a file, or a zip made as it is read:
L{backup_proto.archive.stream.ArchiveStream}); what is received goes to a
L{Sink} (a zip unpacked as it arrives:
L{backup_proto.archive.extract.ExtractSink}).  Sources
and sinks run in threads (a L{Runner}); only sealing, opening and the CRC (all
C code) run on the reactor.  Memory stays bounded: the sender is a push producer
that stops when the transport is full, and the receiver pauses its input
while more than L{ChunkReceiver.highWater} bytes wait for the disk.
"""

import collections
import errno
from collections.abc import Callable
from typing import Protocol

from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from backup_proto.wire.cksum import Cksum
from backup_proto.wire.crypto import chunkCount, chunkLength
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import encodeData

log = Logger()

#: How many chunks one read in a thread fetches (2 MiB): with less the
#: sender waits on its reads; more only costs memory (C{docs/performance.rst}).
READ_BATCH = 32
#: A sender starts its next read while fewer than this many chunks wait to
#: be sent (so it holds at most C{READ_AHEAD + READ_BATCH - 1}, 6 MiB), so
#: that it does not run dry while a read is under way.  It costs memory
#: under many restores, so the server gives it only to those that get the
#: wider socket buffer (L{backup_proto.server.resources.SendBuffers};
#: C{docs/performance.rst}).
READ_AHEAD = 2 * READ_BATCH


#: How many bytes a socket that a L{ChunkSender} writes to may hold before
#: it pauses the sender.  Twisted's default (64 KiB) is about one sealed
#: chunk: the sender was paused after every chunk and resumed only once the
#: socket's buffer had emptied, so the socket idled while the next chunk
#: was sealed (C{docs/performance.rst}).  1 MiB more per connection at most, and only a few
#: connections at a time get it (L{backup_proto.server.resources.SendBuffers}).
SEND_BUFFER = 1 << 20
#: How many bytes a restoring client's socket reads at once (Twisted reads
#: up to its C{bufferSize}, 64 KiB by default, each time the socket is
#: readable, and passes each read through TLS and the framing): 256 KiB
#: saves CPU without the memory of 1 MiB reads; restores only (C{docs/performance.rst}).
RECEIVE_BUFFER = 256 << 10
#: Twisted's own C{bufferSize}, which sockets keep otherwise.
DEFAULT_SOCKET_BUFFER = FileDescriptor.bufferSize


class Source(Protocol):
    """
    What a L{ChunkSender} reads, in a thread: at least the transfer's
    declared size.
    """

    def read(self, n: int) -> bytes:
        """@return: the next C{n} bytes (fewer only at the end)."""

    def close(self) -> None:
        """Release what the source holds (a file, a read under way)."""


class Sink(Protocol):
    """
    Where a L{ChunkReceiver} puts the plaintext, in a thread, one call at a
    time.
    """

    def write(self, data: bytes) -> None:
        """Take the next bytes; an C{OSError} fails the transfer."""

    def close(self) -> None:
        """The transfer's bytes have all come; keep them."""

    def discard(self) -> None:
        """Throw away whatever was written (the transfer failed or is resent)."""


class Runner(Protocol):
    """
    Runs blocking work off the reactor (C{runIO}, C{runCPU}).
    """

    def __call__(self, f: Callable, *args) -> Deferred:
        """@return: a L{Deferred} firing with C{f(*args)}, run in a thread."""


def setSocketBuffer(transport, size):
    """
    Set the C{bufferSize} of the socket under C{transport} (a TCP transport,
    or TLS over one): it then holds up to C{size} bytes before it pauses its
    producer, and reads up to C{size} bytes at a time.  Other transports
    (those of tests) are left as they are.
    """
    if isinstance(transport, TLSMemoryBIOProtocol):
        transport = transport.transport
    if isinstance(transport, FileDescriptor):
        transport.bufferSize = size


class SinkFailed(Exception):
    """
    Writing received data failed on the receiving side (its disk is full,
    say).  Shared code does not word it: the server reports it to the
    client as an C{ERROR}, the client as its own disk's problem.

    @ivar error: what the sink raised (an C{OSError}, mostly).
    """

    def __init__(self, error):
        super().__init__(error)
        self.error = error


def diskFull(error):
    """
    @return: whether C{error} says a disk or a quota is full.
    """
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class TransferAborted(Exception):
    """
    The transfer was stopped before it ended (the connection went away).
    """


def _readBatch(source, lengths):
    """
    Read consecutive chunks of the given lengths (runs in a thread).

    @raise ProtocolError: if the source is shorter than it should be.
    """
    chunks = []
    for length in lengths:
        data = source.read(length)
        if len(data) != length:
            raise ProtocolError(Code.INTERNAL, "data changed while it was being sent")
        chunks.append(data)
    return chunks


@implementer(IPushProducer)
class _ThreadFedProducer:
    """
    What a push producer whose source is read in threads does as it is
    paused, resumed, stopped or done: it leaves its consumer once, fires
    its L{Deferred} once, and closes its source in a thread, never while a
    read of it runs (closing waits for that read otherwise).  Subclasses
    pump (C{_pump}) and say what the L{Deferred} fires with (C{_result}).

    @ivar _pending: what was read but not yet written.
    @ivar _paused: whether the transport asked us to stop.
    @ivar _reading: whether a read is under way in a thread.
    """

    def __init__(self, runIO):
        self._runIO = runIO
        self._pending = collections.deque()
        self._paused = False
        self._reading = False
        self._source = None
        self._done = None
        self._consumer = None

    def _register(self, consumer):
        done = self._done = Deferred()
        self._consumer = consumer
        consumer.registerProducer(self, True)
        return done

    def _result(self):
        return None

    def _fail(self, failure):
        self._reading = False
        if self._done is None:
            self._closeSource()
        self._finish(failure)

    def _finish(self, failure):
        done, self._done = self._done, None
        if done is None:
            return
        if not self._reading:
            self._closeSource()
        self._pending.clear()
        if self._consumer is not None:
            self._consumer.unregisterProducer()
            self._consumer = None
        if failure is None:
            done.callback(self._result())
        else:
            done.errback(failure)

    def _closeSource(self):
        # in a thread too: closing a zip stream midway waits for the disk
        # read it has under way (backup_proto.archive.directio.DirectReadAhead)
        source, self._source = self._source, None
        if source is not None:
            self._runIO(source.close).addErrback(
                lambda failure: log.failure("could not close a sender's source", failure)
            )

    def stop(self):
        """
        Stop sending before the end (the sender's side gave up): leave the
        consumer, and fail the L{Deferred} with L{TransferAborted}.
        """
        self._finish(Failure(TransferAborted("transfer stopped")))

    # IPushProducer

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        self._paused = False
        self._pump()

    def stopProducing(self):
        self._consumer = None
        self._finish(Failure(TransferAborted("transfer stopped")))


class ChunkSender(_ThreadFedProducer):
    """
    Sends C{size} bytes of a source as the DATA chunks of one transfer.

    @ivar crc: the L{Cksum} of what was read and sent so far.
    @ivar _index: the next chunk index to send.
    """

    def __init__(
        self,
        openSource,
        size,
        cipher,
        transfer,
        sendFrame,
        runIO,
        progress=None,
        readAhead=READ_AHEAD,
    ):
        """
        @param openSource: called in a thread, returns the source: an object
            with C{read(n)} and C{close()} holding at least C{size} bytes.
        @param cipher: the L{ChunkCipher} of the sending direction.
        @param transfer: this transfer's number.
        @param sendFrame: writes one frame body (the protocol's C{sendString}).
        @param runIO: C{runIO(f, *args) -> Deferred} running C{f} in a thread.
        @param progress: called with the plaintext byte count of each chunk.
        @param readAhead: the next read starts while fewer chunks than this
            wait to be sent (L{READ_AHEAD}, or L{READ_BATCH} to hold less).
        """
        super().__init__(runIO)
        self._openSource = openSource
        self.size = size
        self._cipher = cipher
        self._transfer = transfer
        self._sendFrame = sendFrame
        self._progress = progress
        self._readAhead = readAhead
        self._count = chunkCount(size)
        self._index = 0
        self._nextRead = 0
        self.crc = Cksum()

    def start(self, consumer):
        """
        Register with C{consumer} (the transport) and start sending.

        @return: a L{Deferred} that fires with the C{cksum} CRC of the bytes
            sent once the last chunk is written, or fails.
        """
        done = self._register(consumer)
        self._reading = True
        d = self._runIO(self._openSource)
        d.addCallbacks(self._opened, self._fail)
        return done

    def _result(self):
        return self.crc.value()

    def _opened(self, source):
        self._reading = False
        self._source = source
        if self._done is None:
            self._closeSource()
            return
        self._pump()

    def _readMore(self):
        lengths = []
        while self._nextRead < self._count and len(lengths) < READ_BATCH:
            lengths.append(chunkLength(self.size, self._nextRead))
            self._nextRead += 1
        self._reading = True
        d = self._runIO(_readBatch, self._source, lengths)
        d.addCallbacks(self._read, self._fail)

    def _read(self, chunks):
        self._reading = False
        if self._done is None:
            self._closeSource()
            return
        self._pending.extend(chunks)
        self._pump()

    def _pump(self):
        while not self._paused and self._pending and self._done is not None:
            chunk = self._pending.popleft()
            self.crc.update(chunk)
            sealed = self._cipher.seal(self._transfer, self.size, self._index, chunk)
            self._index += 1
            self._sendFrame(encodeData(sealed))
            if self._progress is not None:
                self._progress(len(chunk))
            if self._index == self._count:
                self._finish(None)
                return
        if (
            self._done is not None
            and not self._reading
            and self._nextRead < self._count
            and len(self._pending) < self._readAhead
        ):
            self._readMore()


class FrameSender(_ThreadFedProducer):
    """
    Writes frames that a thread reads a batch at a time (the pages of a
    manifest, say), as a push producer: while the transport is paused
    nothing more is read, so what waits is one batch at most.
    """

    def __init__(self, source, sendFrame, runIO, progress=None):
        """
        @param source: an object whose C{read()} (called in a thread)
            returns C{(frames, last)}, and whose C{close()} (also in a
            thread) is called once it is done or given up.
        @param sendFrame: writes one frame body.
        @param progress: called after each batch is written.
        """
        super().__init__(runIO)
        self._source = source
        self._sendFrame = sendFrame
        self._progress = progress
        self._last = False

    def start(self, consumer):
        """
        Register with C{consumer} (the transport) and start sending.

        @return: a L{Deferred} that fires once the last frame is written.
        """
        done = self._register(consumer)
        self._pump()  # may finish at once, when reads are synchronous
        return done

    def _pump(self):
        while not self._paused and self._pending and self._done is not None:
            self._sendFrame(self._pending.popleft())
            if not self._pending:
                if self._progress is not None:
                    self._progress()
                if self._last:
                    self._finish(None)
                    return
        if self._done is not None and not self._pending and not self._reading:
            self._reading = True
            self._runIO(self._source.read).addCallbacks(self._read, self._fail)

    def _read(self, result):
        self._reading = False
        if self._done is None:
            self._closeSource()
            return
        frames, self._last = result
        self._pending.extend(frames)
        self._pump()


class ChunkReceiver:
    """
    Receives the DATA chunks of one transfer into a sink (see the module
    docstring: C{write}, C{close} and C{discard}, called in threads, one at
    a time).  A chunk that fails authentication is counted in L{rejected}
    and not written, so that the transfer can end and be resent; a chunk
    beyond the declared size, or of the wrong length, is a
    L{ProtocolError}.

    @ivar crc: L{Cksum} of the plaintext accepted so far.
    @ivar rejected: how many chunks failed authentication.
    @ivar highWater: bytes received and not yet written (those being
        written included) above which input pauses.
    """

    highWater = 4 << 20

    def __init__(self, sink, size, cipher, transfer, runIO, pauseInput, resumeInput, progress=None):
        """
        @param sink: where the plaintext goes, e.g. an
            L{backup_proto.archive.extract.ExtractSink}.
        @param pauseInput: called when too much data waits for the disk.
        @param resumeInput: called when it has drained; must not re-enter the
            frame parser synchronously (see STYLE.md 2(a)).
        """
        self.sink = sink
        self.size = size
        self._cipher = cipher
        self._transfer = transfer
        self._runIO = runIO
        self._pauseInput = pauseInput
        self._resumeInput = resumeInput
        self._progress = progress
        self._count = chunkCount(size)
        self._index = 0
        self._queue = collections.deque()
        self._enqueued = 0  # bytes queued (counted on the reactor)
        self._drained = 0  # bytes taken from the queue (counted by the writer)
        self._writing = False
        self._inputPaused = False
        self._error = None
        self._finished = None
        self._aborted = False
        self._discarded = None
        self.crc = Cksum()
        self.rejected = 0

    @property
    def complete(self):
        """
        Whether every chunk of the transfer has arrived.
        """
        return self._index == self._count

    def chunkReceived(self, sealed):
        """
        Take one sealed chunk.

        @raise ProtocolError: for data beyond the declared size or a chunk
            of the wrong length.
        @raise SinkFailed: an earlier write failed.
        @return: C{True} if this was the transfer's last chunk.
        """
        if self._error is not None:
            raise self._error
        if self._index >= self._count:
            raise ProtocolError(Code.BAD_UPLOAD, "more data than the declared size")
        index = self._index
        self._index += 1
        try:
            plain = self._cipher.open(self._transfer, self.size, index, sealed)
        except ProtocolError:
            self.rejected += 1
        else:
            if len(plain) != chunkLength(self.size, index):
                raise ProtocolError(Code.BAD_UPLOAD, f"chunk {index} has the wrong length")
            self.crc.update(plain)
            if plain:
                self._enqueued += len(plain)
                self._queue.append(plain)
            if self._progress is not None:
                self._progress(len(plain))
        self._flush()
        return self.complete

    @property
    def _queued(self):
        """
        Bytes received and not yet written (the writer may be on them).
        """
        return self._enqueued - self._drained

    @property
    def _mayResume(self):
        """
        Whether paused input has drained enough to be read again.
        """
        return self._inputPaused and self._queued <= self.highWater // 2

    def _flush(self):
        if self._queued > self.highWater and not self._inputPaused:
            self._inputPaused = True
            self._pauseInput()
        if self._writing or not self._queue or self._aborted:
            return
        self._writing = True
        d = self._runIO(self._drain)
        d.addCallbacks(self._written, self._writeFailed)

    def _drain(self):
        """
        Write queued chunks to the sink (runs in a thread), including those
        that arrive meanwhile: the writer goes back to the reactor only
        when the queue is empty, or when paused input may resume.  A
        thread job per batch instead left the writer idle while each
        finished batch waited for the reactor to hand over the next.
        """
        queue = self._queue
        while not self._aborted:
            if self._mayResume:
                return
            try:
                chunk = queue.popleft()  # the reactor appends meanwhile
            except IndexError:
                return
            self.sink.write(chunk)
            self._drained += len(chunk)

    def _written(self, _):
        self._writing = False
        if self._aborted:
            self._discard()
            return
        if self._mayResume:
            self._inputPaused = False
            self._resumeInput()
        self._flush()
        self._maybeFinished()

    def _writeFailed(self, failure):
        self._writing = False
        self._error = SinkFailed(failure.value)
        self._dropQueue()
        if self._inputPaused:
            self._inputPaused = False
            self._resumeInput()
        self._maybeFinished()

    def finish(self):
        """
        @return: a L{Deferred} firing with C{(crc, length, rejected)} once
            every chunk has arrived and been written and the sink is closed,
            or failing with a L{SinkFailed}.
        """
        self._finished = Deferred()
        d = self._finished
        self._maybeFinished()
        return d

    def _maybeFinished(self):
        if self._finished is None or self._writing or self._queue:
            return
        finished, self._finished = self._finished, None
        if self._error is not None:
            finished.errback(self._error)
            return
        d = self._runIO(self.sink.close)
        d.addCallback(lambda _: (self.crc.value(), self.crc.length, self.rejected))
        d.addErrback(lambda f: Failure(SinkFailed(f.value)))
        d.chainDeferred(finished)

    def abort(self):
        """
        Stop and discard what the sink holds, whatever state the transfer
        is in.

        @return: a L{Deferred} that fires once the sink is discarded (after
            any write under way in a thread).
        """
        if self._discarded is None:
            self._discarded = Deferred()
            self._aborted = True
            self._dropQueue()  # a writer under way stops at its next chunk
            if not self._writing:
                self._discard()
        d = Deferred()
        self._discarded.addBoth(lambda result: d.callback(None) or result)
        return d

    def _dropQueue(self):
        self._queue.clear()
        self._drained = self._enqueued

    def _discard(self):
        d = self._runIO(self.sink.discard)
        d.addErrback(lambda f: None)
        d.chainDeferred(self._discarded)
