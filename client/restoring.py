# -*- test-case-name: tests.test_restore_place -*-
"""
Putting a restored snapshot where the user asked, without ever writing
outside it or over their files.

The server's zip is untrusted: it is checked with the server's own checker
(L{backup_proto.archive.checkArchive}), unpacked into a fresh hidden folder
inside DEST, and only then moved into place.  Every conflict is found before
anything is moved; without C{overwrite} the first one is reported and DEST is
left as it was.
"""

import os
import shutil
import stat
import tempfile
import zipfile

from backup_proto.archive import (
    ZIP_ERRORS, ArchiveError, applyDirAttributes, checkArchive, extractChecked,
)


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


def findConflicts(index, dest, overwrite):
    """
    @raise RestoreConflict: for the first entry that exists in C{dest}
        (an existing folder where the snapshot has a folder is fine); with
        C{overwrite}, only for a folder where the snapshot has a file or link.
    """
    for entry in index.entries:
        rel = os.path.join(*entry.parts)
        target = os.path.join(dest, rel)
        if not os.path.lexists(target):
            continue
        if entry.kind == "dir":
            if _isRealDir(target):
                continue
            raise RestoreConflict(rel, "exists and is not a folder")
        if _isRealDir(target):
            raise RestoreConflict(rel, "is a folder; it will not be replaced by a file")
        if not overwrite:
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


def placeRestore(zipPath, dest, name, kind, limits, overwrite=False, progress=None):
    """
    Check the zip, then unpack it into C{dest} (blocking: run in a thread).

    @param name: the snapshot's top-level name the server announced.
    @param kind: C{"dir"} or C{"file"}, as announced.
    @raise ArchiveError: the zip is unsafe or not what was announced.
    @raise RestoreConflict: see L{findConflicts}.
    @return: the L{backup_proto.archive.ArchiveIndex}.
    """
    try:
        with zipfile.ZipFile(zipPath) as zf:
            index = checkArchive(zf, limits)
            if index.root != name or index.kind != kind:
                raise ArchiveError("archive does not hold the snapshot the server announced")
            os.makedirs(dest, exist_ok=True)
            findConflicts(index, dest, overwrite)
            staging = tempfile.mkdtemp(prefix=".backup-restore-", dir=dest)
            try:
                extractChecked(zf, index, staging, limits, progress=progress, applyDirs=False,
                               consume=True)
                _merge(os.path.join(staging, index.root), os.path.join(dest, index.root))
                applyDirAttributes(dest, index)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except ZIP_ERRORS as e:
        raise ArchiveError(f"not a valid zip archive ({e})") from None
    return index
