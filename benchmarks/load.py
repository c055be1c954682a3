#!/usr/bin/env python3
"""
Load test (run by hand; not part of the test suite):

    .venv/bin/python benchmarks/load.py [--clients 100] [--idle 1000]

Starts the installed ``twistd backup-server`` on loopback, opens IDLE
TLS connections that never log in (spread over 127.0.0.2.. so that the
per-address cap is not what limits them), then runs CLIENTS honest
backups at once while an extra client logs in again and again.  Every
honest backup must succeed; it prints the honest login latency, the wall
time and the server's peak RSS, and writes benchmarks/results/load.json.

The server runs with its default PBKDF2 cost (600,000 iterations) and with
--login-timeout/--idle-timeout raised so that the idle connections are held
for the whole run instead of being closed after 30 s, as they would be in
production.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, task
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.internet.threads import deferToThread

from backup_client.protocol import BackupClientProtocol
from backup_proto.archive.plan import planArchive
from backup_proto.archive.stream import ArchiveStream
from backup_proto.wire import crypto

BIN = os.path.dirname(sys.executable)


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peakRSS(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


class Idle(Protocol):
    lost = False

    def connectionLost(self, reason):
        self.lost = True


async def run(reactor, args, work, port, serverPid):
    with open(os.path.join(work, "certs", "ca.pem"), "rb") as f:
        ca = Certificate.loadPEM(f.read())
    options = optionsForClientTLS(
        "localhost", trustRoot=ca, extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3}
    )
    key = crypto.generateClientKey()

    def endpoint(bind=None):
        return wrapClientTLS(
            options, HostnameEndpoint(reactor, "localhost", port, timeout=30, bindAddress=bind)
        )

    async def session(user):
        proto = BackupClientProtocol(deferToThread, reactor)
        await connectProtocol(endpoint(), proto)
        await proto.login(user, "load-test")
        await proto.exchangeKeys(key)
        return proto

    # accounts
    for i in range(args.clients + 1):
        proto = BackupClientProtocol(deferToThread, reactor)
        await connectProtocol(endpoint(), proto)
        await proto.register(f"user{i}", "load-test")
        proto.transport.loseConnection()
    print(f"registered {args.clients + 1} accounts", flush=True)

    # idle connections
    idle = []
    for i in range(args.idle):
        proto = Idle()
        bind = (f"127.0.0.{2 + i // 50}", 0)
        idle.append(proto)
        await connectProtocol(endpoint(bind), proto)
    await task.deferLater(reactor, 1, lambda: None)
    print(f"holding {sum(not p.lost for p in idle)} idle connections", flush=True)

    # one plan; every client makes and sends its own stream of it, as the
    # real client does
    plan = planArchive(os.path.join(work, "payload"))
    latencies = []
    done = {"flag": False}

    async def prober():
        while not done["flag"]:
            start = time.monotonic()
            proto = await session(f"user{args.clients}")
            latencies.append(time.monotonic() - start)
            proto.transport.loseConnection()
            await task.deferLater(reactor, 0.5, lambda: None)

    async def backup(i):
        proto = await session(f"user{i}")
        snapshot = await proto.backup(lambda: ArchiveStream(plan), plan.size, "payload", "dir")
        proto.transport.loseConnection()
        return snapshot

    start = time.monotonic()
    probing = defer.ensureDeferred(prober())
    results = await defer.DeferredList(
        [defer.ensureDeferred(backup(i)) for i in range(args.clients)], consumeErrors=True
    )
    elapsed = time.monotonic() - start
    done["flag"] = True
    await probing
    ok = sum(1 for success, _ in results if success)
    for success, value in results:
        if not success:
            print("failed:", value.getErrorMessage())
    stillIdle = sum(not p.lost for p in idle)
    report = {
        "clients": args.clients,
        "backups_ok": ok,
        "idle_requested": args.idle,
        "idle_held_at_end": stillIdle,
        "payload_bytes": plan.size,
        "wall_seconds": round(elapsed, 2),
        "honest_login_seconds": {
            "count": len(latencies),
            "median": round(statistics.median(latencies), 3) if latencies else None,
            "max": round(max(latencies), 3) if latencies else None,
        },
        "server_peak_rss_mib": round(peakRSS(serverPid) / 2**20, 1),
    }
    print(json.dumps(report, indent=2))
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/load.json", "w") as f:
        json.dump(report, f, indent=2)
    for p in idle:
        if p.transport is not None:
            p.transport.loseConnection()
    if ok != args.clients:
        raise SystemExit(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--payload-mib", type=float, default=2.0)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="backup-load-")
    subprocess.run(
        [os.path.join(BIN, "backup-certs"), "--dir", os.path.join(work, "certs")],
        check=True,
        capture_output=True,
    )
    os.makedirs(os.path.join(work, "payload"))
    with open(os.path.join(work, "payload", "data"), "wb") as f:
        f.write(os.urandom(int(args.payload_mib * 2**20)))
    port = freePort()
    log = open(os.path.join(work, "server.log"), "wb")
    server = subprocess.Popen(
        [
            os.path.join(BIN, "twistd"),
            "-n",
            "--pidfile=",
            "backup-server",
            "--data-dir",
            os.path.join(work, "data"),
            "--login-timeout",
            "600",
            "--idle-timeout",
            "600",
            "--listen",
            f"ssl:{port}:privateKey={work}/certs/server.key:certKey={work}/certs/server.pem",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        task.react(lambda reactor: defer.ensureDeferred(run(reactor, args, work, port, server.pid)))
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
