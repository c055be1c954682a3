"""
A hand-written client for driving the real server protocol over a
L{StringTransport}: send any bytes, read back decoded frames.
"""

import base64
import json
import struct

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from backup_proto.wire import crypto
from backup_proto.wire.frames import Msg, decodeFrame, encodeControl, encodeData
from tests.helpers import clientKey


def frame(body):
    return struct.pack("!I", len(body)) + body


def control(kind, /, **fields):
    return frame(encodeControl(kind, **fields))


class Wire:
    """
    A server protocol on a StringTransport, and the frames it sent.

    @ivar ciphers: the session's ciphers, once L{key} ran.
    """

    def __init__(self, factory, host="127.0.0.1"):
        self.factory = factory
        self.clock = factory.clock
        self.proto = factory.buildProtocol(IPv4Address("TCP", host, 5555))
        # lenient: a real transport may be paused after loseConnection
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", host, 5555), lenient=True)
        self.proto.makeConnection(self.transport)
        self.ciphers = None
        self._buffer = b""

    def send(self, data):
        self.proto.dataReceived(data)
        self.clock.advance(0)
        self.clock.advance(0)

    def sendControl(self, kind, /, **fields):
        self.send(control(kind, **fields))

    def received(self):
        """
        @return: the frames written since the last call, as
            C{(Msg, decoded JSON or raw bytes)}.
        """
        self._buffer += self.transport.value()
        self.transport.clear()
        out = []
        while len(self._buffer) >= 4:
            (n,) = struct.unpack("!I", self._buffer[:4])
            if len(self._buffer) < 4 + n:
                break
            kind, body = decodeFrame(self._buffer[4 : 4 + n])
            self._buffer = self._buffer[4 + n :]
            out.append((kind, body if kind is Msg.DATA else json.loads(body)))
        return out

    def last(self):
        frames = self.received()
        return frames[-1] if frames else None

    @property
    def closed(self):
        return self.transport.disconnecting or self.transport.disconnected

    def register(self, user="alice", password="pw"):
        self.sendControl(Msg.REGISTER, user=user, password=password)
        return self.last()

    def login(self, user="alice", password="pw"):
        self.sendControl(Msg.LOGIN, user=user, password=password)
        return self.last()

    def key(self):
        self.sendControl(Msg.PUBKEY, key=crypto.publicKeyPEM(clientKey()).decode())
        kind, fields = self.last()
        assert kind is Msg.SESSION_KEY, (kind, fields)
        secret = crypto.unwrapSecret(clientKey(), base64.b64decode(fields["wrapped"]))
        self.ciphers = crypto.SessionCiphers(secret)

    def keyed(self, user="alice", password="pw", register=True):
        if register:
            self.register(user, password)
        self.login(user, password)
        self.key()
        return self

    def backup(self, data, name="docs", kind="dir"):
        """
        Upload C{data} as a whole, in order, and COMMIT it.

        @return: the frame that answered the COMMIT, or the ERROR that came
            instead of the CKSUM.
        """
        self.sendControl(
            Msg.BACKUP, name=name, kind=kind, size=len(data), parent=None, manifest=None
        )
        transfer = self.last()[1]["transfer"]
        self.send(b"".join(self.sealedChunks(data, transfer)))
        kind, fields = self.last()
        if kind is Msg.ERROR:
            return kind, fields
        self.sendControl(Msg.COMMIT, crc=fields["crc"])
        return self.last()

    def sealedChunks(self, data, transfer, size=None):
        size = len(data) if size is None else size
        chunks = []
        for i in range(crypto.chunkCount(size)):
            piece = data[i * crypto.CHUNK_SIZE : (i + 1) * crypto.CHUNK_SIZE]
            chunks.append(frame(encodeData(self.ciphers.upload.seal(transfer, size, i, piece))))
        return chunks
