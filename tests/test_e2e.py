"""
End to end through the installed commands: C{twistd backup-server} in a
subprocess, driven by C{backup-client}.
"""

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time

import pytest

from tests.helpers import TestCase, makeTrickyTree, treeSignature

BIN = os.path.dirname(sys.executable)


def command(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        raise RuntimeError(f"{name} is not installed next to {sys.executable}")
    return path


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """
    A C{twistd -n backup-server} child process on a free port.
    """

    def __init__(self, base, *extra):
        self.base = base
        self.port = freePort()
        self.dataDir = os.path.join(base, "data")
        subprocess.run(
            [command("backup-certs"), "--dir", os.path.join(base, "certs")],
            check=True,
            capture_output=True,
        )
        certs = os.path.join(base, "certs")
        self.argv = [
            command("twistd"),
            "-n",
            "--pidfile=",
            "backup-server",
            "--data-dir",
            self.dataDir,
            "--pbkdf2-iterations",
            "1000",
            "--listen",
            f"ssl:{self.port}:interface=127.0.0.1:privateKey={certs}/server.key"
            f":certKey={certs}/server.pem",
            *extra,
        ]
        self.start()

    def start(self):
        with open(os.path.join(self.base, "server.log"), "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.base
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.logText()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def logText(self):
        with open(os.path.join(self.base, "server.log"), "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self, signal=None):
        if self.process.poll() is None:
            if signal is None:
                self.process.terminate()
            else:
                self.process.send_signal(signal)
            self.process.wait(30)


@pytest.mark.slow
class EndToEndCase(TestCase):
    serverArgs = ()

    def setUp(self):
        super().setUp()
        self.base = os.path.abspath("e2e")
        os.makedirs(self.base)
        self.server = ServerProcess(self.base, *self.serverArgs)
        self.addCleanup(self.server.stop)
        self.tmp = os.path.join(self.base, "clienttmp")
        os.makedirs(self.tmp)

    def clientEnv(self, user="alice", password="pw", ca=None, server=None):
        """
        @return: the environment the client runs with: this server, its CA,
            an account, and its own config and temporary folders.
        """
        env = dict(os.environ)
        env.update(
            {
                "BACKUP_SERVER": server or f"localhost:{self.server.port}",
                "BACKUP_CA": ca or os.path.join(self.base, "certs", "ca.pem"),
                "BACKUP_USER": user,
                "BACKUP_PASSWORD": password,
                "BACKUP_CONFIG_DIR": os.path.join(self.base, "config"),
                "TMPDIR": self.tmp,
            }
        )
        return env

    def spawnClient(self, *args, **popen):
        """
        @return: the installed client running C{args}, as a L{subprocess.Popen}.
        """
        return subprocess.Popen(
            [command("backup-client"), *args],
            env=self.clientEnv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            **popen,
        )

    def client(self, *args, user="alice", password="pw", ca=None, server=None, stdin=None):
        env = self.clientEnv(user, password, ca, server)
        result = subprocess.run(
            [command("backup-client"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        self.assertNotIn("Traceback", result.stderr)
        return result

    def makeBigSource(self, path="src"):
        """
        A folder holding one file of 160 MiB of random bytes: a backup or
        restore of it lasts long enough to be caught under way.
        """
        os.makedirs(path)
        with open(os.path.join(path, "big"), "wb") as f:
            for _ in range(40):
                f.write(os.urandom(4 << 20))

    def waitForServerLog(self, text, seconds=60):
        """
        Wait until the server's log holds C{text} (polled, not slept on).
        """
        deadline = time.monotonic() + seconds
        while text not in self.server.logText():
            self.assertLess(time.monotonic(), deadline, f"{text!r} never logged")
            time.sleep(0.002)

    def ok(self, *args, **kw):
        result = self.client(*args, **kw)
        self.assertEqual(result.returncode, 0, result.stderr + self.server.logText()[-3000:])
        return result


class AccountTests(EndToEndCase):
    def test_accounts(self):
        """
        register and list work; refusals exit 3 with one-line errors; an
        unknown user gets the same message as a wrong password.
        """
        self.assertEqual(self.ok("register").stdout.strip(), "registered alice")
        self.assertEqual(self.ok("list").stdout.strip(), "no snapshots")
        self.assertEqual(json.loads(self.ok("list", "--json").stdout), [])
        wrong = self.client("list", password="nope")
        unknown = self.client("list", user="nobody")
        self.assertEqual((wrong.returncode, unknown.returncode), (3, 3))
        self.assertEqual(wrong.stderr, unknown.stderr)
        self.assertEqual(len(wrong.stderr.strip().splitlines()), 1)
        self.assertEqual(self.client("register").returncode, 3)
        self.assertEqual(self.client("register", user="../x").returncode, 3)
        self.assertEqual(self.client("register", user="Bad Name").returncode, 3)

    def test_untrusted(self):
        """
        An untrusted CA and a closed port exit 4; a bundle holding the right
        CA among others is trusted.
        """
        subprocess.run([command("backup-certs"), "--dir", "other"], check=True, capture_output=True)
        bad = self.client("list", ca=os.path.abspath("other/ca.pem"))
        self.assertEqual(bad.returncode, 4, bad.stderr)
        self.assertIn("not trusted", bad.stderr)
        with (
            open("other/ca.pem", "rb") as f,
            open(os.path.join(self.base, "certs", "ca.pem"), "rb") as g,
        ):
            bundle = f.read() + g.read()
        with open("bundle.pem", "wb") as f:
            f.write(bundle)
        self.ok("register", ca=os.path.abspath("bundle.pem"))
        closed = self.client("list", server=f"localhost:{freePort()}")
        self.assertEqual(closed.returncode, 4, closed.stderr)

    def test_silentServer(self):
        """
        A server that accepts the connection but never answers (not even the
        TLS handshake) makes the client exit 4 instead of hanging.
        """
        import backup_client.connecting as connecting

        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(5)
            port = silent.getsockname()[1]
            env = dict(
                os.environ,
                BACKUP_SERVER=f"localhost:{port}",
                BACKUP_CA=os.path.join(self.base, "certs", "ca.pem"),
                BACKUP_USER="alice",
                BACKUP_PASSWORD="pw",
                BACKUP_CONFIG_DIR=os.path.join(self.base, "config"),
            )
            code = (
                "import backup_client.cli as c, backup_client.connecting as k;"
                " k.ANSWER_TIMEOUT = 2; c.run(['list'])"
            )
            result = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
            )
        self.assertEqual(result.returncode, 4, result.stderr)
        self.assertIn("no answer", result.stderr)
        self.assertEqual(connecting.ANSWER_TIMEOUT, 90)

    def test_usage(self):
        """
        Usage errors exit 2; no password and no terminal exit 2.
        """
        self.assertEqual(self.client("bogus").returncode, 2)
        self.assertEqual(self.client("restore").returncode, 2)
        env = {k: v for k, v in os.environ.items() if k != "BACKUP_PASSWORD"}
        result = subprocess.run(
            [command("backup-client"), "--user", "alice", "--ca", "x", "list"],
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(result.returncode, 2)
        self.assertIn("password", result.stderr)

    def test_tls12Refused(self):
        """
        A client that speaks at most TLS 1.2 cannot connect.
        """
        context = ssl.create_default_context(cafile=os.path.join(self.base, "certs", "ca.pem"))
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", self.server.port)) as raw:
            with self.assertRaises(ssl.SSLError):
                context.wrap_socket(raw, server_hostname="localhost")
        context = ssl.create_default_context(cafile=os.path.join(self.base, "certs", "ca.pem"))
        with socket.create_connection(("127.0.0.1", self.server.port)) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                self.assertEqual(tls.version(), "TLSv1.3")


class BackupRestoreTests(EndToEndCase):
    def test_roundTrip(self):
        """
        A tricky tree backs up (the snapshot id is the last line), lands on
        the server identical to the source, is listed, restores identical,
        and no zip is left on either side.
        """
        self.ok("register")
        src = makeTrickyTree(os.path.abspath("photos"))
        result = self.ok("backup", src)
        snapshotId = result.stdout.strip().splitlines()[-1]
        self.assertTrue(snapshotId.startswith("photos-"))
        stored = os.path.join(self.server.dataDir, "users", "alice", snapshotId, "photos")
        self.assertEqual(treeSignature(src), treeSignature(stored))
        listed = json.loads(self.ok("list", "--json").stdout)
        self.assertEqual([s["id"] for s in listed], [snapshotId])
        self.assertEqual(listed[0]["source"], "photos")
        self.assertEqual(listed[0]["files"], 7)
        self.assertTrue(listed[0]["created"].endswith("Z"))
        restored = json.loads(self.ok("restore", "out", "--json").stdout)
        self.assertEqual(restored["snapshot"], snapshotId)
        self.assertEqual(restored["path"], os.path.abspath("out/photos"))
        self.assertEqual(treeSignature(src), treeSignature("out/photos"))
        self.assertEqual(os.listdir(self.tmp), [])
        self.assertEqual(
            os.listdir(os.path.join(self.server.dataDir, "users", "alice", ".staging")), []
        )

    def test_backupJson(self):
        """
        C{backup --json} prints one JSON object: the snapshot's id, no
        parent, every file new, the zip's bytes sent and the tree's bytes
        stored, which agree with the listing.
        """
        self.ok("register")
        src = makeTrickyTree(os.path.abspath("photos"))
        result = json.loads(self.ok("backup", src, "--json").stdout)
        [listed] = json.loads(self.ok("list", "--json").stdout)
        self.assertEqual(result["id"], listed["id"])
        self.assertEqual(result["snapshot"], listed)
        self.assertIsNone(result["parent"])
        self.assertEqual(
            [result[k] for k in ("files_new", "files_changed", "files_unchanged", "files_deleted")],
            [7, 0, 0, 0],
        )
        self.assertEqual(result["bytes_sent"], listed["zip_size"])
        self.assertEqual(result["bytes_stored"], listed["size"])

    def test_overwrite(self):
        """
        restore into a folder that holds a file of the same name refuses
        and leaves it untouched; --overwrite replaces it.
        """
        self.ok("register")
        with open("notes.txt", "w") as f:
            f.write("version 1")
        self.ok("backup", "notes.txt")
        os.makedirs("dest")
        with open("dest/notes.txt", "w") as f:
            f.write("local edits")
        refused = self.client("restore", "dest")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("notes.txt", refused.stderr)
        with open("dest/notes.txt") as f:
            self.assertEqual(f.read(), "local edits")
        self.ok("restore", "dest", "--overwrite")
        with open("dest/notes.txt") as f:
            self.assertEqual(f.read(), "version 1")
        self.assertEqual(os.listdir("dest"), ["notes.txt"])

    def test_singleFileAndSnapshots(self):
        """
        Two backups make two snapshots; --snapshot picks an older one; a
        single file restores as DEST/name with its mode and time.
        """
        self.ok("register")
        with open("a.sh", "w") as f:
            f.write("one")
        os.chmod("a.sh", 0o750)
        os.utime("a.sh", (1_650_000_000, 1_650_000_000))
        first = self.ok("backup", "a.sh").stdout.strip().splitlines()[-1]
        with open("a.sh", "w") as f:
            f.write("two")
        second = self.ok("backup", "a.sh").stdout.strip().splitlines()[-1]
        self.assertNotEqual(first, second)
        self.ok("restore", "old", "--snapshot", first)
        with open("old/a.sh") as f:
            self.assertEqual(f.read(), "one")
        st = os.stat("old/a.sh")
        self.assertEqual((st.st_mode & 0o777, int(st.st_mtime)), (0o750, 1_650_000_000))
        self.ok("restore", "new")
        with open("new/a.sh") as f:
            self.assertEqual(f.read(), "two")

    def test_isolation(self):
        """
        Another user sees none of alice's snapshots and cannot restore one:
        the answer is the same as for an id that does not exist.
        """
        self.ok("register")
        os.makedirs("docs")
        with open("docs/x", "w") as f:
            f.write("secret")
        snapshotId = self.ok("backup", "docs").stdout.strip().splitlines()[-1]
        self.ok("register", user="bob")
        self.assertEqual(json.loads(self.ok("list", "--json", user="bob").stdout), [])
        theirs = self.client("restore", "b", "--snapshot", snapshotId, user="bob")
        missing = self.client("restore", "b", "--snapshot", "docs-20000101T000000Z", user="bob")
        self.assertEqual(
            (theirs.returncode, theirs.stderr.replace(snapshotId, "ID")),
            (missing.returncode, missing.stderr.replace("docs-20000101T000000Z", "ID")),
        )
        self.assertIn("no such snapshot: ID", missing.stderr.replace("docs-20000101T000000Z", "ID"))
        self.assertNotEqual(theirs.returncode, 0)
        self.assertFalse(os.path.lexists("b"))  # not even the DEST folder

    def test_warnings(self):
        """
        Special files are skipped with a warning, the rest is stored, and
        the exit code is 6.
        """
        self.ok("register")
        os.makedirs("tree")
        os.mkfifo("tree/fifo")
        with open("tree/file", "w") as f:
            f.write("kept")
        result = self.client("backup", "tree")
        self.assertEqual(result.returncode, 6, result.stderr)
        self.assertIn("fifo", result.stderr)
        snapshotId = result.stdout.strip().splitlines()[-1]
        stored = os.path.join(self.server.dataDir, "users", "alice", snapshotId, "tree")
        self.assertEqual(os.listdir(stored), ["file"])

    def test_concurrentBackupsSameUser(self):
        """
        Three backups of one folder by one user at the same time each get
        their own snapshot (ids in the same second get a suffix), and each
        holds the whole tree.
        """
        self.ok("register")
        os.makedirs("docs")
        with open("docs/data", "wb") as f:
            f.write(os.urandom(3 << 20))
        env = dict(
            os.environ,
            BACKUP_SERVER=f"localhost:{self.server.port}",
            BACKUP_CA=os.path.join(self.base, "certs", "ca.pem"),
            BACKUP_USER="alice",
            BACKUP_PASSWORD="pw",
            BACKUP_CONFIG_DIR=os.path.join(self.base, "config"),
            TMPDIR=self.tmp,
        )
        procs = [
            subprocess.Popen(
                [command("backup-client"), "backup", "docs"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            for _ in range(3)
        ]
        ids = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, err)
            ids.append(out.strip().splitlines()[-1])
        self.assertEqual(len(set(ids)), 3)
        listed = json.loads(self.ok("list", "--json").stdout)
        self.assertEqual(sorted(s["id"] for s in listed), sorted(ids))
        for snapshotId in ids:
            stored = os.path.join(self.server.dataDir, "users", "alice", snapshotId, "docs")
            self.assertEqual(treeSignature(stored), treeSignature("docs"))

    def test_progressOnTerminal(self):
        """
        On a terminal the client draws a progress bar (bytes, rate) for
        sending (the zip is made as it is sent); --quiet draws none.
        """
        import fcntl
        import pty
        import struct
        import termios

        self.ok("register")
        with open("blob", "wb") as f:
            f.write(os.urandom(4 << 20))

        def stderrOnTerminal(*args):
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
            env = dict(
                os.environ,
                BACKUP_SERVER=f"localhost:{self.server.port}",
                BACKUP_CA=os.path.join(self.base, "certs", "ca.pem"),
                BACKUP_USER="alice",
                BACKUP_PASSWORD="pw",
                BACKUP_CONFIG_DIR=os.path.join(self.base, "config"),
                COLUMNS="100",
            )
            proc = subprocess.Popen(
                [command("backup-client"), *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=slave,
                stdin=subprocess.DEVNULL,
            )
            os.close(slave)
            chunks = []
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            proc.wait(60)
            os.close(master)
            self.assertEqual(proc.returncode, 0)
            return b"".join(chunks).decode("utf-8", "replace")

        shown = stderrOnTerminal("backup", "blob")
        self.assertIn("send blob", shown)
        self.assertIn("B/s", shown)
        self.assertEqual(stderrOnTerminal("--quiet", "backup", "blob"), "")

    def test_missingPath(self):
        """
        Backing up a path that does not exist is a usage error.
        """
        self.ok("register")
        result = self.client("backup", "no/such/thing")
        self.assertEqual(result.returncode, 2)
        self.assertIn("no such file", result.stderr)


def _write(path, data, mtimeNs=None, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)
    if mtimeNs is not None:
        os.utime(path, ns=(mtimeNs, mtimeNs))


class IncrementalTests(EndToEndCase):
    """
    Incremental backups through the installed commands: only what changed
    is sent, and parent and child both restore exactly.
    """

    T = 1_700_000_000_123_456_789  # a time with nanoseconds

    def makeSource(self):
        src = makeTrickyTree(os.path.abspath("photos"))
        _write(f"{src}/keep.txt", "kept as it is\n" * 100, self.T)
        _write(f"{src}/grow.txt", "grows\n", self.T)
        _write(f"{src}/same.txt", "aaaa", self.T)
        _write(f"{src}/gone.txt", "deleted later", self.T)
        _write(f"{src}/mode.sh", "#!/bin/sh\n", self.T, 0o644)
        _write(f"{src}/t1", "a file that becomes a folder", self.T)
        _write(f"{src}/t2/in folder.txt", "a folder that becomes a link", self.T)
        os.symlink("keep.txt", f"{src}/t3")
        _write(f"{src}/old name.txt", "renamed later", self.T)
        return src

    def change(self, src):
        later = self.T + 5_000_000_001
        with open(f"{src}/grow.txt", "a") as f:
            f.write("and grows\n")
        os.utime(f"{src}/grow.txt", ns=(later, later))
        _write(f"{src}/same.txt", "bbbb", later)  # same size, new time
        os.unlink(f"{src}/gone.txt")
        os.chmod(f"{src}/mode.sh", 0o755)  # mode only
        os.unlink(f"{src}/t1")
        _write(f"{src}/t1/inside.txt", "now a folder", later)
        shutil.rmtree(f"{src}/t2")
        os.symlink("grow.txt", f"{src}/t2")
        os.unlink(f"{src}/t3")
        _write(f"{src}/t3", "a link that became a file", later)
        os.rename(f"{src}/old name.txt", f"{src}/new name.txt")
        os.makedirs(f"{src}/new empty folder")
        _write(f"{src}/added.txt", "new\n", later)

    def stored(self, snapshotId, *path):
        return os.path.join(self.server.dataDir, "users", "alice", snapshotId, "photos", *path)

    def test_changesAndRestores(self):
        """
        After additions, content changes with a new time, a same-size
        change, a deletion, a mode-only change, type changes (file to
        folder, folder to link, link to file), a rename and a new empty
        folder, the second backup sends only those, counts them, keeps the
        rest as hard links to the parent's files, and both snapshots
        restore exactly (content, modes, times to the nanosecond, links);
        the parent's copy of the file whose mode changed keeps its mode.
        """
        self.ok("register")
        src = self.makeSource()
        first = json.loads(self.ok("backup", src, "--json").stdout)
        self.assertIsNone(first["parent"])
        before = treeSignature(src)
        self.change(src)
        after = treeSignature(src)
        second = json.loads(self.ok("backup", src, "--json").stdout)
        self.assertEqual(second["parent"], first["id"])
        self.assertEqual(second["snapshot"]["parent"], first["id"])
        counts = [
            second[k] for k in ("files_new", "files_changed", "files_unchanged", "files_deleted")
        ]
        # new: added.txt, t1/inside.txt, t3, new name.txt; changed: grow.txt,
        # same.txt, mode.sh; unchanged: the tricky tree's 7 files and
        # keep.txt; deleted: gone.txt, t1, old name.txt (and t2/in folder.txt)
        self.assertEqual(counts, [4, 3, 8, 4])
        # the 3 MiB of random data and the rest are not sent again
        self.assertLess(second["bytes_sent"], 20_000)
        self.assertLess(second["bytes_stored"], 1_000)
        self.assertEqual(second["snapshot"]["files"], 15)
        self.assertEqual(
            os.stat(self.stored(first["id"], "random.bin")).st_ino,
            os.stat(self.stored(second["id"], "random.bin")).st_ino,
        )
        self.assertNotEqual(
            os.stat(self.stored(first["id"], "mode.sh")).st_ino,
            os.stat(self.stored(second["id"], "mode.sh")).st_ino,
        )
        self.assertEqual(os.stat(self.stored(first["id"], "mode.sh")).st_mode & 0o777, 0o644)
        listed = {s["id"]: s for s in json.loads(self.ok("list", "--json").stdout)}
        self.assertEqual(listed[second["id"]]["added"], second["bytes_stored"])
        self.assertEqual(listed[first["id"]]["added"], first["bytes_stored"])
        self.ok("restore", "out1", "--snapshot", first["id"])
        self.assertEqual(treeSignature("out1/photos"), before)
        self.ok("restore", "out2", "--snapshot", second["id"])
        self.assertEqual(treeSignature("out2/photos"), after)
        self.assertEqual(os.stat("out2/photos/same.txt").st_mtime_ns, self.T + 5_000_000_001)

    def test_unchangedAndFull(self):
        """
        An unchanged tree's backup sends a few hundred bytes and stores
        only its links' targets; C{--full} sends and stores everything
        again, with no parent.
        """
        self.ok("register")
        src = self.makeSource()
        first = json.loads(self.ok("backup", src, "--json").stdout)
        again = json.loads(self.ok("backup", src, "--json").stdout)
        self.assertEqual(again["parent"], first["id"])
        self.assertEqual(again["files_unchanged"], first["files_new"])
        self.assertEqual(again["files_new"] + again["files_changed"], 0)
        self.assertLess(again["bytes_sent"], first["bytes_sent"] / 100)
        full = json.loads(self.ok("backup", src, "--json", "--full").stdout)
        self.assertIsNone(full["parent"])
        self.assertEqual(full["bytes_stored"], first["bytes_stored"])
        summary = self.ok("backup", src, "--parent", first["id"]).stderr
        self.assertIn(f"(parent: {first['id']})", summary)
        self.assertIn("0 new, 0 changed, 15 unchanged, 0 deleted files", summary)
        unknown = self.client("backup", src, "--parent", "nope")
        self.assertEqual(unknown.returncode, 2, unknown.stderr)
        self.assertIn("--parent nope: no such snapshot", unknown.stderr)

    def test_parentRemoved(self):
        """
        A snapshot whose parent's folder is removed still restores whole;
        a backup that names the removed parent is refused by the server
        and sent in full by the client, which says so.
        """
        self.ok("register")
        src = self.makeSource()
        first = json.loads(self.ok("backup", src, "--json").stdout)
        second = json.loads(self.ok("backup", src, "--json").stdout)
        shutil.rmtree(os.path.dirname(self.stored(first["id"])))
        self.ok("restore", "out", "--snapshot", second["id"])
        self.assertEqual(treeSignature("out/photos"), treeSignature(src))
        result = self.ok("backup", src, "--json", "--parent", first["id"])
        self.assertIn("changed: sending a full backup", result.stderr)
        third = json.loads(result.stdout)
        self.assertIsNone(third["parent"])
        self.assertEqual(third["files_new"], 15)
        self.ok("restore", "out3", "--snapshot", third["id"])
        self.assertEqual(treeSignature("out3/photos"), treeSignature(src))
