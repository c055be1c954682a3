# -*- test-case-name: tests.test_archive,tests.test_zipstream -*-
"""
The file system steps of unpacking: the L{TreeWriter} that makes an
archive's entries (the only part of unpacking that makes system calls),
folders made private until their attributes are applied, and the flushes
that make a tree durable.
"""

import ctypes
import errno
import functools
import grp
import os
import pwd
import stat

from backup_proto.archive.directio import DirectWriter
from backup_proto.archive.policy import COPY_BLOCK, MAX_LINK_TARGET, ArchiveError

#: What C{link(2)} fails with where a copy must do instead: the inode has
#: its file system's most links (ext4: 65,000), the two trees are on
#: different file systems, or the file system has no hard links.
LINK_REFUSED = frozenset({errno.EMLINK, errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})

#: Folders whose paths a L{TreeWriter} keeps for L{makeDirs}.
_MADE_CACHE = 1024


def makeDirs(dest, parts, made, created=None):
    """
    Make the folders C{parts} below C{dest}, each private (0700) until its
    attributes are applied; folders made before are found in C{made}.

    @param parts: a tuple of path components, already checked.
    @param made: a dict from the parts of each folder made to its path
        (shared between calls).
    @param created: a C{bytearray} to which the path (below C{dest}) of
        each folder made is added, NUL-terminated, or C{None}.
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
        else:
            if created is not None:
                created += "/".join(parts[: i + 1]).encode("utf-8") + b"\0"
        made[parts[: i + 1]] = path
    return path


@functools.lru_cache(maxsize=256)
def ownerIds(owner):
    """
    The ids to give an entry whose recorded owner is C{owner}
    (C{(uid, gid, user, group)}): as tar does, a name known here gives its
    id here, else the recorded id is used.
    """
    uid, gid, user, group = owner
    if user is not None:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            pass
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    return uid, gid


def applyDirAttributes(dest, index):
    """
    Give the unpacked folders of C{index} below C{dest} their owners (where
    recorded to be applied), modes and modification times, deepest first
    (writing into a folder changes its time, and a read-only folder cannot
    be filled or moved); the owner first, since C{chown} clears setgid.
    """
    for entry in index.dirs:  # deepest first
        path = os.path.join(dest, *entry.parts)
        if entry.owner is not None:
            os.chown(path, *ownerIds(entry.owner), follow_symlinks=False)
        os.chmod(path, entry.mode, follow_symlinks=False)
        os.utime(path, ns=(entry.mtimeNs, entry.mtimeNs), follow_symlinks=False)


def copyFile(name, sourceFolder, destFolder, mode, mtimeNs, destName=None):
    """
    Copy the file C{name} between two open folders into a new private file
    (C{destName}, default the same name), then give it C{mode} and
    C{mtimeNs}.

    @return: the bytes copied.
    """
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=sourceFolder)
    try:
        dst = os.open(
            destName or name,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
            0o600,
            dir_fd=destFolder,
        )
        try:
            copied = 0
            while True:
                block = os.read(src, COPY_BLOCK)
                if not block:
                    break
                view = memoryview(block)
                while view:
                    view = view[os.write(dst, view) :]
                copied += len(block)
            os.fchmod(dst, mode)
            os.utime(dst, ns=(mtimeNs, mtimeNs))
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return copied


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


class TreeWriter:
    """
    Makes the entries of an archive below C{dest}, which the caller has
    checked (L{backup_proto.archive.policy}): folders (private until
    L{applyDirAttributes}), files created private with C{O_EXCL} and
    C{O_NOFOLLOW} and filled, then given their modes and times, and links,
    which arrive as files holding their target.  Blocking: one thread.
    """

    def __init__(self, dest, trackFolders=False):
        """
        @param trackFolders: keep the path of every folder made, packed
            (L{madeFolders}).
        """
        self.dest = dest
        self._made = {}  # folder parts -> path, see makeDirs
        self._created = bytearray() if trackFolders else None
        self._fd = None
        self._folder = None  # (parts, descriptor) of the last folder used, see _folderFd
        self._writer = DirectWriter()

    def makeFolder(self, parts):
        """
        L{makeDirs} with a bounded memory of the folders made: past
        L{_MADE_CACHE} it starts afresh (a folder made before is then
        found again with C{mkdir} and C{lstat}), so that an archive of a
        million folders does not keep a million paths.

        @return: the folder's path.
        """
        if len(self._made) > _MADE_CACHE:
            self._made.clear()
        return makeDirs(self.dest, parts, self._made, self._created)

    def madeFolders(self):
        """
        @return: the paths of the folders made, if they were tracked.
        """
        if not self._created:
            return []
        return self._created[:-1].decode("utf-8").split("\0")

    def _folderFd(self, parts):
        """
        A descriptor of the unpacked folder C{parts} (made if need be), for
        calls that name an entry within it: entries arrive folder by folder,
        so one descriptor is kept, and the kernel looks up a name rather
        than the whole path each time (C{docs/performance.rst}).
        """
        if self._folder is not None:
            if self._folder[0] == parts:
                return self._folder[1]
            self._closeFolder()
        path = self.makeFolder(parts)
        self._folder = (parts, os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW))
        return self._folder[1]

    def _closeFolder(self):
        if self._folder is not None:
            fd, self._folder = self._folder[1], None
            os.close(fd)

    def createFile(self, parts, size):
        """
        Create the file C{parts}, private and empty, to be filled with
        C{size} bytes by L{write}.
        """
        try:
            self._fd = os.open(
                parts[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                0o600,
                dir_fd=self._folderFd(parts[:-1]),
            )
        except FileExistsError:
            raise ArchiveError("archive has two entries for one path") from None
        self._writer.start(self._fd, size)

    def write(self, data):
        self._writer.write(data)

    def finishFile(self):
        """
        The file being filled is complete (a folder's entry has none).
        """
        if self._fd is not None:
            self._writer.finish()
            os.close(self._fd)
            self._fd = None

    def setFile(self, parts, mode, mtimeNs, owner=None):
        """
        Give a file its owner (if not C{None}: see L{ownerIds}), mode and
        time; the owner first, since C{chown} clears setuid and setgid.
        """
        folder = self._folderFd(parts[:-1])
        if owner is not None:
            os.chown(parts[-1], *ownerIds(owner), dir_fd=folder, follow_symlinks=False)
        os.chmod(parts[-1], mode, dir_fd=folder)
        os.utime(parts[-1], ns=(mtimeNs, mtimeNs), dir_fd=folder)

    def makeLink(self, parts, mtimeNs, owner=None):
        """
        Turn the file C{parts}, which holds a link's target, into the link.

        @return: the target.
        """
        # the entry's folder was made when the entry was placed: a lookup
        path = os.path.join(self.makeFolder(parts[:-1]), parts[-1])
        target = self._linkTarget(path, parts)
        os.unlink(path)
        os.symlink(target, path)
        if owner is not None:
            os.chown(path, *ownerIds(owner), follow_symlinks=False)
        os.utime(path, ns=(mtimeNs, mtimeNs), follow_symlinks=False)
        return target

    def makeHardLink(self, parts, first, mode, mtimeNs):
        """
        Replace the empty file C{parts} with a hard link to the file
        C{first} (the first of its group, complete); where the file system
        refuses the link, with a copy given C{mode} and C{mtimeNs}.
        """
        folder = self._folderFd(parts[:-1])
        os.unlink(parts[-1], dir_fd=folder)
        source = os.open(self.makeFolder(first[:-1]), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            try:
                os.link(
                    first[-1],
                    parts[-1],
                    src_dir_fd=source,
                    dst_dir_fd=folder,
                    follow_symlinks=False,
                )
            except OSError as e:
                if e.errno not in LINK_REFUSED:
                    raise
                copyFile(first[-1], source, folder, mode, mtimeNs, parts[-1])
        finally:
            os.close(source)

    @staticmethod
    def _linkTarget(path, parts):
        shown = "/".join(parts)[:200]
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            raw = os.read(fd, MAX_LINK_TARGET + 1)
        finally:
            os.close(fd)
        if not 0 < len(raw) <= MAX_LINK_TARGET:
            raise ArchiveError(f"link '{shown}' has an empty or over-long target")
        try:
            target = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"link '{shown}' has an unreadable target") from None
        if "\x00" in target:
            raise ArchiveError(f"link '{shown}' has a NUL in its target")
        return target

    def close(self):
        """
        Close the file being written, if any (after an error, say), and
        the folder kept open.
        """
        self._closeFolder()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._writer.close()
