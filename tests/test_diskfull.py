"""
A full data disk: the installed server's data folder on a small tmpfs.
The client gets "server storage full" (exit code 7), the partial data is
removed, earlier snapshots stay, and the server keeps serving.

Mounting needs privileges; where the mount is refused these tests are
skipped and the same paths are still covered in-process by
C{tests.test_transfer.UploadTests.test_storageFull} and
L{UnpackFullTests} below.  Since an upload is unpacked as it arrives, a full
disk shows during the transfer itself.
"""

import errno
import json
import os
import subprocess

from tests.helpers import TestCase
from tests.test_crash import waitFor
from tests.test_e2e import EndToEndCase, ServerProcess


class SmallDiskCase(EndToEndCase):
    def setUp(self):
        TestCase.setUp(self)  # not EndToEndCase's: the server starts on the tmpfs below
        self.base = os.path.abspath("e2e")
        self.disk = os.path.join(self.base, "data")
        os.makedirs(self.disk)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", self.disk], capture_output=True
        )
        if result.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: " + result.stderr.decode().strip())
        self.addCleanup(subprocess.run, ["umount", "-l", self.disk])
        self.server = ServerProcess(self.base)
        self.addCleanup(self.server.stop)
        self.tmp = os.path.join(self.base, "clienttmp")
        os.makedirs(self.tmp)
        self.ok("register")
        os.makedirs("keep")
        with open("keep/a", "wb") as f:
            f.write(os.urandom(1 << 20))
        self.kept = self.ok("backup", "keep").stdout.strip().splitlines()[-1]

    def assertRecovered(self):
        staging = os.path.join(self.disk, "users", "alice", ".staging")
        # the server removes staging data when it sees the connection close
        # (in its own time: waitFor's full minute, as a loaded disk is slow)
        waitFor(lambda: os.listdir(staging) == [])
        self.assertEqual(os.listdir(staging), [])
        listed = json.loads(self.ok("list", "--json").stdout)
        self.assertEqual([s["id"] for s in listed], [self.kept])
        self.ok("restore", "back")
        with open("back/keep/a", "rb") as f, open("keep/a", "rb") as g:
            self.assertEqual(f.read(), g.read())
        with open("small", "w") as f:
            f.write("still serving")
        self.ok("backup", "small")

    def test_fullDuringUpload(self):
        """
        An upload bigger than the free space fails with exit code 7.
        """
        with open("huge", "wb") as f:
            f.write(os.urandom(30 << 20))
        result = self.client("backup", "huge")
        self.assertEqual(result.returncode, 7, result.stderr)
        self.assertIn("storage full", result.stderr)
        self.assertRecovered()

    def test_oneCopyOnly(self):
        """
        The upload is unpacked as it arrives, with no copy of the zip: a
        backup of 13 MB fits on the 24 MB disk, and a second one, which
        does not, fails with exit code 7 and keeps the first.
        """
        with open("medium", "wb") as f:
            f.write(os.urandom(13 << 20))
        first = self.ok("backup", "medium").stdout.strip().splitlines()[-1]
        result = self.client("backup", "medium")
        self.assertEqual(result.returncode, 7, result.stderr)
        self.assertIn("storage full", result.stderr)
        self.kept = [self.kept, first]
        staging = os.path.join(self.disk, "users", "alice", ".staging")
        waitFor(lambda: os.listdir(staging) == [])
        self.assertEqual(os.listdir(staging), [])
        listed = json.loads(self.ok("list", "--json").stdout)
        self.assertEqual([s["id"] for s in listed], self.kept)
        self.ok("restore", "back", "--snapshot", first)
        with open("back/medium", "rb") as f, open("medium", "rb") as g:
            self.assertEqual(f.read(), g.read())


class UnpackFullTests(TestCase):
    def test_unpackENOSPC(self):
        """
        ENOSPC while unpacking the arriving zip (simulated) is reported as
        storage-full and the staging data is removed.
        """
        from backup_proto.archive.extract import StreamingExtractor
        from backup_proto.wire.errors import Code
        from tests.helpers import makeFactory
        from tests.test_transfer import makeZip
        from tests.wire import Wire

        def full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(StreamingExtractor, "_output", full)
        factory = makeFactory(os.path.abspath("data"))
        zipPath, data = makeZip()
        wire = Wire(factory).keyed()
        self.assertEqual(wire.backup(data)[1]["code"], Code.STORAGE_FULL)
        wire.proto.connectionLost(None)
        self.assertEqual(os.listdir("data/users/alice/.staging"), [])


class LocalDiskFullTests(EndToEndCase):
    def test_restoreIntoFullDisk(self):
        """
        A restore into a folder on a disk too small for it fails with the
        client's own words and exit code 9 (it once said "server storage
        full", exit 7), leaves nothing in the folder, and the server keeps
        serving.
        """
        small = os.path.abspath("small-disk")
        os.makedirs(small)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", small], capture_output=True
        )
        if result.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: " + result.stderr.decode().strip())
        self.addCleanup(subprocess.run, ["umount", "-l", small])
        self.ok("register")
        with open("big", "wb") as f:
            f.write(os.urandom(8 << 20))
        self.ok("backup", "big")
        result = self.client("restore", small)
        self.assertEqual(result.returncode, 9, result.stderr)
        self.assertTrue(
            result.stderr.strip().splitlines()[-1].startswith("backup-client: local disk full"),
            result.stderr,
        )
        self.assertNotIn("server", result.stderr)
        self.assertEqual(os.listdir(small), [])
        self.ok("list")
