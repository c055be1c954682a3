# -*- test-case-name: tests.test_session,tests.test_incremental,tests.test_lifecycle -*-
"""
Where snapshots live on the server, and how one becomes visible.

Layout under the data folder::

    user.db                          accounts and the snapshot catalog
    admin.log                        what backup-admin changed
    users/<username>/<snapshot-id>/<name>...   completed snapshots
    users/<username>/.manifests/<snapshot-id>  their manifests
    users/<username>/.staging/<random>/        uploads and unpacks under way

A snapshot appears in one step: the unpacked tree and its manifest are
flushed to disk, renamed from C{.staging} into place, the folder entries are
flushed, and only then is the catalog row written.  At start-up
L{SnapshotStore.recover} removes all staging data, snapshot folders and
manifests without a row (never confirmed to a client) and rows without a
folder, so the catalog and the disk agree; it also finishes removals a
crash cut short (L{backup_proto.server.catalog}'s C{purging}) and counts
those accounts' usage again.  A commit adds the snapshot's bytes to its
account's usage in the same transaction that writes its row, after
checking the quota.

Usernames are safe as folder names: L{backup_proto.server.accounts.checkUsername}
allows only C{[a-z0-9._-]}, never C{.} or C{-} first.
"""

import datetime
import os
import re
import shutil
import stat
import tempfile
from typing import NamedTuple

from backup_proto.archive.manifest import ManifestError, readLines
from backup_proto.archive.tree import fsyncDir
from backup_proto.server import catalog
from backup_proto.server.catalog import LIVE, PURGING, transaction
from backup_proto.server.compose import ParentChanged
from backup_proto.wire.errors import Code, ProtocolError
from backup_proto.wire.frames import MAX_ENTRIES_PAGE, SNAPSHOT_FIELDS, Msg

STAGING = ".staging"
MANIFESTS = ".manifests"

_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def snapshotBaseId(source, when):
    """
    @return: a readable snapshot id: the source name made safe, and the
        UTC time, e.g. C{photos-20261123T140501Z}.
    """
    safe = _ID_UNSAFE.sub("_", source).lstrip(".-")[:64] or "snapshot"
    return f"{safe}-{when.strftime('%Y%m%dT%H%M%SZ')}"


def _walkStats(top):
    """
    Yield the C{lstat} of everything below C{top} (not C{top}), never
    following a link.
    """
    stack = [top]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                yield st


def removeTree(top):
    """
    Remove a snapshot's folder and everything in it (blocking), making its
    folders writable first (a stored folder keeps its source's mode).

    @return: the bytes freed: regular files with no other link, and link
        targets.
    """
    freed = 0
    folders = []
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            os.chmod(folder, 0o700)  # only ever a folder: scandir said so
            entries = os.scandir(folder)
        except FileNotFoundError:
            continue
        folders.append(folder)
        with entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                    continue
                if stat.S_ISLNK(st.st_mode) or (stat.S_ISREG(st.st_mode) and st.st_nlink == 1):
                    freed += st.st_size
                os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)
    return freed


class ManifestPages:
    """
    A manifest cut into C{ENTRIES} frames a batch at a time (blocking
    calls, from one thread at a time): the entries are sent as they are
    stored, without decoding them, and what waits to be sent is one batch,
    however large the manifest.
    """

    #: Bytes of frames per L{read}.
    BATCH = 1 << 20

    def __init__(self, path, digest, limit=MAX_ENTRIES_PAGE):
        self.path = path
        self.digest = digest
        self._head = bytes((Msg.ENTRIES,)) + b'{"entries":['
        self._tails = (
            f'],"more":true,"manifest":"{digest}"}}'.encode("ascii"),
            f'],"more":false,"manifest":"{digest}"}}'.encode("ascii"),
        )
        # the room for entries in a page; the type byte is not body
        self._room = limit - len(self._head) - len(self._tails[0]) + 1
        self._lines = None
        self._next = None  # a line read but not yet placed in a page

    def open(self):
        """
        Check the whole manifest against its digest (a first pass: pages
        once sent cannot be taken back), then start reading it.

        @return: C{False} if it is missing or not the one its digest names.
        """
        try:
            for _line in readLines(self.path, self.digest):
                pass
        except (FileNotFoundError, ManifestError):
            return False
        self._lines = readLines(self.path)
        return True

    def read(self):
        """
        @return: C{(frames, last)}: about L{BATCH} bytes of frames, and
            whether the last page is among them.
        """
        frames, size = [], 0
        while size < self.BATCH:
            frame, last = self._page()
            frames.append(frame)
            size += len(frame)
            if last:
                self.close()
                return frames, True
        return frames, False

    def _page(self):
        page, used = [], 0
        while True:
            line, self._next = self._next, None
            if line is None:
                line = next(self._lines, None)
            if line is None:
                return self._head + b",".join(page) + self._tails[1], True
            if page and used + len(line) + 1 > self._room:
                self._next = line
                return self._head + b",".join(page) + self._tails[0], False
            page.append(line)
            used += len(line) + 1

    def close(self):
        if self._lines is not None:
            self._lines.close()
            self._lines = None


class StoredManifest(NamedTuple):
    """
    A snapshot's catalog row, and the file, digest and entry count of its
    manifest.
    """

    row: dict
    path: str
    digest: str
    entries: int


def _row(r):
    return dict(zip(SNAPSHOT_FIELDS, r))


# the catalog's columns are the wire's snapshot fields, in order
_COLUMNS = ", ".join(SNAPSHOT_FIELDS)


class SnapshotStore:
    """
    Users' areas and their snapshots.

    @ivar dataDir: the server's data folder.
    @ivar db: the L{backup_proto.server.database.Database}.
    """

    def __init__(self, dataDir, db):
        self.dataDir = os.path.abspath(dataDir)
        self.usersDir = os.path.join(self.dataDir, "users")
        self.db = db

    def userDir(self, username):
        return os.path.join(self.usersDir, username)

    def newStaging(self, username):
        """
        Create a private staging folder for one upload or restore (blocking).

        @return: its path.
        """
        userDir = self.userDir(username)
        staging = os.path.join(userDir, STAGING)
        for path in (self.usersDir, userDir, staging):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                pass
        return tempfile.mkdtemp(dir=staging)

    def manifestPath(self, username, snapshotId):
        return os.path.join(self.userDir(username), MANIFESTS, snapshotId)

    def commit(self, username, tree, meta, manifest, parentDigest=None):
        """
        Make an unpacked tree and its manifest, already flushed to disk with
        L{backup_proto.archive.tree.syncTree}, a snapshot.  Runs on the database
        thread, which serialises id allocation, and checks there that the
        parent, if any, is still the one the tree was built from.

        @param tree: a folder in this user's staging area holding the one
            top-level entry of the snapshot.
        @param meta: the L{SNAPSHOT_FIELDS} but C{id} and C{created}.
        @param manifest: C{(path, digest, entries)} of its manifest, in the
            same staging area.
        @param parentDigest: the digest of the manifest of C{meta}'s
            C{parent} that the tree was built from.
        @raise ParentChanged: the parent's row is gone or names another
            manifest.
        @return: a L{Deferred} with the catalog row as a C{dict}.
        """
        return self.db.run(self._commit, username, tree, meta, manifest, parentDigest)

    def _commit(self, conn, username, tree, meta, manifest, parentDigest):
        with transaction(conn):
            return self._commitIn(conn, username, tree, meta, manifest, parentDigest)

    def _commitIn(self, conn, username, tree, meta, manifest, parentDigest):
        account = catalog.account(conn, username)
        if account is None:
            raise ProtocolError(Code.AUTH_FAILED, "the account was deleted")
        if meta["parent"] is not None:
            found = conn.execute(
                "SELECT manifest FROM snapshots WHERE username = ? AND id = ?",
                (username, meta["parent"]),
            ).fetchone()
            if found is None or found[0] != parentDigest:
                raise ParentChanged("the parent snapshot changed")
        catalog.checkQuota(account, meta["added"])
        now = datetime.datetime.now(datetime.timezone.utc)
        base = snapshotBaseId(meta["source"], now)
        userDir = self.userDir(username)
        snapshotId, n = base, 1
        while (
            os.path.lexists(os.path.join(userDir, snapshotId))
            or conn.execute(
                "SELECT 1 FROM snapshots WHERE username = ? AND id = ?", (username, snapshotId)
            ).fetchone()
        ):
            n += 1
            snapshotId = f"{base}-{n}"
        manifestFile, digest, entries = manifest
        manifests = os.path.join(userDir, MANIFESTS)
        os.makedirs(manifests, mode=0o700, exist_ok=True)
        os.rename(manifestFile, os.path.join(manifests, snapshotId))
        os.chmod(tree, 0o700)
        os.rename(tree, os.path.join(userDir, snapshotId))
        fsyncDir(manifests)
        fsyncDir(userDir)
        created = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        row = {**meta, "id": snapshotId, "created": created}
        values = [row[name] for name in SNAPSHOT_FIELDS]
        conn.execute(
            f"INSERT INTO snapshots (username, {_COLUMNS}, manifest, entries)"
            f" VALUES (?{', ?' * (len(values) + 2)})",
            (username, *values, digest, entries),
        )
        catalog.addUsed(conn, username, meta["added"])
        return {name: row[name] for name in SNAPSHOT_FIELDS}

    def manifestOf(self, username, snapshotId):
        """
        @return: a L{Deferred} with the L{StoredManifest} of one of this
            user's snapshots that has a manifest, else C{None}.
        """
        return self.db.run(self._manifestOf, username, snapshotId)

    def _manifestOf(self, conn, username, snapshotId):
        r = conn.execute(
            f"SELECT {_COLUMNS}, manifest, entries FROM snapshots"
            " WHERE username = ? AND id = ? AND state = ?",
            (username, snapshotId, LIVE),
        ).fetchone()
        if r is None or r[-2] is None:
            return None
        return StoredManifest(_row(r), self.manifestPath(username, snapshotId), r[-2], r[-1])

    def list(self, username):
        """
        @return: a L{Deferred} firing with this user's live snapshots,
            oldest first.
        """
        return self.db.run(catalog.snapshots, username, LIVE, False)

    def snapshotPath(self, username, row):
        """
        @return: the path of the top-level entry of a snapshot.
        """
        return os.path.join(self.userDir(username), row["id"], row["source"])

    def removeSnapshotFiles(self, username, snapshotId):
        """
        Remove a snapshot's folder and manifest (blocking).

        @return: the bytes freed on disk: files no other snapshot links
            (link count 1), and link targets.
        """
        freed = removeTree(os.path.join(self.userDir(username), snapshotId))
        try:
            os.unlink(self.manifestPath(username, snapshotId))
        except FileNotFoundError:
            pass
        return freed

    def countUsed(self, username, snapshotIds):
        """
        Count what snapshots cost on disk, each inode once (blocking).

        @return: bytes of distinct regular files, plus link targets.
        """
        seen = set()
        total = 0
        for snapshotId in snapshotIds:
            for st in _walkStats(os.path.join(self.userDir(username), snapshotId)):
                if stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if key not in seen:
                        seen.add(key)
                        total += st.st_size
                elif stat.S_ISLNK(st.st_mode):
                    total += st.st_size
        return total

    def removeStaging(self, path):
        """
        Remove one staging folder and everything in it (blocking).
        """
        shutil.rmtree(path, ignore_errors=True)

    def recover(self):
        """
        Bring disk and catalog into agreement after a crash (blocking; call
        before serving).  Removes every staging folder, every snapshot folder
        and manifest without a catalog row, and every row without a folder
        (with its manifest).

        Snapshots whose removal was under way (C{purging}) are removed
        now, every pin is dropped (whoever held them is gone), and each
        account a removal touched is counted again from disk.

        @return: C{(stagingRemoved, foldersRemoved, rowsRemoved)}.
        """
        os.makedirs(self.usersDir, mode=0o700, exist_ok=True)
        self.db.runSync(catalog.dropPins)
        recount = set()
        for username, snapshotId in self.db.runSync(catalog.waiting, PURGING):
            self.removeSnapshotFiles(username, snapshotId)
            self.db.runSync(catalog.finishRemoval, username, snapshotId, 0)
            recount.add(username)
        rows = self.db.runSync(
            lambda conn: conn.execute("SELECT username, id FROM snapshots").fetchall()
        )
        known = {(u, i) for u, i in rows}
        staging = folders = 0
        for username in sorted(os.listdir(self.usersDir)):
            userDir = os.path.join(self.usersDir, username)
            if not os.path.isdir(userDir) or os.path.islink(userDir):
                continue
            for entry in sorted(os.listdir(userDir)):
                path = os.path.join(userDir, entry)
                if entry == MANIFESTS:
                    for name in os.listdir(path):
                        if (username, name) not in known:
                            os.unlink(os.path.join(path, name))
                            folders += 1
                elif entry == STAGING:
                    for leftover in os.listdir(path):
                        shutil.rmtree(os.path.join(path, leftover), ignore_errors=True)
                        staging += 1
                elif (username, entry) not in known:
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        os.unlink(path)
                    folders += 1
        gone = [(u, i) for u, i in known if not os.path.isdir(os.path.join(self.usersDir, u, i))]

        def deleteRows(conn):
            for u, i in gone:
                conn.execute("DELETE FROM snapshots WHERE username = ? AND id = ?", (u, i))
                try:
                    os.unlink(self.manifestPath(u, i))
                except FileNotFoundError:
                    pass

        self.db.runSync(deleteRows)
        recount.update(u for u, _i in gone)
        for username in sorted(recount):
            self.recount(username)
        return staging, folders, len(gone)

    def recount(self, username, tries=3):
        """
        Count an account's usage from disk and store it (blocking).  A
        commit or removal during the count changes the usage first; the
        count is then made again.

        @return: the bytes counted, or C{None} if the account is gone or
            kept changing.
        """
        for _ in range(tries):
            found = self.db.runSync(catalog.account, username)
            if found is None:
                return None
            ids = self.db.runSync(
                lambda conn: [
                    r[0]
                    for r in conn.execute(
                        "SELECT id FROM snapshots WHERE username = ?", (username,)
                    )
                ]
            )
            used = self.countUsed(username, ids)
            if self.db.runSync(catalog.setUsed, username, used, found.usageChanges):
                return used
        return None
