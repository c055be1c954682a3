# -*- test-case-name: tests.test_session,tests.test_transfer -*-
"""
A backup and a restore under way, each an object that owns its attempts,
its resends, its receiver or sender and its cleanup; the session
(L{backup_proto.server.session}) only decides when each step runs.
"""

import os
from dataclasses import dataclass

from twisted.internet.defer import succeed

from backup_proto.archive.extract import ExtractSink
from backup_proto.archive.manifest import KeepList, ManifestWriter
from backup_proto.archive.policy import ArchiveError
from backup_proto.archive.tree import applyDirAttributes, syncTree
from backup_proto.server.compose import KeptStats, linkKept
from backup_proto.server.resources import clientError
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import MAX_RESENDS
from backup_proto.wire.transfer import ChunkReceiver, ChunkSender, SinkFailed


@dataclass
class Parent:
    """
    The snapshot an incremental backup builds on, and what it keeps of it.

    @ivar row: the parent's catalog row.
    @ivar tree: its snapshot folder.
    @ivar manifest: its manifest file, whose digest is C{digest}.
    @ivar keep: the L{KeepList} the client sent.
    """

    row: dict
    tree: str
    manifest: str
    digest: str
    keep: KeepList


@dataclass
class Composed:
    """
    A new snapshot, complete in staging: what its catalog row and its
    manifest need.
    """

    index: object
    digest: str
    entries: int
    files: int
    size: int
    kept: KeptStats


def finishUpload(sink, name, kind, parent=None, link=os.link):
    """
    Finish unpacking an upload, place the files kept from its parent, write
    its manifest, and flush it all to disk (runs in a thread).

    @return: a L{Composed}.
    """
    recorder = sink.recorder
    try:
        index = sink.finish(applyDirs=False)
        if index.root != name or index.kind != kind:
            raise ArchiveError("archive does not hold the declared name and kind")
        kept = KeptStats()
        if parent is not None:
            kept = linkKept(
                parent.tree, parent.manifest, parent.digest, parent.keep, sink.dest, recorder, link
            )
        for path in sink.impliedFolders():
            st = os.lstat(os.path.join(sink.dest, path))
            recorder.add(path, "dir", 0, st.st_mtime_ns, 0o700)
        applyDirAttributes(sink.dest, index)
        digest = recorder.close()
    except BaseException:
        recorder.discard()  # the staging folder goes too; the file is closed now
        raise
    syncTree(sink.dest)
    return Composed(index, digest, recorder.entries, recorder.files, recorder.size, kept)


class UploadJob:
    """
    A backup under way: unpacked as it arrives into C{staging}, one
    C{tree-<attempt>} folder per attempt.

    @ivar attempt: the attempt under way (1 for the first).
    @ivar receiver: the attempt's L{ChunkReceiver}.
    @ivar result: C{(crc, length, rejected)} of the last attempt, once
        every chunk of it has arrived.
    """

    def __init__(self, name, kind, size, staging, parent=None):
        """
        @param parent: the L{Parent} of an incremental backup, or C{None}.
        """
        self.name = name
        self.kind = kind
        self.size = size
        self.staging = staging
        self.parent = parent
        self.attempt = 0
        self.receiver = None
        self.result = None

    @property
    def treePath(self):
        return os.path.join(self.staging, f"tree-{self.attempt}")

    def begin(self, transfer, cipher, limits, flushAhead, runIO, pauseInput, resumeInput):
        """
        Start the next attempt, as transfer number C{transfer}; the caller
        has checked that one more is allowed (L{resend}).
        """
        self.attempt += 1
        self.result = None
        recorder = ManifestWriter(os.path.join(self.staging, f"manifest-{self.attempt}"))
        self.receiver = ChunkReceiver(
            ExtractSink(self.treePath, limits, flushAhead.counter(self.treePath), recorder),
            self.size,
            cipher,
            transfer,
            runIO,
            pauseInput,
            resumeInput,
        )

    def chunkReceived(self, body):
        """
        @return: whether C{body} was the attempt's last chunk.
        """
        try:
            return self.receiver.chunkReceived(body)
        except SinkFailed as e:
            raise clientError(e) from None

    def verify(self):
        """
        @return: a L{Deferred} firing with L{result} once the attempt's
            data is all written.
        """

        def verified(result):
            self.result = result
            return result

        return self.receiver.finish().addCallback(verified)

    def checkCommit(self, crc):
        """
        @raise ProtocolError: unless the last attempt verified and C{crc}
            is its checksum.
        """
        ok, length, rejected = self.result
        if rejected or crc != ok or length != self.size:
            raise ProtocolError(Code.BAD_UPLOAD, "cannot commit an upload that did not verify")

    def resend(self):
        """
        Give up the attempt for another one.

        @raise ProtocolError: after L{MAX_RESENDS} resends.
        """
        self.receiver.abort()
        if self.attempt > MAX_RESENDS:
            raise ProtocolError(Code.VERIFY_FAILED, "upload did not verify after all resends")

    def unpack(self, runCPU, link=os.link):
        """
        Finish the snapshot of the verified attempt (in a CPU thread):
        L{finishUpload}.

        @return: a L{Deferred} firing with its L{Composed}.
        """
        return runCPU(finishUpload, self.receiver.sink, self.name, self.kind, self.parent, link)

    def snapshotMeta(self, composed):
        """
        @return: the catalog fields of the snapshot this upload makes.
        """
        return {
            "source": self.name,
            "kind": self.kind,
            "zip_size": self.size,
            "size": composed.size,
            "files": composed.files,
            "parent": None if self.parent is None else self.parent.row["id"],
            "added": composed.index.size + composed.kept.copiedBytes,
        }

    def manifest(self, composed):
        """
        @return: the C{(path, digest, entries)} of the manifest made.
        """
        return self.receiver.sink.recorder.path, composed.digest, composed.entries

    def abort(self):
        """
        Stop the attempt under way (if any) and discard what it wrote.

        @return: a L{Deferred} firing once it is discarded.
        """
        return self.receiver.abort() if self.receiver is not None else succeed(None)

    def removeStaging(self, runIO, store):
        """
        Remove the upload's staging folder (in an I/O thread).
        """
        return runIO(store.removeStaging, self.staging)

    def discard(self, runIO, store):
        """
        Give the upload up (its connection is gone): stop the attempt under
        way, then remove the staging folder once nothing writes to it.
        """
        return self.abort().addCallback(lambda _: self.removeStaging(runIO, store))


class RestoreJob:
    """
    A restore under way: the snapshot's catalog row and the plan of its zip,
    sent once per attempt.

    @ivar attempt: the attempt under way (1 for the first).
    @ivar sender: the attempt's L{ChunkSender}.
    @ivar crc: the checksum of the last attempt, once all of it was sent.
    """

    def __init__(self, row, plan):
        self.row = row
        self.plan = plan
        self.attempt = 0
        self.sender = None
        self.crc = None

    def begin(self, transfer, cipher, openSource, sendFrame, runIO, progress, readAhead):
        """
        Prepare the next attempt's sender, as transfer number C{transfer}.

        @return: the fields of its C{RESTORE_BEGIN}.
        """
        self.attempt += 1
        self.crc = None
        plan = self.plan
        self.sender = ChunkSender(
            lambda: openSource(plan),
            plan.size,
            cipher,
            transfer,
            sendFrame,
            runIO,
            progress=progress,
            readAhead=readAhead,
        )
        return {
            "snapshot": self.row["id"],
            "name": self.row["source"],
            "kind": self.row["kind"],
            "size": plan.size,
            "transfer": transfer,
            "attempt": self.attempt,
        }

    def sent(self, crc):
        self.crc = crc

    def checkCommit(self, crc):
        """
        @raise ProtocolError: unless C{crc} is the checksum sent.
        """
        if crc != self.crc:
            raise ProtocolError(Code.BAD_MESSAGE, "COMMIT names a checksum that was not sent")

    def checkResend(self):
        """
        @raise ProtocolError: after L{MAX_RESENDS} resends.
        """
        if self.attempt > MAX_RESENDS:
            raise ProtocolError(Code.VERIFY_FAILED, "restore did not verify after all resends")

    def stop(self):
        """
        Stop sending (the connection failed).
        """
        if self.sender is not None:
            self.sender.stop()

    def close(self):
        """
        Release the plan (its spool files).
        """
        self.plan.close()
