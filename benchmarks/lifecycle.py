#!/usr/bin/env python3
"""
What the snapshot lifecycle costs, against baselines measured in the same
run on the same trees:

- removing a snapshot (``Lifecycle.forget`` by the operator: mark, claim,
  remove the folder counting freed bytes, drop the row) against ``rm -rf``
  of a copy of the same shape, alternated B A A B;
- recounting an account's usage (``SnapshotStore.countUsed``, each inode
  once) against ``du -s -B1 --apparent-size`` of the same folders;
- the pin a restore now takes and releases (two write transactions,
  ``synchronous=FULL``) against the plain catalog lookup it replaced.

Snapshots share their files through hard links, as incremental ones do.

    .venv/bin/python benchmarks/lifecycle.py [--scale 1.0] [--work DIR]

Prints one JSON object of seconds and ratios (ours / baseline).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.internet.defer import maybeDeferred

from backup_proto.server import catalog
from backup_proto.server.accounts import insertUser
from backup_proto.server.admin import wait
from backup_proto.server.database import Database
from backup_proto.server.lifecycle import OPERATOR, Lifecycle
from backup_proto.server.storage import SnapshotStore

HERE = os.path.dirname(os.path.abspath(__file__))
DATASET = os.path.join(HERE, "..", "..", "shared", "bench", "make_dataset.py")


class WallClock:
    @staticmethod
    def seconds():
        return time.time()


def timed(f, *args, **kwargs):
    start = time.perf_counter()
    result = f(*args, **kwargs)
    return time.perf_counter() - start, result


def linkCopy(src, dest):
    subprocess.run(["cp", "-al", src, dest], check=True)


def addSnapshot(db, snapshotId, size, files):
    db.runSync(
        lambda c: c.execute(
            "INSERT INTO snapshots (username, id, source, kind, created, zip_size, size, files,"
            " added) VALUES ('alice', ?, 'small', 'dir', '2026-01-01T00:00:00Z', 0, ?, ?, 0)",
            (snapshotId, size, files),
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--work", default=None, help="folder for the trees (default: a temp dir)")
    parser.add_argument("--pins", type=int, default=200)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="lifecycle-", dir=args.work)
    try:
        data = os.path.join(work, "data")
        subprocess.run(
            [
                sys.executable,
                DATASET,
                "build",
                work,
                "--trees",
                "small",
                "--scale",
                str(args.scale),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tree = os.path.join(work, "small")
        files = sum(len(f) for _d, _s, f in os.walk(tree))
        size = sum(
            os.lstat(os.path.join(d, n)).st_size for d, _s, names in os.walk(tree) for n in names
        )
        db = Database(os.path.join(data, "user.db"), lambda f: maybeDeferred(f))
        os.makedirs(data, exist_ok=True)
        store = SnapshotStore(data, db)
        store.recover()
        db.runSync(insertUser, "alice", b"", b"", 1)
        userDir = store.userDir("alice")
        os.makedirs(userDir)
        # the account's own snapshot holds the files; the others link them
        shutil.copytree(tree, os.path.join(userDir, "keep", "small"), symlinks=True)
        addSnapshot(db, "keep", size, files)
        db.runSync(catalog.addUsed, "alice", size)
        lifecycle = Lifecycle(store, maybeDeferred, WallClock(), holder="bench")

        removal = {"ours": [], "rm": []}
        for n, who in enumerate(("rm", "ours", "ours", "rm")):
            name = f"{who}-{n}"
            linkCopy(os.path.join(userDir, "keep"), os.path.join(userDir, name))
            os.sync()
            if who == "rm":
                seconds, _ = timed(
                    subprocess.run, ["rm", "-rf", os.path.join(userDir, name)], check=True
                )
            else:
                addSnapshot(db, name, size, files)
                seconds, _ = timed(
                    lambda i=name: wait(lifecycle.forget("alice", [i], actor=OPERATOR))
                )
            removal[who].append(seconds)

        linkCopy(os.path.join(userDir, "keep"), os.path.join(userDir, "shared"))
        addSnapshot(db, "shared", size, files)
        count = {"ours": [], "du": []}
        folders = [os.path.join(userDir, "keep"), os.path.join(userDir, "shared")]
        for who in ("du", "ours", "ours", "du"):
            if who == "du":
                seconds, out = timed(
                    subprocess.run,
                    ["du", "-s", "-B1", "--apparent-size", *folders],
                    capture_output=True,
                    check=True,
                )
            else:
                seconds, counted = timed(store.countUsed, "alice", ["keep", "shared"])
            count[who].append(seconds)

        pins = []
        lookups = []
        for _ in range(args.pins):
            seconds, (_row, token) = timed(lambda: wait(lifecycle.pin("alice", "keep")))
            released, _ = timed(lambda t=token: wait(lifecycle.release(t)))
            pins.append(seconds + released)
            seconds, _ = timed(
                lambda: db.runSync(
                    lambda c: c.execute(
                        "SELECT * FROM snapshots WHERE username = 'alice' AND id = 'keep'"
                    ).fetchone()
                )
            )
            lookups.append(seconds)
        pins.sort()
        lookups.sort()
        result = {
            "files": files,
            "bytes": size,
            "remove_s": removal["ours"],
            "rm_rf_s": removal["rm"],
            "remove_ratio": sum(removal["ours"]) / sum(removal["rm"]),
            "recount_s": count["ours"],
            "du_s": count["du"],
            "recount_ratio": sum(count["ours"]) / sum(count["du"]),
            "recount_bytes": counted,
            "pin_release_ms_median": 1000 * pins[len(pins) // 2],
            "lookup_ms_median": 1000 * lookups[len(lookups) // 2],
        }
        db.close()
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
