# -*- test-case-name: tests.test_zipstream,tests.test_planworkers -*-
"""
Planning a zip to be made as a stream of bytes, without a temporary file.

The protocol declares a transfer's size before its first byte, so a zip is
made in two passes.  L{planArchive} walks the tree, picks each file's
method and works out every entry's size and so the zip's exact length (a
file to be deflated is deflated once to count, and a file over
L{SAMPLE_SIZE} keeps that stream in a L{backup_proto.archive.spool.Spool}
for the second pass when one is given).  L{backup_proto.archive.stream}
then produces the zip's bytes from the plan, as the sender asks for them.
"""

import errno
import itertools
import os
import stat
import struct
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from isal import isal_zlib

from backup_proto.archive.compression import (
    SAMPLE_SIZE,
    chooseMethod,
    newDeflater,
    storedWithoutLooking,
)
from backup_proto.archive.format import (
    CENTRAL,
    CENTRAL_SIG,
    DESCRIPTOR32,
    DESCRIPTOR64,
    DESCRIPTOR_SIG,
    FLAG_DESCRIPTOR,
    FLAG_UTF8,
    LOCAL,
    LOCAL_SIG,
    MADE_BY,
    MARKER,
    STORED,
    VERSION,
    VERSION64,
    ZIP64_LIMIT,
    ZIP64_LOCAL,
    ZIP64_TAG,
    dosTimeDate,
    endRecords,
    externalAttributes,
    extraTimes,
    hardlinkField,
    ownerFields,
    wholeSeconds,
)
from backup_proto.archive.index import ArchiveReport
from backup_proto.archive.manifest import KeepList
from backup_proto.archive.policy import COPY_BLOCK, ArchiveError

#: Threads that read and deflate files while a plan is made (the client is
#: otherwise idle then; zlib-ng and file reads release the GIL).
PLAN_THREADS = min(4, os.cpu_count() or 2)
#: Files per task given to a plan thread.
PLAN_BATCH = 32
#: How files are opened to be read: never through a link, and without
#: waiting on a FIFO that took a planned file's place (reading one then
#: ends at once, and the file is reported as changed).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


class PlanStopped(Exception):
    """
    Planning was stopped by its caller.
    """


@dataclass(slots=True)
class PlannedEntry:
    """
    One entry of a planned zip.

    A restore's plan holds one of these per file of a snapshot, so an entry
    keeps only what it cannot derive: its file's path comes from the plan
    (L{ArchivePlan.pathOf}), its extra field from C{mtimeNs}, and its
    offset from the plan's C{offsets} (almost half the plan's memory:
    C{docs/performance.rst}).

    @ivar content: a folder's (empty) or a link's content (its target);
        C{None} for a file entry, whose data is read from its file.
    @ivar spooled: where the plan kept a file's deflate stream (see
        L{backup_proto.archive.spool.Spool.read}), or C{None}.
    @ivar mtimeNs: the modification time when planned.
    @ivar owner: the extra fields naming its owner (L{ownerFields}: one
        bytes shared by the entries of one owner), or C{b""}.
    @ivar link: the name of the first entry of its hard-link group, or
        C{None} (see L{assignHardLinks}).
    @ivar inode: C{(st_dev, st_ino)} of a file with more than one link,
        while the plan groups them; else C{None}.
    """

    name: bytes
    method: int
    external: int
    dosTime: int
    dosDate: int
    usize: int
    csize: int
    crc: int = 0
    content: bytes = None
    spooled: tuple = None
    mtimeNs: int = 0
    owner: bytes = b""
    link: bytes = None
    inode: tuple = None

    @property
    def extra(self):
        return extraTimes(self.mtimeNs)

    @property
    def centralExtra(self):
        """
        The central record's extra fields: the local header's, and the
        owner and hard-link group, which only a reader of the central
        directory needs.
        """
        extra = extraTimes(self.mtimeNs) + self.owner
        return extra if self.link is None else extra + hardlinkField(self.link)

    @property
    def flags(self):
        flags = 0 if self.name.isascii() else FLAG_UTF8
        return flags | (FLAG_DESCRIPTOR if self.content is None else 0)

    @property
    def zip64(self):
        return self.usize >= ZIP64_LIMIT or self.csize >= ZIP64_LIMIT

    def localHeader(self):
        extra = self.extra
        usize, csize = self.usize, self.csize
        if self.zip64:
            extra = ZIP64_LOCAL.pack(ZIP64_TAG, 16, usize, csize) + extra
            usize = csize = MARKER
        crc = self.crc if self.content is not None else 0
        version = VERSION64 if self.zip64 else VERSION
        return (
            LOCAL.pack(
                LOCAL_SIG,
                version,
                self.flags,
                self.method,
                self.dosTime,
                self.dosDate,
                crc,
                csize,
                usize,
                len(self.name),
                len(extra),
            )
            + self.name
            + extra
        )

    def descriptor(self, crc=None, usize=None):
        """
        The data descriptor of a file entry, with the CRC-32 and size of
        what was sent (a stream's own values; the layout follows the plan).
        """
        if self.content is not None:
            return b""
        crc = self.crc if crc is None else crc
        usize = self.usize if usize is None else usize
        if self.zip64:
            return DESCRIPTOR64.pack(DESCRIPTOR_SIG, crc, self.csize, usize)
        return DESCRIPTOR32.pack(DESCRIPTOR_SIG, crc, self.csize, usize)

    def centralRecord(self, offset, crc=None, usize=None):
        """
        This entry's central directory record (see L{descriptor}).

        @param offset: where its local header is in the zip.
        """
        crc = self.crc if crc is None else crc
        fields = []
        planned, csize = self.usize, self.csize
        usize = planned if usize is None else usize
        if planned >= ZIP64_LIMIT:
            fields.append(usize)
            usize = MARKER
        if csize >= ZIP64_LIMIT:
            fields.append(csize)
            csize = MARKER
        if offset >= ZIP64_LIMIT:
            fields.append(offset)
            offset = MARKER
        extra = self.centralExtra
        if fields:
            extra = struct.pack(f"<HH{len(fields)}Q", ZIP64_TAG, 8 * len(fields), *fields) + extra
        version = VERSION64 if fields or self.zip64 else VERSION
        return (
            CENTRAL.pack(
                CENTRAL_SIG,
                MADE_BY,
                version,
                self.flags,
                self.method,
                self.dosTime,
                self.dosDate,
                crc,
                csize,
                usize,
                len(self.name),
                len(extra),
                0,
                0,
                0,
                self.external,
                offset,
            )
            + self.name
            + extra
        )

    def spanLength(self):
        """
        @return: the bytes from this entry's local header to its end: the
            lengths of L{localHeader}, the data and L{descriptor}, counted
            without packing them (a plan counts every entry, after its
            threads are done).
        """
        zip64 = self.zip64
        length = LOCAL.size + len(self.name) + len(self.extra) + self.csize
        if zip64:
            length += ZIP64_LOCAL.size
        if self.content is None:
            length += DESCRIPTOR64.size if zip64 else DESCRIPTOR32.size
        return length

    def centralLength(self, offset):
        """
        @return: the length of L{centralRecord}C{(offset)}, counted without
            packing it.
        """
        fields = (self.usize >= ZIP64_LIMIT) + (self.csize >= ZIP64_LIMIT) + (offset >= ZIP64_LIMIT)
        length = CENTRAL.size + len(self.name) + len(self.centralExtra)
        return length + 4 + 8 * fields if fields else length


@dataclass
class ArchivePlan:
    """
    A zip worked out by L{planArchive}: its entries, exact size and report.

    @ivar offsets: where each entry's local header is, in an array (not
        one int object per entry).
    @ivar source: the file or folder the zip is made of.
    @ivar rootName: its name in the zip.
    """

    entries: list
    offsets: array
    size: int
    centralOffset: int
    centralSize: int
    report: ArchiveReport
    source: str
    rootName: str
    spool: object = None
    keep: KeepList = None

    def pathOf(self, entry):
        """
        @return: the path of the file that a file entry is made of.
        """
        return self.source + entry.name.decode("utf-8")[len(self.rootName) :]

    def close(self):
        """
        Drop the deflate streams kept for this plan, if any: once no stream
        of it will be read again.
        """
        if self.spool is not None:
            self.spool.close()


def _entry(name, mode, mtimeNs, **fields):
    """
    @param mode: the entry's full mode, type bits included.
    """
    dosTime, dosDate = dosTimeDate(wholeSeconds(mtimeNs))
    return PlannedEntry(
        name=name,
        external=externalAttributes(mode),
        dosTime=dosTime,
        dosDate=dosDate,
        mtimeNs=mtimeNs,
        **fields,
    )


def _linkEntry(name, mode, mtimeNs, target, crc, owner=b""):
    """
    A link's entry: its target, stored, is its content.
    """
    return _entry(
        name,
        mode,
        mtimeNs,
        method=STORED,
        usize=len(target),
        csize=len(target),
        content=target,
        crc=crc,
        owner=owner,
    )


def _entryFor(arcname, st, **fields):
    if st.st_nlink > 1 and stat.S_ISREG(st.st_mode):
        fields["inode"] = (st.st_dev, st.st_ino)
    return _entry(
        arcname.encode("utf-8"),
        st.st_mode,
        st.st_mtime_ns,
        owner=ownerFields(st.st_uid, st.st_gid),
        **fields,
    )


def _makeMember(entry, leader, report):
    """
    Turn a planned file entry into a member of the hard-link group whose
    first entry is named C{leader}: stored and empty (nothing is read),
    counted in C{report.hardlinks} and no longer in its C{size}.
    """
    report.size -= entry.usize
    report.hardlinks += 1
    entry.method = STORED
    entry.usize = entry.csize = entry.crc = 0
    entry.content = b""
    entry.spooled = None
    entry.link = leader


def assignHardLinks(entries, report):
    """
    Group the planned files that are one inode (L{PlannedEntry.inode}), in
    the zip's order: the first of each group carries the data and its own
    name as C{link}, the others become members linked to it
    (C{report.hardlinks} counts them).  A file alone in the tree with its
    inode is an ordinary file.
    """
    first = {}
    for entry in entries:
        if entry.inode is None:
            continue
        leader = first.get(entry.inode)
        if leader is None:
            first[entry.inode] = entry
            continue
        leader.link = leader.name
        _makeMember(entry, leader.name, report)
    for entry in first.values():
        entry.inode = None


def blockSizes(size, first=SAMPLE_SIZE):
    """
    The sizes of the blocks in which a file of C{size} bytes is read: the
    first of C{first} bytes, then blocks of L{COPY_BLOCK}.  The plan and
    the stream read a file in the same blocks, so that deflating it gives
    the same stream both times.
    """
    want = min(first, size)
    while size > 0:
        yield want
        size -= want
        want = min(COPY_BLOCK, size)


def readBlocks(fd, size, direct=None):
    """
    Yield at most C{size} bytes of a file, in the blocks of L{blockSizes},
    each read in full unless the file ends.

    @param direct: a L{backup_proto.archive.directio.DirectReadAhead} if C{fd} has
        C{O_DIRECT} on, for stored files only: the blocks are then all of
        L{COPY_BLOCK} (but the last), and each is a view of its buffer,
        valid until the next one is asked for.
    """
    if direct is not None:
        # a stored file, whose blocks need not be the plan's: whole blocks
        # from the start mean one wait on the disk fewer for each file
        yield from direct.blocks(fd, blockSizes(size, COPY_BLOCK))
        return
    for want in blockSizes(size):
        block = os.read(fd, want)
        while 0 < len(block) < want:
            more = os.read(fd, want - len(block))
            if not more:
                break
            block += more
        if not block:
            return
        yield block
        if len(block) < want:
            return


class ParentFiles:
    """
    The files of an incremental backup's parent, as the plan compares them
    (fed its manifest's entries in order, L{add}): a file is unchanged when
    its path, type, size, modification time to the nanosecond, mode and
    owner ids equal the parent's, and for a file of a hard-link group, when
    the whole group is unchanged and grouped as before.  Content changed
    with size and time put back is not seen; a full backup (C{--full})
    reads everything.

    @ivar snapshotId: the parent's id.
    @ivar digest: its manifest's digest, once read.
    @ivar entries: how many entries its manifest holds.
    @ivar files: the regular files: path -> C{(index, size, mtimeNs, mode,
        ids, link)}, C{ids} being C{(uid, gid)} or C{None}.
    """

    def __init__(self, snapshotId):
        self.snapshotId = snapshotId
        self.digest = None
        self.entries = 0
        self.files = {}

    def add(self, entry):
        path, kind, size, mtimeNs, mode, _target, _crc, owner, link = entry
        if kind == "file":
            ids = None if owner is None else owner[:2]
            self.files[path] = (self.entries, size, mtimeNs, mode, ids, link)
        self.entries += 1


def _sameAsParent(known, st, link=None):
    return known is not None and known[1:] == (
        st.st_size,
        st.st_mtime_ns,
        stat.S_IMODE(st.st_mode),
        (st.st_uid, st.st_gid),
        link,
    )


def _compareWithParent(parent, keep, report, arcname, entry, linked):
    """
    Look a file up among the parent's (L{ParentFiles}).

    @param entry: its C{os.DirEntry}.
    @param linked: where a file with more than one link is put aside, as
        C{(path, arcname, stat)}: L{_keepLinkGroups} decides its group as
        a whole once the walk is done.
    @return: whether it is unchanged (and so kept, not read) or put aside.
    """
    st = entry.stat(follow_symlinks=False)
    if st.st_nlink > 1:
        linked.append((entry.path, arcname, st))
        return True
    known = parent.files.get(arcname)
    if known is None:
        report.filesNew += 1
        return False
    if _sameAsParent(known, st):
        keep.keep(known[0])
        report.filesUnchanged += 1
        report.bytesUnchanged += st.st_size
        return True
    report.filesChanged += 1
    return False


def _keepLinkGroups(parent, keep, report, linked):
    """
    Decide the files with more than one link that an incremental walk put
    aside, a hard-link group at a time: kept if every file of the group is
    unchanged and was grouped the same way (so the server's kept files
    share one inode as before), else all sent (a zip's member cannot name
    a kept file).

    @return: the C{(path, arcname)} of the files to send, in walk order.
    """
    groups = {}
    for item in linked:
        groups.setdefault((item[2].st_dev, item[2].st_ino), []).append(item)
    send = []
    for group in groups.values():
        leader = group[0][1] if len(group) > 1 else None
        known = [parent.files.get(arcname) for _path, arcname, _st in group]
        if all(_sameAsParent(k, st, leader) for k, (_p, _a, st) in zip(known, group)):
            for k, (_path, _arcname, st) in zip(known, group):
                keep.keep(k[0])
                report.filesUnchanged += 1
                report.bytesUnchanged += st.st_size
            continue
        for k, (path, arcname, _st) in zip(known, group):
            if k is None:
                report.filesNew += 1
            else:
                report.filesChanged += 1
            send.append((path, arcname))
    return send


@dataclass(frozen=True)
class _Later:
    """
    A file that a worker process left to the plan's threads: one that is
    read in blocks (over L{SAMPLE_SIZE}) and may be deflated as a stream,
    which the plan keeps in its spool; only the plan's own process can
    write to that, and for such a file threads cost little (see
    L{backup_client.planworkers}).
    """

    path: str
    arcname: str


def _planFile(path, arcname, st, compression, spool, leaveLarge=False):
    """
    Plan one file entry: read it once to pick the method, and to count its
    deflated size when it is to be deflated, keeping that stream in
    C{spool} if there is one (only opened when it is stored whatever it
    holds).

    @param st: the file's status, or C{None} to take it from the opened
        file: then the tree's walker need not look the path up a second
        time.
    @param leaveLarge: return a L{_Later}, unread, for a file that is read
        in blocks (in a worker process, which passes no spool).
    """
    fd = os.open(path, READ_FLAGS)  # an unreadable file is left out
    if st is None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "no longer a regular file")
    size = st.st_size
    if storedWithoutLooking(path, size, compression):
        os.close(fd)
        return _entryFor(arcname, st, method=STORED, usize=size, csize=size)
    if leaveLarge and size > SAMPLE_SIZE:
        os.close(fd)
        return _Later(path, arcname)
    try:
        blocks = readBlocks(fd, size)
        head = next(blocks, b"")
        method, packed = chooseMethod(path, head, size, compression)
        entry = _entryFor(arcname, st, method=method, usize=size, csize=size)
        if method == STORED:
            return entry
        if packed is not None:
            # a file of at most SAMPLE_SIZE bytes (deflated whole) is deflated
            # again when sent, off the plan's critical path (keeping its
            # stream slowed the plan more than it sped the send)
            entry.csize = len(packed)
            return entry
        # a larger file, deflated as a stream: the send reads it back
        keeper = spool.keeper() if spool is not None else None
        compressor = newDeflater()
        crc = csize = 0
        for block in itertools.chain((head,), blocks):
            piece = compressor.compress(block)
            csize += len(piece)
            if keeper is not None:
                crc = isal_zlib.crc32(block, crc)
                keeper.write(piece)
        piece = compressor.flush()
        csize += len(piece)
        entry.csize = csize
        if keeper is not None:
            keeper.write(piece)
            where = keeper.finish()
            after = os.fstat(fd)
            if where is not None and (after.st_size, after.st_mtime_ns) == (size, st.st_mtime_ns):
                entry.spooled, entry.crc = where, crc
            # else the file changed while it was read: the stream reads it
            # again, and reports it
    finally:
        os.close(fd)
    return entry


def planArchive(
    source,
    name=None,
    compression="auto",
    spool=None,
    stop=None,
    workers=None,
    threads=None,
    parent=None,
    attributes=None,
    exclude=None,
):
    """
    Walk a file or a folder tree and plan its zip (blocking: run it in a
    thread).  Links are stored as links and never followed; sockets, FIFOs
    and devices are skipped, and files and folders that cannot be read are
    left out; both are reported.

    @param source: the file or folder (a link given here is followed: it is
        what the user named).
    @param name: the root name in the archive; default the basename.
    @param spool: a L{backup_proto.archive.spool.Spool} in which to keep deflate
        streams for the second pass; the plan owns it from here on
        (L{ArchivePlan.close}), and closes it if planning fails.
    @param stop: a C{threading.Event}: once set, planning stops with
        L{PlanStopped} (the caller no longer needs the plan).
    @param workers: a pool of worker processes
        (L{backup_client.planworkers.startPlanWorkers}) that plans a folder's
        files of at most L{SAMPLE_SIZE} bytes (and those stored unread)
        instead of the plan's threads; C{None} to plan them all in threads.
    @param threads: the executor that reads and deflates a folder's files
        (owned by the caller, who may share it between plans); C{None}: a
        pool of L{PLAN_THREADS} for this plan alone.
    @param parent: the L{ParentFiles} of an incremental backup of a folder:
        the files unchanged since are left out of the zip (and not read),
        and named in the plan's C{keep}.
    @param attributes: C{.get(path) -> (mode, mtimeNs) | None} (a C{dict},
        or an L{backup_proto.archive.manifest.EntryAttributes}): the modes
        and times to give the entries instead of their files' (from a
        snapshot's manifest: a file shared with other snapshots through a
        hard link is not what a restore trusts for them).
    @param exclude: C{exclude(relpath, isDir, path) -> bool}: a folder's
        entries to leave out (a folder with all it holds), by their path
        relative to the folder; counted in the report's C{excluded}.
    @return: an L{ArchivePlan}.
    """
    try:
        source = os.path.abspath(source)
        name = name or os.path.basename(source.rstrip(os.sep))
        # files are opened without following links: resolve the one named
        source = os.path.realpath(source)
        report = ArchiveReport()
        st = os.stat(source)
        entries = []
        keep = None if parent is None else KeepList(parent.entries)
        if stat.S_ISDIR(st.st_mode):
            # a restore's groups are the manifest's (_applyAttributes): a
            # stored file shares its inode with other snapshots' copies
            tree = (entries, source, name, st, compression, spool, report, attributes is None)
            if threads is not None:
                _planTree(*tree, threads, stop, workers, parent, keep, exclude)
            else:
                with ThreadPoolExecutor(PLAN_THREADS) as pool:
                    _planTree(*tree, pool, stop, workers, parent, keep, exclude)
        elif parent is not None:
            raise ArchiveError(f"{name} is not a folder: only folders are backed up incrementally")
        elif stat.S_ISREG(st.st_mode):
            entries.append(_planFile(source, name, st, compression, spool))
            report.files += 1
            report.size += st.st_size
        else:
            raise ArchiveError(f"{name} is not a regular file or a folder")
    except BaseException:
        if spool is not None:
            spool.close()
        raise
    if attributes is not None:
        _applyAttributes(entries, attributes, report)
    return _layOut(entries, report, source, name, spool, keep)


def _layOut(entries, report, source, name, spool=None, keep=None):
    """
    @return: the L{ArchivePlan} of C{entries} in this order: where each
        one starts, where the central directory starts and how long it
        is, and the zip's size.
    """
    offsets = array("Q")
    offset = 0
    for entry in entries:
        offsets.append(offset)
        offset += entry.spanLength()
    centralOffset = offset
    centralSize = sum(entry.centralLength(at) for entry, at in zip(entries, offsets))
    size = centralOffset + centralSize + len(endRecords(len(entries), centralOffset, centralSize))
    return ArchivePlan(
        entries, offsets, size, centralOffset, centralSize, report, source, name, spool, keep
    )


_TYPES = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK}


def planFromManifest(source, name, entries):
    """
    Plan a stored snapshot's zip from its manifest, without looking at its
    files (blocking): each entry's type, size, mode, time, owner, link
    target and hard-link group are the manifest's, every file is stored as
    it is.  A file whose size is not the manifest's any more is sent as
    L{ArchiveStream} sends a file that changed (cut or padded, and
    reported).

    @param source: the snapshot's top-level entry on disk.
    @param name: its name, the first component of every manifest path.
    @param entries: the manifest's entries, in order.
    @return: an L{ArchivePlan}.
    """
    report = ArchiveReport()
    planned = []
    groups = _RecordedGroups(report)
    for path, kind, size, mtimeNs, mode, target, crc, owner, link in entries:
        full = _TYPES[kind] | mode
        fields = {"owner": _recordedOwner(owner)}
        if kind == "file":
            entry = _entry(
                path.encode("utf-8"), full, mtimeNs, method=STORED, usize=size, csize=size, **fields
            )
            report.files += 1
            report.size += size
            groups.place(entry, link)
        elif kind == "dir":
            folder = f"{path}/".encode()
            entry = _entry(
                folder, full, mtimeNs, method=STORED, usize=0, csize=0, content=b"", **fields
            )
            report.dirs += 1
        else:
            entry = _linkEntry(
                path.encode("utf-8"), full, mtimeNs, target.encode("utf-8"), crc, **fields
            )
            report.links += 1
        planned.append(entry)
    return _layOut(planned, report, os.path.realpath(source), name)


def _recordedOwner(owner):
    """
    @return: the extra fields of an owner a manifest recorded, as the
        client named it (never looked up on the server), or C{b""}.
    """
    return b"" if owner is None else ownerFields(*owner, lookUp=False)


class _RecordedGroups:
    """
    Hard-link groups as a manifest records them, for a restore's plan: the
    first file of a group that the zip holds carries the data (a partial
    restore may leave the recorded first one out), the others link to it.
    """

    def __init__(self, report):
        self._report = report
        self._first = {}  # the recorded first path -> the planned first name

    def place(self, entry, link):
        if link is None:
            return
        first = self._first.get(link)
        if first is None:
            self._first[link] = entry.link = entry.name
            return
        _makeMember(entry, first, self._report)


def _applyAttributes(entries, attributes, report):
    """
    Give each planned entry named in C{attributes} that mode, time, owner
    and hard-link group (its type stays the one found on disk); the
    others get no owner (a restore never sends the server's own).
    """
    groups = _RecordedGroups(report)
    for entry in entries:
        entry.inode = None
        known = attributes.get(entry.name.decode("utf-8").rstrip("/"))
        if known is None:
            entry.owner = b""
            continue
        mode, mtimeNs, owner, link = known
        entry.owner = _recordedOwner(owner)
        if entry.content is None:
            groups.place(entry, link)
        if entry.mtimeNs == mtimeNs and stat.S_IMODE(entry.external >> 16) == mode:
            continue  # as it almost always is: nothing to work out again
        entry.external = externalAttributes(stat.S_IFMT(entry.external >> 16) | mode)
        entry.mtimeNs = mtimeNs
        entry.dosTime, entry.dosDate = dosTimeDate(wholeSeconds(mtimeNs))


def _planTree(
    entries,
    top,
    name,
    topStat,
    compression,
    spool,
    report,
    groupLinks,
    pool,
    stop,
    workers=None,
    parent=None,
    keep=None,
    exclude=None,
):
    """
    Plan a folder's entries, in the order they go into the zip; files are
    read and deflated by C{workers} if given, else by C{pool}, several at a
    time.  A task names its folder once and then only its files' names:
    the walk runs ahead of the plan threads, and tasks waiting their turn
    then hold no full paths.
    """
    planned = []
    batch = []
    folder = None
    linked = []  # see _compareWithParent

    def flush():
        nonlocal batch
        if batch:
            if workers is None:
                planned.append(pool.submit(_planFiles, *folder, batch, compression, spool))
            else:
                planned.append(workers.submit(_planFiles, *folder, batch, compression, None, True))
            batch = []

    stack = [(top, name, topStat)]
    while stack:
        if stop is not None and stop.is_set():
            for item in planned:
                if not isinstance(item, PlannedEntry):
                    item.cancel()
            raise PlanStopped()
        path, arcname, st = stack.pop()
        flush()
        folder = (path, arcname)
        planned.append(_entryFor(arcname + "/", st, method=STORED, usize=0, csize=0, content=b""))
        report.dirs += 1
        try:
            with os.scandir(path) as it:
                children = sorted(it, key=lambda e: e.name)
        except OSError as e:
            report.unreadable.append(f"{arcname}: {e.strerror}")
            continue
        subdirs = []
        for child in children:
            childArc = f"{arcname}/{child.name}"
            try:
                childArc.encode("utf-8")
                if exclude is not None and exclude(
                    childArc[len(name) + 1 :], child.is_dir(follow_symlinks=False), child.path
                ):
                    report.excluded += 1
                    continue
                if child.is_file(follow_symlinks=False):
                    if parent is not None and _compareWithParent(
                        parent, keep, report, childArc, child, linked
                    ):
                        continue
                    # its plan thread takes its status from the open file
                    batch.append(child.name)
                    if len(batch) == PLAN_BATCH:
                        flush()
                    continue
                cst = child.stat(follow_symlinks=False)
            except UnicodeEncodeError:
                report.unreadable.append(f"{childArc!a}: name is not valid UTF-8")
                continue
            except OSError as e:
                report.unreadable.append(f"{childArc}: {e.strerror}")
                continue
            mode = cst.st_mode
            try:
                if stat.S_ISDIR(mode):
                    subdirs.append((child.path, childArc, cst))
                elif stat.S_ISLNK(mode):
                    target = os.readlink(child.path).encode("utf-8", "surrogateescape")
                    flush()
                    planned.append(
                        _linkEntry(
                            childArc.encode("utf-8"),
                            cst.st_mode,
                            cst.st_mtime_ns,
                            target,
                            isal_zlib.crc32(target),
                            ownerFields(cst.st_uid, cst.st_gid),
                        )
                    )
                    report.links += 1
                else:
                    report.skipped.append(f"{childArc}: special file skipped")
            except OSError as e:
                report.unreadable.append(f"{childArc}: {e.strerror}")
        stack.extend(reversed(subdirs))
    flush()
    if linked:
        for path, arcname in _keepLinkGroups(parent, keep, report, linked):
            folderPath, fileName = os.path.split(path)
            folderArc = arcname.rsplit("/", 1)[0]
            planned.append(
                pool.submit(_planFiles, folderPath, folderArc, [fileName], compression, spool)
            )
    # the files that workers left to the threads are planned while later
    # batches are still collected
    results = []
    for item in planned:
        if isinstance(item, PlannedEntry):
            results.append(item)
            continue
        for result in item.result():
            if isinstance(result, _Later):
                result = pool.submit(_planOne, result.path, result.arcname, compression, spool)
            results.append(result)
    for result in results:
        if isinstance(result, Future):
            result = result.result()
        if isinstance(result, str):
            report.unreadable.append(result)
            continue
        entries.append(result)
        if result.content is None:
            report.files += 1
            report.size += result.usize
    if groupLinks:
        assignHardLinks(entries, report)


def _planOne(path, arcname, compression, spool, leaveLarge=False):
    """
    L{_planFile} for a file that the walker found.

    @return: its entry, a L{_Later}, or the line to report if it could not
        be read.
    """
    try:
        return _planFile(path, arcname, None, compression, spool, leaveLarge)
    except OSError as e:
        return f"{arcname}: {e.strerror}"


def _planFiles(path, arcname, names, compression, spool, leaveLarge=False):
    """
    L{_planOne} for each file of C{names} in one folder (in a plan thread or
    a worker process).

    @param path: the folder.
    @param arcname: its name in the zip.
    """
    return [
        _planOne(f"{path}/{name}", f"{arcname}/{name}", compression, spool, leaveLarge)
        for name in names
    ]
