# -*- test-case-name: tests.test_session,tests.test_transfer -*-
"""
What a session may use of the server's shared resources, decided in one
place rather than in the protocol: which failures become which error code
for the client, how a restore's zip is planned and how much disk its spool
may hold, and which restoring connections get the wider socket buffer and
read further ahead.
"""

from twisted.logger import Logger

from backup_proto.archive.manifest import (
    EntryAttributes,
    ManifestError,
    Selection,
    readEntries,
)
from backup_proto.archive.plan import planArchive, planFromManifest
from backup_proto.archive.policy import ArchiveError, OverQuota
from backup_proto.archive.spool import Spool
from backup_proto.archive.stream import ArchiveStream
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.transfer import (
    DEFAULT_SOCKET_BUFFER,
    READ_AHEAD,
    READ_BATCH,
    SEND_BUFFER,
    SinkFailed,
    diskFull,
    setSocketBuffer,
)

#: Deflate streams a restore's plan keeps for sending (only when restores
#: are deflated; see L{backup_proto.archive.spool}), in unnamed files in the
#: data folder: small, as restores may run side by side and uploads need
#: the space.
RESTORE_SPOOL_LIMIT = 64 << 20


def storageError(error):
    """
    @return: the L{ProtocolError} for the client when storing its data
        failed here (an C{OSError}): L{Code.STORAGE_FULL} for a full disk
        or quota, else L{Code.INTERNAL}.
    """
    if diskFull(error):
        return ProtocolError(Code.STORAGE_FULL, "server storage full")
    return ProtocolError(Code.INTERNAL, "could not store the data")


def clientError(error):
    """
    The one mapping from a failure in a session's work to what its client
    is told.

    @return: the L{ProtocolError} to send for C{error}, or C{None} when it
        is a server bug (the caller logs it and sends L{Code.INTERNAL}).
    """
    if isinstance(error, ProtocolError):
        return error
    if isinstance(error, OverQuota):
        return ProtocolError(Code.QUOTA_EXCEEDED, f"quota exceeded: {error}")
    if isinstance(error, ArchiveError):
        return ProtocolError(Code.BAD_ARCHIVE, f"archive refused: {error}")
    if isinstance(error, SinkFailed):
        return storageError(error.error)
    if isinstance(error, OSError):
        return storageError(error)
    return None


class RestoreArchives:
    """
    How the server makes a restore's zip: planned in a CPU thread from the
    snapshot's tree, with deflate streams kept in a L{Spool} of at most
    C{spoolLimit} bytes in C{spoolDir}, and read from the files as it is
    sent.
    """

    log = Logger()

    def __init__(
        self,
        spoolDir,
        readAhead=None,
        planThreads=None,
        spoolLimit=RESTORE_SPOOL_LIMIT,
        spool=Spool,
        plan=planArchive,
        stream=ArchiveStream,
        planFromManifest=planFromManifest,
    ):
        """
        @param readAhead: the executor of direct reads
            (L{backup_proto.archive.directio.readAheadThreads}), owned by
            the caller; C{None} reads through the page cache.
        @param planThreads: the executor that reads a snapshot's files while
            planning, shared by all restores and owned by the caller;
            C{None}: a pool for each plan.
        """
        self.spoolDir = spoolDir
        self._readAhead = readAhead
        self._planThreads = planThreads
        self.spoolLimit = spoolLimit
        self._spool = spool
        self._plan = plan
        self._planFromManifest = planFromManifest
        self._stream = stream

    def plan(self, path, name, compression, manifest=None, include=()):
        """
        Plan the zip of the tree at C{path}, stored as C{name} (in a thread).

        @param manifest: C{(path, digest)} of the snapshot's manifest, whose
            modes and times the zip carries; C{None} (a snapshot stored
            without one) takes them from the files.
        @param include: manifest paths: only these, what is below them and
            the folders above them are restored (planned from the manifest,
            stored, whatever C{compression}).
        @raise ProtocolError: C{not-found} for C{include} paths on a
            snapshot without a manifest, or matching nothing.
        @return: the plan, to be closed once the restore ends.
        """
        if include:
            return self._planPartial(path, name, manifest, include)
        kwargs = {"threads": self._planThreads}
        if manifest is not None:
            try:
                if compression == "store":
                    # nothing to read: the manifest says it all
                    entries = (entry for _line, entry in readEntries(*manifest))
                    return self._planFromManifest(path, name, entries)
                kwargs["attributes"] = EntryAttributes.fromManifest(*manifest)
            except (ManifestError, FileNotFoundError):
                # the files still restore, with their own modes and times
                self.log.warn("manifest {path} is damaged or missing", path=manifest[0])
        spool = self._spool(self.spoolLimit, self.spoolDir)
        return self._plan(path, name, compression, spool, **kwargs)

    def _planPartial(self, path, name, manifest, include):
        missing = ProtocolError(Code.NOT_FOUND, "nothing in the snapshot matches the paths given")
        if manifest is None:
            raise ProtocolError(
                Code.NOT_FOUND, "this snapshot has no manifest: only a whole restore is possible"
            )
        selection = Selection(include)
        try:
            chosen = [e for _line, e in readEntries(*manifest) if selection.wants(e)]
        except (ManifestError, FileNotFoundError):
            self.log.warn("manifest {path} is damaged or missing", path=manifest[0])
            raise missing from None
        if selection.unmatched == selection.paths:
            raise missing  # at most the folders above the paths asked for
        return self._planFromManifest(path, name, chosen)

    def open(self, plan):
        """
        @return: a new source (C{read}, C{close}) of the zip's bytes, read
            past the page cache where that pays (called in a thread).
        """
        return self._stream(plan, readAhead=self._readAhead)


class SendBuffers:
    """
    Which restoring connections' sockets may hold L{SEND_BUFFER} at once
    (and read L{READ_AHEAD} chunks ahead); the others keep Twisted's 64 KiB
    and L{READ_BATCH}.  The wider buffer speeds a restore that has the
    machine to itself; under many restores it mostly holds memory
    (C{docs/performance.rst}).

    @ivar limit: how many connections may hold it at once.
    @ivar holders: the connections that hold it.
    """

    def __init__(self, limit=4, setBuffer=setSocketBuffer):
        self.limit = limit
        self.holders = set()
        self._setBuffer = setBuffer

    def widen(self, owner, transport):
        """
        Let C{owner}'s socket (under C{transport}) hold L{SEND_BUFFER}, if
        fewer than L{limit} hold it now (until L{narrow}).

        @return: how many chunks its sender should read ahead.
        """
        if owner not in self.holders and len(self.holders) < self.limit:
            self.holders.add(owner)
            self._setBuffer(transport, SEND_BUFFER)
        return READ_AHEAD if owner in self.holders else READ_BATCH

    def narrow(self, owner, transport):
        """
        Give C{owner}'s socket Twisted's limit again (its restore ended).
        """
        if owner in self.holders:
            self.holders.discard(owner)
            self._setBuffer(transport, DEFAULT_SOCKET_BUFFER)

    def release(self, owner):
        """
        Forget C{owner}, whose connection is gone.
        """
        self.holders.discard(owner)
