"""
SIGKILL at any moment: the installed server is killed mid-upload,
mid-unpack and mid-restore, restarted, and must have cleaned its staging
area while keeping every completed snapshot listed and restorable.
"""

import json
import os
import signal
import time

from tests.helpers import treeSignature
from tests.test_e2e import EndToEndCase


def waitFor(predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


class CrashTests(EndToEndCase):
    def setUp(self):
        super().setUp()
        self.ok("register")
        os.makedirs("keep/sub")
        with open("keep/sub/file", "wb") as f:
            f.write(os.urandom(100_000))
        self.kept = self.ok("backup", "keep").stdout.strip().splitlines()[-1]
        self.staging = os.path.join(self.server.dataDir, "users", "alice", ".staging")

    def startClient(self, *args):
        return self.spawnClient(*args)

    def stagingHas(self, predicate):
        try:
            jobs = os.listdir(self.staging)
        except FileNotFoundError:
            return False
        for job in jobs:
            try:
                names = os.listdir(os.path.join(self.staging, job))
            except FileNotFoundError:
                continue
            if predicate(os.path.join(self.staging, job), names):
                return True
        return False

    def killAndRestart(self, client):
        self.server.stop(signal.SIGKILL)
        client.wait(60)
        self.assertNotEqual(client.returncode, 0)
        self.assertNotIn(b"Traceback", client.stderr.read())
        self.server.start()

    def assertIntact(self):
        self.assertEqual(os.listdir(self.staging), [])
        listed = json.loads(self.ok("list", "--json").stdout)
        self.assertEqual([s["id"] for s in listed], [self.kept])
        userDir = os.path.join(self.server.dataDir, "users", "alice")
        self.assertEqual(sorted(os.listdir(userDir)), [".manifests", ".staging", self.kept])
        # no manifest of the upload that was cut short
        self.assertEqual(os.listdir(os.path.join(userDir, ".manifests")), [self.kept])
        self.ok("restore", "restored", "--snapshot", self.kept)
        self.assertEqual(treeSignature("keep"), treeSignature("restored/keep"))

    def test_killDuringUpload(self):
        """
        Killed while receiving a 300 MB upload.
        """
        os.makedirs("big")
        with open("big/data", "wb") as f:
            for _ in range(300):
                f.write(os.urandom(1 << 20))
        client = self.startClient("backup", "big")

        def uploading(path, names):
            # the upload is unpacked as it arrives
            try:
                return os.path.getsize(os.path.join(path, "tree-1", "big", "data")) > 1 << 20
            except OSError:
                return False

        self.assertTrue(waitFor(lambda: self.stagingHas(uploading)), "upload never started")
        self.killAndRestart(client)
        self.assertIntact()

    def test_killDuringUnpack(self):
        """
        Killed while unpacking a tree of many files into staging.
        """
        for d in range(40):
            os.makedirs(f"many/d{d}")
            for i in range(250):
                with open(f"many/d{d}/f{i}", "wb") as f:
                    f.write(b"x" * 100)
        client = self.startClient("backup", "many")

        def unpacking(path, names):
            tree = os.path.join(path, "tree-1", "many")
            try:
                return len(os.listdir(tree)) >= 2
            except FileNotFoundError:
                return False

        self.assertTrue(waitFor(lambda: self.stagingHas(unpacking)), "unpack never seen")
        self.killAndRestart(client)
        self.assertIntact()

    def test_killDuringRestore(self):
        """
        Killed while sending a restore.
        """
        os.makedirs("big")
        with open("big/data", "wb") as f:
            for _ in range(200):
                f.write(os.urandom(1 << 20))
        big = self.ok("backup", "big", "--compression", "store").stdout.strip().splitlines()[-1]
        client = self.startClient("restore", "out", "--snapshot", big)

        def receiving():
            # the client unpacks what arrives into a hidden folder in DEST
            for root, _dirs, files in os.walk("out"):
                for n in files:
                    try:
                        if os.path.getsize(os.path.join(root, n)) > 1 << 20:
                            return True
                    except OSError:
                        pass
            return False

        self.assertTrue(waitFor(receiving), "restore never started")
        self.killAndRestart(client)
        self.assertEqual(os.listdir(self.staging), [])
        listed = json.loads(self.ok("list", "--json").stdout)
        self.assertEqual([s["id"] for s in listed], [self.kept, big])
        # the client removed its partial data, and the DEST folder it made
        self.assertFalse(os.path.lexists("out"))
        self.ok("restore", "out", "--snapshot", big)
        self.assertEqual(os.path.getsize("out/big/data"), 200 << 20)
