# -*- test-case-name: tests.test_incremental -*-
"""
Building an incremental snapshot complete in staging: the files the client
keeps from the parent are hard-linked from the parent's tree into the tree
just unpacked, so that the new snapshot is a whole tree of its own
(restoring it needs no other snapshot, and removing the parent leaves it
intact) and an unchanged file costs no second copy.

A kept file shares its inode with the parent's, so it shares mode, times
and owner: the client keeps a file only when its mode and time equal the
parent's, and nothing ever writes into a stored file (every change is a
new file).  Where the file system refuses the link (too many links to one
inode, another file system, no hard links at all) the file is copied
instead, and the job logs it.
"""

import errno
import os
import stat
from dataclasses import dataclass, field

from backup_proto.archive.manifest import ManifestError, readEntries
from backup_proto.archive.policy import ArchiveError
from backup_proto.archive.tree import LINK_REFUSED, copyFile

_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


class ParentChanged(Exception):
    """
    The parent snapshot an incremental backup named changed or went away
    before the new snapshot was committed: nothing is stored, and the
    client sends a full backup instead.
    """


@dataclass
class KeptStats:
    """
    What L{linkKept} did.

    @ivar linked: files hard-linked from the parent.
    @ivar copied: files copied because a link was refused.
    @ivar copiedBytes: their bytes, which the new snapshot adds to the disk.
    @ivar refused: the errno names that made copies, e.g. C{{"EMLINK"}}.
    """

    linked: int = 0
    copied: int = 0
    copiedBytes: int = 0
    refused: set = field(default_factory=set)


class FolderCursor:
    """
    Descriptors of folders below C{base}, each opened one component at a
    time without following a link (a kept file can never be placed through
    a link the upload made), the last one kept open: kept files come folder
    by folder.
    """

    def __init__(self, base):
        self.base = base
        self._parts = None
        self._fd = None

    def open(self, parts):
        """
        @return: a descriptor of the folder C{parts} (a tuple of components).
        @raise OSError: a component is missing, not a folder, or a link.
        """
        if parts == self._parts:
            return self._fd
        self.close()
        fd = os.open(self.base, _FOLDER_FLAGS)
        try:
            for part in parts:
                inner = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        self._parts, self._fd = parts, fd
        return fd

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._parts = self._fd = None


def linkKept(parentTree, parentManifest, digest, keep, tree, recorder, link=os.link):
    """
    Place the files that C{keep} names from the parent into C{tree} and add
    their entries to the new manifest (blocking).  Runs after the upload is
    unpacked and before folders get their modes, so every folder is still
    writable.

    @param parentTree: the parent's snapshot folder (holding its root).
    @param parentManifest: the parent's manifest file, with C{digest}.
    @param keep: the L{backup_proto.archive.manifest.KeepList}.
    @param tree: the staging folder holding the new snapshot's root.
    @param recorder: the new snapshot's
        L{backup_proto.archive.manifest.ManifestWriter}.
    @param link: C{os.link} (tests inject refusals).
    @raise ParentChanged: the parent is gone, or its manifest or files are
        not what they were.
    @raise ArchiveError: the keep list names a folder or link, or a file
        the upload also holds or whose folder it lacks.
    @return: L{KeptStats}.
    """
    stats = KeptStats()
    sources, dests = FolderCursor(parentTree), FolderCursor(tree)
    try:
        try:
            entries = readEntries(parentManifest, digest)
            for i, (line, entry) in enumerate(entries):
                if i not in keep:
                    continue
                path, kind, size, mtimeNs, mode = entry[:5]
                if kind != "file":
                    raise ArchiveError(f"keep list names '{path[:200]}', which is not a file")
                parts = tuple(path.split("/"))
                folder, name = parts[:-1], parts[-1]
                try:
                    source = sources.open(folder)
                    st = os.stat(name, dir_fd=source, follow_symlinks=False)
                except OSError:
                    raise ParentChanged("a file of the parent snapshot is gone") from None
                if not stat.S_ISREG(st.st_mode) or (st.st_size, st.st_mtime_ns) != (size, mtimeNs):
                    raise ParentChanged("a file of the parent snapshot changed")
                try:
                    dest = dests.open(folder)
                except OSError:
                    raise ArchiveError(
                        f"kept file '{path[:200]}' has no folder in the upload"
                    ) from None
                _place(link, name, source, dest, mode, mtimeNs, size, path, stats)
                recorder.addEncoded(line, kind, size)
        except ManifestError:
            raise ParentChanged("the parent snapshot's manifest changed") from None
        except OSError as e:
            if e.errno == errno.ENOENT and e.filename == parentManifest:
                raise ParentChanged("the parent snapshot is gone") from None
            raise
    finally:
        sources.close()
        dests.close()
    if keep.kept != stats.linked + stats.copied:
        raise ArchiveError("keep list names entries past the parent's manifest")
    return stats


def _place(link, name, source, dest, mode, mtimeNs, size, path, stats):
    try:
        link(name, name, src_dir_fd=source, dst_dir_fd=dest, follow_symlinks=False)
        stats.linked += 1
        return
    except FileExistsError:
        raise ArchiveError(f"upload both sends and keeps '{path[:200]}'") from None
    except FileNotFoundError:
        raise ParentChanged("a file of the parent snapshot is gone") from None
    except OSError as e:
        if e.errno not in LINK_REFUSED:
            raise
        stats.refused.add(errno.errorcode.get(e.errno, str(e.errno)))
    stats.copiedBytes += copyFile(name, source, dest, mode, mtimeNs)
    stats.copied += 1
