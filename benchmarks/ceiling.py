#!/usr/bin/env python3
"""
The transport ceiling: how fast this machine moves bytes through the same
stack a backup uses, minus zip and disk -- Twisted + pyOpenSSL TLS 1.3 on
loopback, 64 KiB AES-256-GCM sealed DATA frames through L{ChunkSender}'s
sealing path, POSIX cksum on both ends, opening and cksum on the receiver.

    .venv/bin/python benchmarks/ceiling.py [--mib 512]

Prints one JSON object: {"bytes": ..., "seconds": ..., "mb_per_s": ...}.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.internet.endpoints import (
    HostnameEndpoint,
    SSL4ServerEndpoint,
    connectProtocol,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory
from twisted.internet.ssl import (
    Certificate,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import Int32StringReceiver

from backup_proto.certs import makeCertificates
from backup_proto.wire.cksum import Cksum
from backup_proto.wire.crypto import CHUNK_SIZE, SessionCiphers, chunkCount
from backup_proto.wire.frames import MAX_FRAME, encodeData


class Sink(Int32StringReceiver):
    MAX_LENGTH = MAX_FRAME

    def __init__(self, ciphers, size, done):
        self.ciphers, self.size, self.done = ciphers, size, done
        self.index = 0
        self.crc = Cksum()

    def stringReceived(self, frame):
        plain = self.ciphers.upload.open(1, self.size, self.index, frame[1:])
        self.crc.update(plain)
        self.index += 1
        if self.index == chunkCount(self.size):
            self.done.callback(self.crc.value())


class Source(Int32StringReceiver):
    def __init__(self, ciphers, size):
        self.ciphers, self.size = ciphers, size
        self.block = os.urandom(CHUNK_SIZE)
        self.index = 0
        self.paused = False
        self.crc = Cksum()

    def connectionMade(self):
        self.transport.registerProducer(self, True)
        self.pump()

    def pump(self):
        count = chunkCount(self.size)
        while not self.paused and self.index < count:
            self.crc.update(self.block)
            self.sendString(
                encodeData(self.ciphers.upload.seal(1, self.size, self.index, self.block))
            )
            self.index += 1
        if self.index == count:
            self.transport.unregisterProducer()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self.pump()

    def stopProducing(self):
        self.paused = True


CIPHERS = SessionCiphers(b"c" * 32)


async def sink(reactor, size, certDir):
    """
    The receiving end, in its own process (the two ends of a backup run in
    two processes, on two cores).
    """
    with open(os.path.join(certDir, "server.pem"), "rb") as f:
        pem = f.read()
    with open(os.path.join(certDir, "server.key"), "rb") as f:
        pem += f.read()
    options = PrivateCertificate.loadPEM(pem).options()
    options.getContext().set_min_proto_version(0x0304)
    done = defer.Deferred()
    port = await SSL4ServerEndpoint(reactor, 0, options, interface="127.0.0.1").listen(
        Factory.forProtocol(lambda: Sink(CIPHERS, size, done))
    )
    print(port.getHost().port, flush=True)
    crc = await done
    print(crc, flush=True)


async def measure(reactor, size):
    certDir = tempfile.mkdtemp(prefix="ceiling-")
    files = makeCertificates(("localhost", "127.0.0.1"))
    for name, data in files.items():
        with open(os.path.join(certDir, name), "wb") as f:
            f.write(data)
    child = subprocess.Popen(
        [sys.executable, __file__, "--mib", str(size >> 20), "--sink", certDir],
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(child.stdout.readline())
    clientOptions = optionsForClientTLS(
        "localhost",
        trustRoot=Certificate.loadPEM(files["ca.pem"]),
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3},
    )
    start = time.perf_counter()
    source = Source(CIPHERS, size)
    await connectProtocol(
        wrapClientTLS(clientOptions, HostnameEndpoint(reactor, "localhost", port)), source
    )
    crc = int(await deferToThread(child.stdout.readline))
    seconds = time.perf_counter() - start
    assert crc == source.crc.value()
    source.transport.loseConnection()
    child.wait()
    print(
        json.dumps(
            {
                "bytes": size,
                "seconds": round(seconds, 3),
                "mb_per_s": round(size / seconds / 1e6, 1),
            }
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--sink", help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.mib * (1 << 20)
    if args.sink:
        task.react(lambda reactor: defer.ensureDeferred(sink(reactor, size, args.sink)))
    else:
        task.react(lambda reactor: defer.ensureDeferred(measure(reactor, size)))


if __name__ == "__main__":
    main()
