"""
The hostile-input suite: a hand-written hostile client drives the real
server protocol with bad bytes, bad messages, bad keys, bad chunks and bad
archives.  For every case: the hostile connection ends with a clear error
(or, for a client that stops reading, is paused and then timed out),
nothing is written outside the users' area, a sentinel tree and alice's
earlier snapshot are untouched, and an honest client completes a backup and
a restore meanwhile.
"""

import os
import stat
import zipfile

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory

from backup_client.restoring import placeRestore
from backup_proto.archive.policy import Limits
from backup_proto.archive.stream import writeArchive
from backup_proto.server.session import TRANSITIONS
from backup_proto.wire.errors import Code
from backup_proto.wire.frames import Msg
from tests.helpers import (
    TestCase,
    clientKey,
    connectInMemory,
    fileSource,
    flush,
    makeFactory,
    serverTLSOptions,
    treeSignature,
    zipSinks,
)
from tests.test_archive import D, F, L, craft
from tests.test_crypto import _fakeRSA, _pem
from tests.wire import Wire, control, frame


class HostileCase(TestCase):
    def setUp(self):
        super().setUp()
        self.data = os.path.abspath("data")
        self.factory = makeFactory(
            self.data, limits=Limits(maxEntries=1000, maxUnpacked=50 << 20, maxRatio=100)
        )
        self.clock = self.factory.clock
        os.makedirs("sentinel/inner")
        with open("sentinel/inner/precious", "wb") as f:
            f.write(os.urandom(5000))
        self.sentinel = treeSignature("sentinel")
        os.makedirs("alice-src")
        with open("alice-src/photo", "wb") as f:
            f.write(os.urandom(150_000))
        self.aliceZip = os.path.abspath("alice_backup.zip")
        writeArchive("alice-src", self.aliceZip)
        with open(self.aliceZip, "rb") as f:
            data = f.read()
        wire = Wire(self.factory).keyed("alice")
        self.aliceSnapshot = wire.backup(data, name="alice-src")[1]["snapshot"]["id"]
        self.aliceStored = treeSignature(self.snapshotPath())
        Wire(self.factory).register("mallory")

    def snapshotPath(self):
        return os.path.join(self.data, "users", "alice", self.aliceSnapshot, "alice-src")

    def hostile(self, keyed=True):
        wire = Wire(self.factory)
        if keyed:
            wire.keyed("mallory", register=False)
            wire.received()
        return wire

    def honestRoundTrip(self):
        client, server, pump = connectInMemory(self.factory)
        for step in (lambda: client.login("alice", "pw"), lambda: client.exchangeKeys(clientKey())):
            d = step()
            flush(pump, self.clock)
            self.successResultOf(d)
        d = client.backup(*fileSource(self.aliceZip), "alice-src", "dir")
        flush(pump, self.clock)
        snap = self.successResultOf(d)
        os.makedirs("work", exist_ok=True)
        d = client.restore(snap["id"], zipSinks("work"))
        flush(pump, self.clock)
        begin, sink = self.successResultOf(d)
        zipPath = sink.path
        dest = os.path.abspath(f"restored-{snap['id']}")
        placeRestore(zipPath, dest, "alice-src", "dir", Limits())
        self.assertEqual(treeSignature("alice-src"), treeSignature(os.path.join(dest, "alice-src")))
        os.unlink(zipPath)

    def settle(self, wire, code):
        """
        Check the aftermath of a hostile case.
        """
        if code is not None:
            frames = wire.received()
            errors = [f for k, f in frames if k is Msg.ERROR]
            self.assertTrue(errors, f"no error frame; got {frames}")
            self.assertEqual(errors[-1]["code"], code, errors[-1])
            self.assertTrue(errors[-1]["message"])
            self.assertNotIn("Traceback", errors[-1]["message"])
            self.assertTrue(wire.closed)
        self.honestRoundTrip()
        wire.proto.connectionLost(None)
        self.clock.advance(0)
        self.assertEqual(treeSignature("sentinel"), self.sentinel)
        self.assertEqual(treeSignature(self.snapshotPath()), self.aliceStored)
        self.assertEqual(
            sorted(os.listdir(self.data)),
            sorted(
                n
                for n in os.listdir(self.data)
                if n in ("users", "user.db", "user.db-wal", "user.db-shm")
            ),
        )
        self.assertEqual(
            sorted(os.listdir(os.path.join(self.data, "users"))),
            ["alice", "mallory"]
            if os.path.exists(os.path.join(self.data, "users", "mallory"))
            else ["alice"],
        )
        for user in os.listdir(os.path.join(self.data, "users")):
            staging = os.path.join(self.data, "users", user, ".staging")
            if os.path.exists(staging):
                self.assertEqual(os.listdir(staging), [], user)
        mallory = os.path.join(self.data, "users", "mallory")
        if os.path.exists(mallory):
            self.assertEqual(os.listdir(mallory), [".staging"])

    # -------------------------------------------------------- upload helpers

    def upload(self, wire, data, name="x", kind="dir", size=None, mangle=None, commit=True):
        size = len(data) if size is None else size
        wire.sendControl(Msg.BACKUP, name=name, kind=kind, size=size, parent=None, manifest=None)
        kind_, ready = wire.last()
        self.assertIs(kind_, Msg.READY, ready)
        chunks = wire.sealedChunks(data, ready["transfer"], size)
        if mangle:
            chunks = mangle(chunks)
        wire.send(b"".join(chunks))
        if commit and not wire.closed:
            frames = wire.received()
            if frames and frames[-1][0] is Msg.CKSUM:
                wire.sendControl(Msg.COMMIT, crc=frames[-1][1]["crc"])

    def uploadZip(self, entries, code=Code.BAD_ARCHIVE, root="x"):
        path = craft(os.path.abspath("hostile.zip"), entries)
        with open(path, "rb") as f:
            data = f.read()
        wire = self.hostile()
        self.upload(wire, data, name=root)
        self.settle(wire, code)


class TransportTests(HostileCase):
    def test_garbage(self):
        """
        Random bytes.
        """
        wire = self.hostile(keyed=False)
        wire.send(os.urandom(2000))
        self.settle(wire, Code.BAD_FRAME)

    def test_nonTLS(self):
        """
        Plain bytes (an HTTP request) at the TLS port end the connection in
        the handshake, before the protocol sees anything.
        """
        tls = TLSMemoryBIOFactory(serverTLSOptions(), False, self.factory)
        proto = tls.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"GET / HTTP/1.1\r\nHost: backup\r\n\r\n" * 10)
        self.assertTrue(transport.disconnecting or transport.disconnected)
        self.honestRoundTrip()

    def test_oversizedFrame(self):
        """
        A 4 GiB length prefix.
        """
        wire = self.hostile(keyed=False)
        wire.send(b"\xff\xff\xff\xff" + b"x" * 100)
        self.settle(wire, Code.BAD_FRAME)

    def test_truncatedFrame(self):
        """
        Half a frame, then the connection drops.
        """
        wire = self.hostile(keyed=False)
        wire.send(control(Msg.LOGIN, user="alice", password="pw")[:10])
        self.settle(wire, None)

    def test_megabytePassword(self):
        """
        A 1 MiB password cannot even be framed: the frame is too large.
        """
        wire = self.hostile(keyed=False)
        wire.send(control(Msg.LOGIN, user="alice", password="x" * (1 << 20)))
        self.settle(wire, Code.BAD_FRAME)

    def test_hugeField(self):
        """
        A field that makes the control message exceed 16 KiB.
        """
        wire = self.hostile(keyed=False)
        wire.send(control(Msg.LOGIN, user="a" * 60000, password="pw"))
        self.settle(wire, Code.BAD_MESSAGE)


class MessageTests(HostileCase):
    def test_wrongStates(self):
        """
        Every message type in UNAUTH and in KEYED where not allowed.
        """
        for keyed, allowed in (
            (False, {Msg.REGISTER, Msg.LOGIN}),
            (True, {kind for (state, kind) in TRANSITIONS if state.name == "KEYED"}),
        ):
            for kind in Msg:
                if kind in allowed:
                    continue
                wire = self.hostile(keyed=keyed)
                wire.send(frame(bytes((kind,)) + b"{}"))
                frames = wire.received()
                self.assertEqual(frames[-1][1]["code"], Code.BAD_STATE)
                self.assertTrue(wire.closed)
                wire.proto.connectionLost(None)
        self.settle(self.hostile(), None)

    def test_wrongTypes(self):
        """
        Fields of the wrong type, missing or extra.
        """
        for body in (
            {"user": ["a"], "password": "p"},
            {"user": "a"},
            {"user": "a", "password": "p", "admin": True},
            {"user": None, "password": 1},
        ):
            wire = self.hostile(keyed=False)
            wire.sendControl(Msg.LOGIN, **body)
            self.assertEqual(wire.last()[1]["code"], Code.BAD_MESSAGE)
        wire = self.hostile()
        wire.sendControl(Msg.BACKUP, name="x", kind="dir", size=-1, parent=None, manifest=None)
        self.settle(wire, Code.BAD_MESSAGE)

    def test_escapingUsernames(self):
        """
        Usernames that try to escape or look alike are refused, and no
        folder is made for them.
        """
        for name in ("../x", "/etc", "..", "a\x00b", "ａlice", "alice/../bob", "ALICE"):
            wire = self.hostile(keyed=False)
            wire.register(name, "pw")
        self.assertEqual(sorted(os.listdir(os.path.join(self.data, "users"))), ["alice"])
        wire = self.hostile(keyed=False)
        wire.register("../y", "pw")
        wire.register("/z", "pw")
        kind, fields = wire.register("a\\b", "pw")
        self.assertEqual(fields["code"], Code.TOO_MANY_ATTEMPTS)
        self.settle(wire, None)

    def test_weakKey(self):
        """
        A 1024-bit RSA key.
        """
        self._key(_pem(_fakeRSA(1024)))

    def test_hugeKey(self):
        """
        An 8200-bit RSA key.
        """
        self._key(_pem(_fakeRSA(8200)))

    def test_badExponent(self):
        """
        An RSA key with e = 3.
        """
        self._key(_pem(_fakeRSA(3072, e=3)))

    def test_notAKey(self):
        """
        Garbage instead of a key.
        """
        self._key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")

    def _key(self, pem):
        wire = self.hostile(keyed=False)
        wire.login("mallory", "pw")
        wire.sendControl(Msg.PUBKEY, key=pem.decode())
        self.settle(wire, Code.BAD_KEY)

    def test_otherUsersSnapshot(self):
        """
        Mallory asks for alice's snapshot by id: not found, nothing sent.
        """
        wire = self.hostile()
        wire.sendControl(Msg.RESTORE, snapshot=self.aliceSnapshot, include=[])
        kind, fields = wire.last()
        self.assertEqual(fields["code"], Code.NOT_FOUND)
        wire.sendControl(Msg.RESTORE, snapshot="../alice/" + self.aliceSnapshot, include=[])
        self.assertEqual(wire.last()[1]["code"], Code.NOT_FOUND)
        self.settle(wire, None)


class ChunkTests(HostileCase):
    def setUp(self):
        super().setUp()
        with open(self.aliceZip, "rb") as f:
            self.zip = f.read()

    def test_replayed(self):
        """
        A chunk replayed in place of the next: rejected, COMMIT refused.
        """

        def replay(chunks):
            chunks[1] = chunks[0]
            return chunks

        wire = self.hostile()
        self.upload(wire, self.zip, mangle=replay)
        self.settle(wire, Code.BAD_UPLOAD)

    def test_reordered(self):
        """
        Two chunks swapped.
        """
        wire = self.hostile()
        self.upload(wire, self.zip, mangle=lambda c: [c[1], c[0]] + c[2:])
        self.settle(wire, Code.BAD_UPLOAD)

    def test_bitFlipped(self):
        """
        A flipped bit in a chunk.
        """

        def flip(chunks):
            c = bytearray(chunks[0])
            c[20] ^= 1
            return [bytes(c)] + chunks[1:]

        wire = self.hostile()
        self.upload(wire, self.zip, mangle=flip)
        self.settle(wire, Code.BAD_UPLOAD)

    def test_dropped(self):
        """
        The last chunk never comes; the connection drops.
        """
        wire = self.hostile()
        self.upload(wire, self.zip, mangle=lambda c: c[:-1], commit=False)
        self.settle(wire, None)

    def test_extraChunk(self):
        """
        More chunks than the declared size: once the last chunk is in, DATA
        is no longer allowed.
        """
        wire = self.hostile()
        self.upload(wire, self.zip, mangle=lambda c: c + c[:1], commit=False)
        self.settle(wire, Code.BAD_STATE)

    def test_wrongChecksum(self):
        """
        COMMIT with a checksum other than the server's.
        """
        wire = self.hostile()
        self.upload(wire, self.zip, commit=False)
        crc = wire.last()[1]["crc"]
        wire.sendControl(Msg.COMMIT, crc=(crc + 1) % 2**32)
        self.settle(wire, Code.BAD_UPLOAD)

    def test_declaredTooLarge(self):
        """
        A declared size over the limit.
        """
        self.factory.maxUploadSize = len(self.zip)
        wire = self.hostile()
        wire.sendControl(
            Msg.BACKUP, name="x", kind="dir", size=len(self.zip) + 1, parent=None, manifest=None
        )
        self.settle(wire, Code.TOO_LARGE)

    def test_escapingName(self):
        """
        A backup name that is a path.
        """
        wire = self.hostile()
        wire.sendControl(
            Msg.BACKUP, name="../alice", kind="dir", size=10, parent=None, manifest=None
        )
        self.settle(wire, Code.BAD_MESSAGE)

    def test_stopsReadingDuringRestore(self):
        """
        A client that stops reading during a restore: the server stops
        producing, the honest client is served meanwhile, and the stalled
        connection is closed by the idle timeout with its staging removed.
        """
        wire = Wire(self.factory).keyed("alice", register=False)
        wire.received()
        realRunIO = self.factory.runIO

        def holdReads(f, *args):
            if f.__name__ == "_readBatch":
                return Deferred()  # the disk read never completes: a stall
            return realRunIO(f, *args)

        self.factory.runIO = holdReads
        wire.sendControl(Msg.RESTORE, snapshot=None, include=[])
        self.assertIsNotNone(wire.transport.producer)
        wire.transport.producer.pauseProducing()
        self.factory.runIO = realRunIO
        self.honestRoundTrip()
        self.clock.advance(self.factory.idleTimeout + 1)
        frames = wire.received()
        self.assertEqual(frames[-1][1]["code"], Code.TIMEOUT)
        self.settle(wire, None)


class ArchiveTests(HostileCase):
    def test_traversal(self):
        self.uploadZip([("x/", b"", D), ("x/../../../sentinel/inner/precious", b"evil", F)])

    def test_absolute(self):
        self.uploadZip([("x/", b"", D), (os.path.abspath("sentinel/inner/precious"), b"e", F)])

    def test_linkThenWrite(self):
        self.uploadZip(
            [
                ("x/", b"", D),
                ("x/l", os.path.abspath("sentinel").encode(), L),
                ("x/l/inner/precious", b"evil", F),
            ]
        )

    def test_relativeLinkThenWrite(self):
        self.uploadZip([("x/", b"", D), ("x/l", b"../../../..", L), ("x/l/evil", b"e", F)])

    def test_specialFiles(self):
        for fmt in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
            self.uploadZip([("x/", b"", D), ("x/dev", b"", fmt | 0o666)])

    def test_duplicates(self):
        self.uploadZip([("x/", b"", D), ("x/a", b"1", F), ("x/a", b"2", F)])

    def test_ratioBomb(self):
        self.uploadZip([("x", b"\0" * (20 << 20), F, zipfile.ZIP_DEFLATED)], root="x")

    def test_entryCountBomb(self):
        self.uploadZip([("x/", b"", D)] + [(f"x/{i}", b"", F) for i in range(1100)])

    def test_sizeBomb(self):
        self.uploadZip(
            [("x/", b"", D)]
            + [(f"x/{i}", b"\0" * (11 << 20), F, zipfile.ZIP_DEFLATED) for i in range(5)]
        )

    def test_wrongRoot(self):
        self.uploadZip([("y/", b"", D), ("y/a", b"1", F)])

    def test_twoRoots(self):
        self.uploadZip([("x/", b"", D), ("y/", b"", D)])

    def test_notAZip(self):
        self.uploadZip([])

    def test_nestedZipIsData(self):
        """
        A zip inside the zip is stored as an ordinary file, never opened.
        """
        inner = craft(os.path.abspath("inner.zip"), [("x/", b"", D), ("x/../../e", b"e", F)])
        with open(inner, "rb") as f:
            innerData = f.read()
        path = craft(os.path.abspath("outer.zip"), [("x/", b"", D), ("x/in.zip", innerData, F)])
        with open(path, "rb") as f:
            data = f.read()
        wire = self.hostile()
        self.upload(wire, data, name="x")
        kind, done = wire.last()
        self.assertIs(kind, Msg.DONE)
        stored = os.path.join(self.data, "users", "mallory", done["snapshot"]["id"], "x")
        with open(os.path.join(stored, "in.zip"), "rb") as f:
            self.assertEqual(f.read(), innerData)
        self.honestRoundTrip()
        self.assertEqual(treeSignature("sentinel"), self.sentinel)
