# -*- test-case-name: tests.test_restore_place -*-
"""
Putting a restored snapshot where the user asked, without ever writing
outside it or over their files.

The server's zip is untrusted: it is unpacked as it arrives, with the
server's own checks (L{backup_proto.archive.extract.ExtractSink}), into a fresh
hidden folder inside DEST, and only then moved into place.  Every conflict
is found before anything is moved; without C{overwrite} the first one is
reported and DEST is left as it was.
"""

import os
import shutil
import stat
import tempfile

from backup_proto.archive.extract import ExtractSink, feedFile
from backup_proto.archive.policy import ArchiveError
from backup_proto.archive.tree import applyDirAttributes


class RestoreConflict(Exception):
    """
    A path the restore would write already exists (C{path}, relative to
    DEST), and C{--overwrite} was not given or cannot apply.
    """

    def __init__(self, path, reason):
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self):
        return f"{self.path} {self.reason}"


def _isRealDir(path):
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def findConflicts(unpacked, root, dest, overwrite):
    """
    Compare the tree C{root} unpacked in C{unpacked} with C{dest}, folder by
    folder (only into folders that exist in both).

    @raise RestoreConflict: for the first path that exists in C{dest}
        (an existing folder where the snapshot has a folder is fine); with
        C{overwrite}, only for a folder where the snapshot has a file or link.
    """
    stack = [root]
    while stack:
        rel = stack.pop()
        target = os.path.join(dest, rel)
        if not os.path.lexists(target):
            continue
        if _isRealDir(os.path.join(unpacked, rel)):
            if not _isRealDir(target):
                raise RestoreConflict(rel, "exists and is not a folder")
            names = sorted(os.listdir(os.path.join(unpacked, rel)), reverse=True)
            stack.extend(os.path.join(rel, name) for name in names)
        elif _isRealDir(target):
            raise RestoreConflict(rel, "is a folder; it will not be replaced by a file")
        elif not overwrite:
            raise RestoreConflict(rel, "already exists (use --overwrite to replace it)")


def _merge(src, dst):
    if not os.path.lexists(dst):
        os.rename(src, dst)
    elif _isRealDir(src) and _isRealDir(dst):
        for name in sorted(os.listdir(src)):
            _merge(os.path.join(src, name), os.path.join(dst, name))
    else:
        os.unlink(dst)
        os.rename(src, dst)


def placeUnpacked(sink, dest, name, kind, overwrite=False):
    """
    Finish a restore unpacked into C{sink} (blocking: run in a thread):
    check it holds what the server announced, then move it into C{dest}.
    The sink's folder must be inside C{dest}, so that moving is renaming.

    @param sink: the L{backup_proto.archive.extract.ExtractSink} that received
        the zip.
    @param name: the snapshot's top-level name the server announced.
    @param kind: C{"dir"} or C{"file"}, as announced.
    @raise ArchiveError: the zip is unsafe or not what was announced.
    @raise RestoreConflict: see L{findConflicts}.
    @return: the L{backup_proto.archive.index.ArchiveIndex}.
    """
    index = sink.finish(applyDirs=False)
    if index.root != name or index.kind != kind:
        raise ArchiveError("archive does not hold the snapshot the server announced")
    findConflicts(sink.dest, index.root, dest, overwrite)
    _merge(os.path.join(sink.dest, index.root), os.path.join(dest, index.root))
    applyDirAttributes(dest, index)
    return index


class RestoreStaging:
    """
    A fresh hidden folder inside DEST to unpack a restore into, so that
    moving it into place is renaming (blocking).  DEST, and any of its
    parents that are missing, are made for it; L{remove} removes them again
    if the restore left them empty (it failed), as if never made.

    @ivar path: the hidden folder.
    """

    def __init__(self, dest):
        self._dest = dest = os.path.abspath(dest)
        self._madeTop = None  # the outermost folder made here, if any
        path = dest
        while not os.path.lexists(path):
            self._madeTop = path
            path = os.path.dirname(path)
        os.makedirs(dest, exist_ok=True)
        self.path = tempfile.mkdtemp(prefix=".backup-restore-", dir=dest)

    def remove(self):
        shutil.rmtree(self.path, ignore_errors=True)
        if self._madeTop is None:
            return
        path = self._dest
        while True:
            try:
                os.rmdir(path)
            except OSError:  # not empty: the restore is in it
                return
            if path == self._madeTop:
                return
            path = os.path.dirname(path)


def placeRestore(zipPath, dest, name, kind, limits, overwrite=False):
    """
    L{placeUnpacked} for a zip held in a file (blocking).
    """
    staging = RestoreStaging(dest)
    try:
        sink = ExtractSink(os.path.join(staging.path, "tree"), limits)
        feedFile(zipPath, sink.write)
        sink.close()
        return placeUnpacked(sink, dest, name, kind, overwrite)
    finally:
        staging.remove()
