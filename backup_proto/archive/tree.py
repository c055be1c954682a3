# -*- test-case-name: tests.test_archive,tests.test_zipstream -*-
"""
The file system steps of unpacking: folders made private until their
attributes are applied, and the flushes that make a tree durable.
"""

import ctypes
import os
import stat

from backup_proto.archive.policy import ArchiveError


def makeDirs(dest, parts, made):
    """
    Make the folders C{parts} below C{dest}, each private (0700) until its
    attributes are applied; folders made before are found in C{made}.

    @param parts: a tuple of path components, already checked.
    @param made: a dict from the parts of each folder made to its path
        (shared between calls).
    @return: the path of the deepest folder.
    """
    path = made.get(parts)
    if path is not None:
        return path
    known = len(parts)
    while known and parts[:known] not in made:
        known -= 1
    path = made[parts[:known]] if known else dest
    for i in range(known, len(parts)):
        path = os.path.join(path, parts[i])
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode):
                raise ArchiveError("archive entry collides with another") from None
        made[parts[: i + 1]] = path
    return path


def applyDirAttributes(dest, index):
    """
    Give the unpacked folders of C{index} below C{dest} their modes and
    modification times, deepest first (writing into a folder changes its
    time, and a read-only folder cannot be filled or moved).
    """
    for entry in index.dirs:  # deepest first
        path = os.path.join(dest, *entry.parts)
        os.chmod(path, entry.mode, follow_symlinks=False)
        os.utime(path, (entry.mtime, entry.mtime), follow_symlinks=False)


_libc = None


def syncTree(path):
    """
    Flush everything written to the file system holding C{path} to disk
    (C{syncfs(2)} on Linux: one call for a whole unpacked tree, instead of an
    C{fsync} per file; C{sync()} elsewhere).
    """
    global _libc
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(_libc, "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def fsyncDir(path):
    """
    C{fsync} a folder, so that a rename into it is durable.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
