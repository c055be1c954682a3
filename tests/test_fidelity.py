"""
Fidelity: hard links inside a source, owners, and setuid, setgid and
sticky bits, through planning, the zip, unpacking and the manifest
(L{backup_proto.archive.plan}, L{backup_proto.archive.extract},
L{backup_proto.archive.manifest}).

The owner tests need root (the CI machine runs as root): only root can
give a file to another user.
"""

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import zipfile

import pytest
from twisted.trial.unittest import SkipTest

from backup_proto.archive.extract import StreamingExtractor
from backup_proto.archive.format import hardlinkField, ownerFields
from backup_proto.archive.manifest import EntryAttributes, ManifestWriter, readEntries
from backup_proto.archive.plan import ParentFiles, planArchive, planFromManifest
from backup_proto.archive.policy import ArchiveError, Limits
from backup_proto.archive.stream import ArchiveStream
from tests.helpers import TestCase
from tests.test_archive import D, F
from tests.test_e2e import EndToEndCase, command
from tests.test_zipstream import readAll

#: An owner no account on the machine has: restored by its ids.
STRANGER = (4242, 4343)


def makeFaithfulTree(top):
    """
    A tree with two hard-link groups (one of three names across folders,
    one of two), a file linked from outside the tree, and setuid, setgid
    and sticky bits on files and a folder; as root, files of other owners.
    """
    os.makedirs(os.path.join(top, "bin"))
    os.makedirs(os.path.join(top, "lib/deep"))
    os.makedirs(os.path.join(top, "shared"))
    with open(os.path.join(top, "bin/tool"), "wb") as f:
        f.write(b"tool" * 1000)
    os.link(os.path.join(top, "bin/tool"), os.path.join(top, "bin/tool-alias"))
    os.link(os.path.join(top, "bin/tool"), os.path.join(top, "lib/deep/tool"))
    with open(os.path.join(top, "lib/a"), "wb") as f:
        f.write(b"pair")
    os.link(os.path.join(top, "lib/a"), os.path.join(top, "lib/b"))
    with open(os.path.join(top, "lib/alone"), "wb") as f:
        f.write(b"linked from outside")
    os.link(os.path.join(top, "lib/alone"), os.path.join(os.path.dirname(top), "outside"))
    os.chmod(os.path.join(top, "bin/tool"), 0o4755)
    with open(os.path.join(top, "bin/setgid"), "wb") as f:
        f.write(b"g")
    os.chmod(os.path.join(top, "bin/setgid"), 0o2755)
    os.chmod(os.path.join(top, "shared"), 0o1777)
    os.symlink("../bin/tool", os.path.join(top, "lib/link"))
    if os.geteuid() == 0:
        os.chown(os.path.join(top, "lib/a"), *STRANGER)
        os.chown(os.path.join(top, "bin/setgid"), 0, 1)  # chown clears setgid
        os.chmod(os.path.join(top, "bin/setgid"), 0o2755)
        os.chown(os.path.join(top, "shared"), 1, 1)
        os.chmod(os.path.join(top, "shared"), 0o1777)
        os.chown(os.path.join(top, "lib/link"), *STRANGER, follow_symlinks=False)
    return top


def unpack(data, dest, ownership, recorder=None, limits=None):
    os.mkdir(dest)
    extractor = StreamingExtractor(dest, limits, recorder=recorder, ownership=ownership)
    try:
        extractor.write(data)
        extractor.finish()
    finally:
        extractor.close()
    return extractor


def inode(path):
    return os.lstat(path).st_ino


class HardLinkTests(TestCase):
    def setUp(self):
        self.src = makeFaithfulTree(os.path.abspath("src"))

    def test_planned(self):
        """
        A group's first file in the zip carries the data; the others are
        empty entries naming it; a file whose other link is outside the
        tree is an ordinary file.
        """
        plan = planArchive(self.src)
        byName = {e.name.decode(): e for e in plan.entries}
        self.assertEqual(byName["src/bin/tool"].link, b"src/bin/tool")
        self.assertEqual(byName["src/bin/tool"].usize, 4000)
        for member in ("src/bin/tool-alias", "src/lib/deep/tool"):
            self.assertEqual((byName[member].link, byName[member].usize), (b"src/bin/tool", 0))
        self.assertEqual(byName["src/lib/b"].link, b"src/lib/a")
        self.assertIsNone(byName["src/lib/alone"].link)
        self.assertEqual(plan.report.hardlinks, 3)
        self.assertEqual(plan.report.size, 4000 + 4 + 19 + 1)

    def test_roundTrip(self):
        """
        Unpacked, each group is one inode again, with its content; the
        manifest names each file's group by its first path.
        """
        data = readAll(ArchiveStream(planArchive(self.src)))
        recorder = ManifestWriter("m")
        unpack(data, "out", ownership=False, recorder=recorder)
        digest = recorder.close()
        out = os.path.abspath("out/src")
        self.assertEqual(
            {
                inode(f"{out}/bin/tool"),
                inode(f"{out}/bin/tool-alias"),
                inode(f"{out}/lib/deep/tool"),
            },
            {inode(f"{out}/bin/tool")},
        )
        self.assertEqual(inode(f"{out}/lib/a"), inode(f"{out}/lib/b"))
        self.assertNotEqual(inode(f"{out}/lib/a"), inode(f"{out}/bin/tool"))
        self.assertEqual(os.stat(f"{out}/lib/alone").st_nlink, 1)
        with open(f"{out}/lib/deep/tool", "rb") as f:
            self.assertEqual(f.read(), b"tool" * 1000)
        entries = {e[0]: e for _l, e in readEntries("m", digest)}
        self.assertEqual(entries["src/lib/deep/tool"][8], "src/bin/tool")
        self.assertEqual(entries["src/bin/tool"][8], "src/bin/tool")
        self.assertEqual(entries["src/lib/deep/tool"][2], 4000)  # the file's size
        self.assertEqual(entries["src/lib/deep/tool"][6], entries["src/bin/tool"][6])
        self.assertIsNone(entries["src/lib/alone"][8])

    def test_restorePlans(self):
        """
        A restore planned from the manifest, whole or in part, or from the
        stored files with the manifest's attributes, groups files as the
        manifest does; a partial restore without a group's first file
        makes its first chosen one carry the data.
        """
        data = readAll(ArchiveStream(planArchive(self.src)))
        recorder = ManifestWriter("m")
        unpack(data, "stored", ownership=False, recorder=recorder)
        digest = recorder.close()
        entries = [e for _l, e in readEntries("m", digest)]
        stored = os.path.abspath("stored/src")

        def groups(plan):
            return {e.name.decode(): e.link and e.link.decode() for e in plan.entries if e.link}

        whole = planFromManifest(stored, "src", entries)
        withAttributes = planArchive(
            stored, compression="auto", attributes=EntryAttributes.fromManifest("m", digest)
        )
        for plan in (whole, withAttributes):
            self.assertEqual(
                groups(plan),
                {
                    "src/bin/tool": "src/bin/tool",
                    "src/bin/tool-alias": "src/bin/tool",
                    "src/lib/deep/tool": "src/bin/tool",
                    "src/lib/a": "src/lib/a",
                    "src/lib/b": "src/lib/a",
                },
            )
        part = planFromManifest(
            stored,
            "src",
            [
                e
                for e in entries
                if e[0]
                in (
                    "src",
                    "src/lib",
                    "src/lib/deep",
                    "src/lib/deep/tool",
                    "src/bin",
                    "src/bin/tool-alias",
                )
            ],
        )
        self.assertEqual(
            groups(part),
            {"src/bin/tool-alias": "src/bin/tool-alias", "src/lib/deep/tool": "src/bin/tool-alias"},
        )
        unpack(readAll(ArchiveStream(part)), "part", ownership=False)
        self.assertEqual(inode("part/src/bin/tool-alias"), inode("part/src/lib/deep/tool"))
        with open("part/src/lib/deep/tool", "rb") as f:
            self.assertEqual(f.read(), b"tool" * 1000)

    def test_incrementalKeepsWholeGroups(self):
        """
        An incremental backup keeps a hard-link group only whole and
        grouped as before: a new link to an unchanged file sends the
        whole group again (a zip's member cannot name a kept file).
        """
        data = readAll(ArchiveStream(planArchive(self.src)))
        recorder = ManifestWriter("m")
        unpack(data, "stored", ownership=False, recorder=recorder)
        digest = recorder.close()

        def parent():
            files = ParentFiles("src-1")
            for _line, entry in readEntries("m", digest):
                files.add(entry)
            return files

        plan = planArchive(self.src, parent=parent())
        self.assertEqual(plan.report.filesUnchanged, 7)
        self.assertEqual([e.name for e in plan.entries if e.content is None], [])
        os.link(f"{self.src}/lib/a", f"{self.src}/lib/c")
        plan = planArchive(self.src, parent=parent())
        sent = {e.name.decode(): e.link for e in plan.entries if e.link}
        self.assertEqual(
            sent, {"src/lib/a": b"src/lib/a", "src/lib/b": b"src/lib/a", "src/lib/c": b"src/lib/a"}
        )
        self.assertEqual((plan.report.filesNew, plan.report.filesChanged), (1, 2))
        self.assertEqual(plan.report.filesUnchanged, 5)


def hostile(path, entries):
    """
    A zip of C{(name, data, mode, extra)}: C{extra} in both headers.
    """
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode, extra in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            info.extra = extra
            zf.writestr(info, data)
    with open(path, "rb") as f:
        return f.read()


class HostileLinkTests(TestCase):
    """
    A zip cannot use a hard-link field to reach a file it did not send
    before, to link a folder, or to smuggle data.
    """

    def refused(self, entries, limits=None):
        data = hostile("h.zip", entries)
        with self.assertRaises(ArchiveError) as caught:
            unpack(data, "out", ownership=False, limits=limits)
        return str(caught.exception)

    def test_unknownFirst(self):
        message = self.refused(
            [("x/", b"", D, b""), ("x/a", b"", F, hardlinkField(b"x/../../etc/passwd"))]
        )
        self.assertIn("is not an earlier file of its group", message)

    def test_laterFirst(self):
        self.refused(
            [
                ("x/", b"", D, b""),
                ("x/a", b"", F, hardlinkField(b"x/b")),
                ("x/b", b"data", F, hardlinkField(b"x/b")),
            ]
        )

    def test_notMarkedFirst(self):
        """
        A member may only name a file that named itself first of a group.
        """
        self.refused(
            [("x/", b"", D, b""), ("x/b", b"data", F, b""), ("x/a", b"", F, hardlinkField(b"x/b"))]
        )

    def test_memberWithData(self):
        self.refused(
            [
                ("x/", b"", D, b""),
                ("x/b", b"data", F, hardlinkField(b"x/b")),
                ("x/a", b"more", F, hardlinkField(b"x/b")),
            ]
        )

    def test_folder(self):
        message = self.refused([("x/", b"", D, hardlinkField(b"x"))])
        self.assertIn("not a file", message)

    def test_tooManyGroups(self):
        entries = [("x/", b"", D, b"")] + [
            (f"x/{i}", b"d", F, hardlinkField(f"x/{i}".encode())) for i in range(3)
        ]
        message = self.refused(entries, Limits(maxLinkGroups=2))
        self.assertIn("more than 2 hard-link groups", message)

    def test_memberLinked(self):
        """
        The honest form, written by another zip maker, is accepted.
        """
        data = hostile(
            "h.zip",
            [
                ("x/", b"", D, b""),
                ("x/b", b"data", F, hardlinkField(b"x/b")),
                ("x/a", b"", F, hardlinkField(b"x/b")),
            ],
        )
        unpack(data, "out", ownership=False)
        self.assertEqual(inode("out/x/a"), inode("out/x/b"))


class OwnerAndModeTests(TestCase):
    def setUp(self):
        self.src = makeFaithfulTree(os.path.abspath("src"))
        self.data = readAll(ArchiveStream(planArchive(self.src)))

    def test_recorded(self):
        """
        The manifest records each entry's owner (ids and names) and its
        whole mode, setuid, setgid and sticky bits included.
        """
        recorder = ManifestWriter("m")
        unpack(self.data, "stored", ownership=False, recorder=recorder)
        entries = {e[0]: e for _l, e in readEntries("m", recorder.close())}
        for path, entry in entries.items():
            st = os.lstat(os.path.join(os.path.dirname(self.src), path))
            self.assertEqual(entry[4], stat.S_IMODE(st.st_mode), path)
            self.assertEqual(entry[7][:2], (st.st_uid, st.st_gid), path)
        self.assertEqual(entries["src/bin/tool"][4], 0o4755)
        self.assertEqual(entries["src/shared"][4], 0o1777)
        self.assertEqual(entries["src/bin"][7][2], pwd.getpwuid(os.geteuid()).pw_name)

    def test_serverCopyStripped(self):
        """
        Unpacked without C{ownership} (the server's copy, a restore by
        another user): no setuid, setgid or sticky bit, no owner given;
        the bits dropped are counted.
        """
        extractor = unpack(self.data, "out", ownership=False)
        out = os.path.abspath("out/src")
        for dirpath, dirs, files in os.walk(out):
            for name in dirs + files:
                st = os.lstat(os.path.join(dirpath, name))
                self.assertEqual(st.st_mode & 0o7000, 0, name)
                if not stat.S_ISLNK(st.st_mode):
                    self.assertEqual(st.st_uid, os.geteuid(), name)
        self.assertEqual(os.stat(f"{out}/bin/tool").st_mode & 0o777, 0o755)
        # the three names of tool, setgid, shared
        self.assertEqual(extractor.droppedSpecial, 5)

    def test_restoredAsRoot(self):
        """
        With C{ownership} (a restore by root): owners, by name where the
        name is known here, else by id, and every special bit.
        """
        if os.geteuid() != 0:
            raise SkipTest("only root can give files to other owners")
        extractor = unpack(self.data, "out", ownership=True)
        self.assertEqual(extractor.droppedSpecial, 0)
        src, out = self.src, os.path.abspath("out/src")
        for dirpath, dirs, files in os.walk(src):
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                a = os.lstat(path)
                b = os.lstat(out + path[len(src) :])
                self.assertEqual((a.st_uid, a.st_gid), (b.st_uid, b.st_gid), path)
                self.assertEqual(stat.S_IMODE(a.st_mode), stat.S_IMODE(b.st_mode), path)
        self.assertEqual(os.lstat(f"{out}/lib/a")[4:6], STRANGER)
        self.assertEqual(os.stat(f"{out}/bin/setgid").st_mode & 0o7777, 0o2755)

    def test_namesBeforeIds(self):
        """
        As tar does, a recorded name known here wins over its recorded id.
        """
        if os.geteuid() != 0:
            raise SkipTest("only root can give files to other owners")
        data = hostile(
            "n.zip",
            [("f", b"x", F, ownerFields(12345, 12345, "root", "no-such-group-here", lookUp=False))],
        )
        unpack(data, "out", ownership=True)
        self.assertEqual(os.lstat("out/f")[4:6], (0, 12345))


#: The unprivileged user a restore runs as (nobody's ids).
NOBODY = 65534


@pytest.mark.slow
class FidelityEndToEndTests(EndToEndCase):
    """
    Through the installed commands: a root client's backup and restore
    keep hard links, owners and special bits; a restore by another user
    keeps the links, drops the bits and says so; the server's own copy
    never has them.
    """

    def setUp(self):
        if os.geteuid() != 0:
            raise SkipTest("only root can give files to other owners")
        super().setUp()

    def test_roundTrip(self):
        src = makeFaithfulTree(os.path.abspath("src"))
        self.ok("register")
        snapshot = self.ok("backup", "src").stdout.strip()
        long = self.ok("ls", snapshot, "--long").stdout
        self.assertRegex(long, r"-rwsr-xr-x root/root +4000 \S+  src/bin/tool\n")
        self.assertRegex(long, r"src/lib/deep/tool link to src/bin/tool\n")
        self.assertRegex(long, r"-rw-r--r-- 4242/4343 +4 \S+  src/lib/a\n")
        self.assertRegex(long, r"drwxrwxrwt \S+/\S+ +0 \S+  src/shared\n")
        stored = os.path.join(self.server.dataDir, "users", "alice")
        for dirpath, dirs, files in os.walk(stored):
            for name in dirs + files:
                st = os.lstat(os.path.join(dirpath, name))
                self.assertEqual(st.st_mode & 0o7000, 0, name)
                self.assertEqual(st.st_uid, 0, name)

        self.ok("restore", "asroot")
        out = os.path.abspath("asroot/src")
        for dirpath, dirs, files in os.walk(src):
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                a, b = os.lstat(path), os.lstat(out + path[len(src) :])
                linked = a.st_nlink > 1 and name != "alone"  # its other link is outside
                self.assertEqual(
                    (a.st_uid, a.st_gid, stat.S_IMODE(a.st_mode), linked),
                    (b.st_uid, b.st_gid, stat.S_IMODE(b.st_mode), b.st_nlink > 1),
                    path,
                )
        self.assertEqual(inode(f"{out}/bin/tool"), inode(f"{out}/lib/deep/tool"))
        self.assertEqual(inode(f"{out}/lib/a"), inode(f"{out}/lib/b"))

        # a user's restore, in a home of its own (the test's folders are
        # private to root), with a copy of the CA
        home = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, home)
        for name in ("tmp", "config", "dest"):
            os.mkdir(os.path.join(home, name))
        shutil.copy(os.path.join(self.base, "certs", "ca.pem"), home)
        for dirpath, dirs, files in os.walk(home):
            for name in [dirpath] + [os.path.join(dirpath, n) for n in dirs + files]:
                os.chown(name, NOBODY, NOBODY)
        env = self.clientEnv(ca=os.path.join(home, "ca.pem"))
        env.update(HOME=home, TMPDIR=f"{home}/tmp", BACKUP_CONFIG_DIR=f"{home}/config")
        result = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            + [command("backup-client"), "restore", f"{home}/dest"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(
            "dropped the setuid, setgid or sticky bits of 5 entries"
            " (only a restore as root keeps them)",
            result.stderr,
        )
        out = f"{home}/dest/src"
        self.assertEqual(inode(f"{out}/bin/tool"), inode(f"{out}/bin/tool-alias"))
        self.assertEqual(os.stat(f"{out}/bin/tool").st_mode & 0o7777, 0o755)
        self.assertEqual(os.stat(f"{out}/shared").st_mode & 0o7777, 0o777)
        self.assertEqual(os.lstat(f"{out}/lib/a").st_uid, NOBODY)
