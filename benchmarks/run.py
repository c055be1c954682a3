#!/usr/bin/env python3
"""
The benchmark suite (run by hand; not part of the test suite):

    .venv/bin/python benchmarks/run.py [--trees small,mixed,large] [--scale 1.0]

1. Builds the three trees with ../shared/bench/make_dataset.py into
   --work (default /tmp/backup-proto-bench), or keeps them from an earlier
   run unless that run changed them (then they are built again).
2. For each tree, starts the installed ``twistd backup-server`` on loopback
   (a fresh process for each tree, whose peak RSS is reset before each
   step, so that each step reports its own) and measures with the
   installed ``backup-client``: a full backup, a restore, and a second
   backup of the unchanged tree ("unchanged"), and an incremental backup
   after ``make_dataset.py change`` ("second"), both with the last full
   backup as their parent: wall time, MB/s (tree bytes / wall time),
   client and server peak RSS, bytes sent (``backup --json``), and for the
   incremental steps the growth of the server's data folder (``du``, which
   counts each inode once: folders and manifests included).  Each
   step, ours and the other tools', runs --repeat times (default 3): the
   median time gives MB/s and the ratios, and every time is printed
   (single runs of restic's backup of ``small`` took from 2.0 to 2.7 s).
   Before every measurement dirty pages are flushed and the tree is read
   once, so every tool starts from the same warm page cache.
3. Where rsync (over ssh, to a private sshd on loopback), restic and borg
   are installed, runs them on the same trees in the same run: in each
   repetition right after our full backup and restore, on the same
   unchanged tree (the change step comes after the last repetition); then
   their next backup into the last repetition's destination or repository
   right after each of our unchanged backups, and once after the change
   (a second run would find the change stored already).
4. Measures the transport ceiling (benchmarks/ceiling.py) in the same run.

Prints a table with the ratios ours / theirs (of the medians, and of each
repetition's pair of runs) and ours / ceiling, and writes
benchmarks/results/bench-<UTC time>.json.  What a run writes besides the
trees (several GB) is deleted at its end unless --keep is given; the next
run waits for those deletions to age (see QUIET_AFTER_DELETES).

A run does not start when the disk cannot hold it (L{checkSpace}).  A step
that fails stops the run: the table and the JSON file hold what was
measured before it, the JSON's C{stopped} says where, and the exit status
is 1.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
MAKE_DATASET = os.path.join(ROOT, "..", "shared", "bench", "make_dataset.py")
TIME = shutil.which("time") or "/usr/bin/time"


def freePort():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def treeBytes(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


class RunStopped(Exception):
    """
    A step of the run failed: the run reports what it measured before, and
    this message, and exits with status 1.
    """


def diskUsage(path):
    """
    @return: the bytes allocated under C{path}, each inode counted once
        (C{du}), so that hard-linked snapshots count what they add.
    """
    out = subprocess.run(["du", "-s", "-B1", path], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


def timed(argv, env=None, cwd=None):
    """
    Run a command under GNU time.

    @return: C{(seconds, peak RSS bytes, stdout)}.
    @raise RunStopped: the command failed.
    """
    start = time.perf_counter()
    result = subprocess.run(
        [TIME, "-f", "%M", *argv], env=env, cwd=cwd, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        # GNU time adds its own two lines; the command's are before them
        said = "\n".join(result.stderr.strip().splitlines()[:-2][-20:])
        step = next((arg for arg in argv[1:] if not arg.startswith("-")), "")
        raise RunStopped(
            f"{os.path.basename(argv[0])} {step} failed with exit status "
            f"{result.returncode}:\n{said}"
        )
    rss = int(result.stderr.strip().splitlines()[-1]) * 1024
    return seconds, rss, result.stdout


#: Seconds to wait before measuring, for files deleted before the run (by
#: the test suite, a previous run's cleanup, anything) to age.  This file
#: system has no journal, and then ext4's inode allocator skips an inode
#: deleted less than 60 s ago, and less than 360 s ago while its inode
#: table block is dirty (RECENTCY_MIN, RECENTCY_DIRTY in fs/ext4/ialloc.c)
#: -- which creating files next to it makes it.  Each skip costs a buffer
#: lookup: recently_deleted() then dominates a perf profile of file
#: creation, 3-10x slower, whichever tool comes next.  The run itself
#: deletes nothing until its end (make_dataset.py change only modifies and
#: adds files).
QUIET_AFTER_DELETES = 360


def quietAfterDeletes(seconds):
    if seconds:
        print(f"waiting {seconds} s for earlier deletions to age", file=sys.stderr, flush=True)
        time.sleep(seconds)


def settle(tree=None):
    """
    Before each measurement: write dirty pages back, so that one
    measurement's writeback does not land in the next one's time, and read
    C{tree} once, so that every tool starts from the same warm page cache
    (the first tool would otherwise pay for cold reads alone).
    """
    if tree is not None:
        for root, _dirs, files in os.walk(tree):
            for name in files:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    with open(path, "rb") as f:
                        while f.read(1 << 20):
                            pass
    os.sync()  # after the reads too: they may update access times


class Server:
    def __init__(self, work, name):
        self.work = work
        self.port = freePort()
        certs = os.path.join(work, "certs")
        self.dataDir = os.path.join(work, f"server-{name}")
        self.process = subprocess.Popen(
            [
                os.path.join(BIN, "twistd"),
                "-n",
                "--pidfile=",
                "backup-server",
                "--data-dir",
                self.dataDir,
                "--pbkdf2-iterations",
                "100000",
                "--listen",
                f"ssl:{self.port}:interface=127.0.0.1:privateKey={certs}/server.key"
                f":certKey={certs}/server.pem",
            ],
            stdout=open(os.path.join(work, f"server-{name}.log"), "wb"),
            stderr=subprocess.STDOUT,
        )
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not start")

    def resetPeak(self):
        """
        Start the server's peak RSS afresh (Linux's C{clear_refs} 5), so
        that each step reports its own peak rather than the largest yet.
        """
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")

    def peakRSS(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


class Ours:
    def __init__(self, work, server, compression):
        self.work = work
        self.server = server
        self.compression = compression
        self.env = dict(
            os.environ,
            BACKUP_SERVER=f"localhost:{server.port}",
            BACKUP_CA=os.path.join(work, "certs", "ca.pem"),
            BACKUP_USER="bench",
            BACKUP_PASSWORD="bench",
            BACKUP_CONFIG_DIR=os.path.join(work, "client"),
        )
        self.client("register")

    def client(self, *args):
        return timed([os.path.join(BIN, "backup-client"), "--quiet", *args], env=self.env)

    def backup(self, tree, parent=None):
        """
        A full backup, or an incremental one on C{parent}.
        """
        which = ("--full",) if parent is None else ("--parent", parent)
        before = diskUsage(self.server.dataDir)
        self.server.resetPeak()
        seconds, rss, out = self.client(
            "backup", tree, "--compression", self.compression, "--json", *which
        )
        result = json.loads(out)
        return {
            "seconds": seconds,
            "client_rss": rss,
            "server_rss": self.server.peakRSS(),
            "bytes_sent": result["bytes_sent"],
            "bytes_stored": result["bytes_stored"],
            "disk_growth": diskUsage(self.server.dataDir) - before,
            "files_unchanged": result["files_unchanged"],
            "snapshot": result["id"],
        }

    def restore(self, snapshot, dest):
        self.server.resetPeak()
        seconds, rss, out = self.client("restore", dest, "--snapshot", snapshot)
        return {"seconds": seconds, "client_rss": rss, "server_rss": self.server.peakRSS()}


class SSHD:
    """
    A private sshd on loopback with its own keys, for rsync over ssh.
    """

    def __init__(self, work):
        self.dir = os.path.join(work, "ssh")
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs("/run/sshd", exist_ok=True)
        for key in ("host", "client"):
            path = os.path.join(self.dir, key)
            if not os.path.exists(path):
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True
                )
        shutil.copy(os.path.join(self.dir, "client.pub"), os.path.join(self.dir, "authorized"))
        self.port = freePort()
        config = os.path.join(self.dir, "sshd_config")
        with open(config, "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\n"
                f"HostKey {self.dir}/host\nAuthorizedKeysFile {self.dir}/authorized\n"
                f"PidFile {self.dir}/sshd.pid\nStrictModes no\nUsePAM no\n"
                "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
            )
        self.process = subprocess.Popen(
            [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-e", "-f", config],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        self.ssh = (
            f"ssh -p {self.port} -i {self.dir}/client -o StrictHostKeyChecking=no"
            " -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
        )

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


_TOOL_ENV = dict(
    RESTIC_PASSWORD="bench",
    BORG_PASSPHRASE="",
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="yes",
)


def baselines(work, tree, name, sshd, places):
    """
    Full backup (and restore, for restic) with the other tools installed,
    each into a new destination or repository.

    @param places: filled with each tool's destination or repository, for
        L{baselinesAgain}.
    @return: seconds by measurement name.
    """
    out = {}
    env = dict(os.environ, **_TOOL_ENV)
    stamp = f"{name}-{time.time_ns()}"
    if sshd is not None and shutil.which("rsync"):
        dest = os.path.join(work, "rsync", stamp)
        os.makedirs(dest)
        settle(tree)
        seconds, _, _ = timed(
            ["rsync", "-a", "-e", sshd.ssh, tree + "/", f"root@127.0.0.1:{dest}/"]
        )
        out["rsync_backup"] = seconds
        places["rsync"] = dest
    if shutil.which("restic"):
        repo = os.path.join(work, "restic", stamp)
        subprocess.run(
            ["restic", "init", "-q", "--repo", repo], env=env, check=True, capture_output=True
        )
        settle(tree)
        out["restic_backup"] = timed(["restic", "backup", "-q", "--repo", repo, tree], env=env)[0]
        places["restic"] = repo
        dest = os.path.join(work, "restic-restore", stamp)
        settle()
        out["restic_restore"] = timed(
            ["restic", "restore", "-q", "--repo", repo, "latest", "--target", dest], env=env
        )[0]
    if shutil.which("borg"):
        repo = os.path.join(work, "borg", stamp)
        os.makedirs(os.path.dirname(repo), exist_ok=True)
        subprocess.run(
            ["borg", "init", "-e", "none", repo], env=env, check=True, capture_output=True
        )
        settle(tree)
        out["borg_backup"] = timed(
            ["borg", "create", "--compression", "lz4", f"{repo}::full", tree], env=env, cwd=tree
        )[0]
        places["borg"] = repo
    return out


def baselinesAgain(tree, sshd, places, step):
    """
    The other tools' next backup of C{tree} into what L{baselines} made:
    rsync to the same destination (``--delete``), restic's and borg's next
    archive (each finds its parent as it does by default).

    @return: seconds by measurement name, C{<tool>_<step>}.
    """
    out = {}
    env = dict(os.environ, **_TOOL_ENV)
    if "rsync" in places:
        settle(tree)
        out[f"rsync_{step}"] = timed(
            [
                "rsync",
                "-a",
                "--delete",
                "-e",
                sshd.ssh,
                tree + "/",
                f"root@127.0.0.1:{places['rsync']}/",
            ]
        )[0]
    if "restic" in places:
        settle(tree)
        out[f"restic_{step}"] = timed(
            ["restic", "backup", "-q", "--repo", places["restic"], tree], env=env
        )[0]
    if "borg" in places:
        settle(tree)
        archive = f"{places['borg']}::{step}-{time.time_ns()}"
        out[f"borg_{step}"] = timed(
            ["borg", "create", "--compression", "lz4", archive, tree], env=env, cwd=tree
        )[0]
    return out


def summary(runs, size):
    """
    One measurement repeated: the median time (and MB/s from it), every
    time, and the largest of each other number (peak RSS, bytes sent).
    """
    seconds = statistics.median(r["seconds"] for r in runs)
    out = {
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / seconds / 1e6, 1),
        "samples": [round(r["seconds"], 3) for r in runs],
    }
    for key in runs[0]:
        if key not in out and key != "snapshot":
            out[key] = max(r[key] for r in runs)
    return out


#: Each tree's size at --scale 1.0, as make_dataset.py documents it.
TREE_BYTES = {"small": 200 << 20, "mixed": 500 << 20, "large": 1 << 30}
#: Copies of a tree that one tree's measurements leave on the disk until
#: the run ends: two snapshots, a restore, and rsync's, restic's (a
#: repository and a restore) and borg's copies, with room for the change
#: step's additions.
COPIES_PER_TREE = 8


def checkSpace(work, data, trees, scale, repeat):
    """
    Refuse to start when the disk under C{work} cannot hold the run: a
    full disk halfway through would only show as one tool's error.

    @raise RunStopped: naming what is needed and what is free.
    """
    built = sum(
        TREE_BYTES[name] * scale for name in trees if not os.path.isdir(os.path.join(data, name))
    )
    # every tree's copies stay until the run ends (deleting them earlier
    # would slow the next tree's measurements: QUIET_AFTER_DELETES)
    need = built + sum(TREE_BYTES[name] * scale for name in trees) * COPIES_PER_TREE * repeat
    st = os.statvfs(work)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise RunStopped(
            f"{work} has {free / 2**30:.1f} GiB free; this run needs about "
            f"{need / 2**30:.1f} GiB (fewer --trees or a smaller --scale need less)"
        )


def freshTrees(data, trees, scale):
    """
    Have each tree as make_dataset.py builds it.  A tree that an earlier
    run changed (its C{.NAME.genN} marker) is removed and built again:
    each run's change step adds files (to C{large}, a 256 MiB one), so
    keeping changed trees made every run measure more data than the last.
    This runs before the quiet wait, which covers these deletions.
    """
    os.makedirs(data, exist_ok=True)
    missing = []
    for name in trees:
        tree = os.path.join(data, name)
        markers = [f for f in os.listdir(data) if f.startswith(f".{name}.gen")]
        if markers:
            shutil.rmtree(tree, ignore_errors=True)
            for marker in markers:
                os.remove(os.path.join(data, marker))
        if not os.path.isdir(tree):
            missing.append(name)
    if missing:
        subprocess.run(
            [
                sys.executable,
                MAKE_DATASET,
                "build",
                data,
                "--trees",
                ",".join(missing),
                "--scale",
                str(scale),
            ],
            check=True,
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", default="small,mixed,large")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--work", default="/tmp/backup-proto-bench")
    parser.add_argument("--compression", default="auto", choices=("auto", "store", "deflate"))
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="measure each step this many times and report the median",
    )
    parser.add_argument(
        "--quiet-seconds",
        type=int,
        default=QUIET_AFTER_DELETES,
        help="wait this long before the first measurement (see QUIET_AFTER_DELETES)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep this run's server data, restores and baseline repositories",
    )
    args = parser.parse_args()
    trees = args.trees.split(",")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    unknown = sorted(set(trees) - set(TREE_BYTES))
    if unknown:
        parser.error(f"unknown trees: {', '.join(unknown)} (known: {', '.join(TREE_BYTES)})")
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, f"data-{args.scale}")
    checkSpace(work, data, trees, args.scale, args.repeat)
    freshTrees(data, trees, args.scale)
    if not os.path.exists(os.path.join(work, "certs", "ca.pem")):
        subprocess.run(
            [os.path.join(BIN, "backup-certs"), "--dir", os.path.join(work, "certs")],
            check=True,
            capture_output=True,
        )
    ceiling = json.loads(
        subprocess.run(
            [sys.executable, os.path.join(HERE, "ceiling.py")],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    sshd = None
    if not args.no_baselines and shutil.which("rsync") and shutil.which("sshd"):
        sshd = SSHD(work)
    run = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    results = {
        "run": run,
        "ceiling_mb_per_s": ceiling["mb_per_s"],
        "compression": args.compression,
        "repeat": args.repeat,
        "trees": {},
    }
    quietAfterDeletes(args.quiet_seconds)
    stopped = None
    try:
        for name in trees:
            tree = os.path.join(data, name)
            size = treeBytes(tree)
            server = Server(work, f"{run}-{name}")
            times = {}
            try:
                ours = Ours(work, server, args.compression)
                full, restore = [], []
                places = {}
                for i in range(args.repeat):
                    # each repetition measures every tool back to back, on
                    # the same (unchanged) tree, so that a slow spell of the
                    # machine lands on all of them rather than on one
                    settle(tree)
                    full.append(ours.backup(tree))
                    settle()
                    restore.append(
                        ours.restore(
                            full[-1]["snapshot"], os.path.join(work, "restore", f"{run}-{name}-{i}")
                        )
                    )
                    if not args.no_baselines:
                        places.clear()
                        for tool, seconds in baselines(work, tree, name, sshd, places).items():
                            times.setdefault(tool, []).append({"seconds": seconds})
                parent = full[-1]["snapshot"]
                unchanged = []
                for _ in range(args.repeat):
                    settle(tree)
                    unchanged.append(ours.backup(tree, parent))
                    for tool, seconds in baselinesAgain(tree, sshd, places, "unchanged").items():
                        times.setdefault(tool, []).append({"seconds": seconds})
                generation = len([f for f in os.listdir(data) if f.startswith(f".{name}.gen")])
                subprocess.run(
                    [
                        sys.executable,
                        MAKE_DATASET,
                        "change",
                        tree,
                        "--generation",
                        str(generation + 1),
                    ],
                    check=True,
                    capture_output=True,
                )
                open(os.path.join(data, f".{name}.gen{generation + 1}"), "w").close()
                size2 = treeBytes(tree)
                second = []
                for i in range(args.repeat):
                    settle(tree)
                    second.append(ours.backup(tree, parent))
                    if i == 0:
                        # their later runs would find the change stored already
                        for tool, seconds in baselinesAgain(tree, sshd, places, "second").items():
                            times.setdefault(tool, []).append({"seconds": seconds})
            finally:
                server.stop()
            entry = {
                "bytes": size,
                "full": summary(full, size),
                "restore": summary(restore, size),
                "unchanged": summary(unchanged, size),
                "second": summary(second, size2),
                "second_bytes": size2,
            }
            if times:
                entry["baselines"] = {
                    tool: summary(runs, size2 if tool.endswith("_second") else size)
                    for tool, runs in times.items()
                }
            results["trees"][name] = entry
            print(f"{name}: done", file=sys.stderr, flush=True)
    except (RunStopped, subprocess.CalledProcessError) as e:
        # what was measured is still reported
        stopped = results["stopped"] = f"{name}: {e}"
    finally:
        if sshd is not None:
            sshd.stop()
        if not args.keep:
            # each run leaves several GB (snapshots, restores, repositories)
            for name in os.listdir(work):
                if name.startswith("server-") or name in (
                    "restore",
                    "rsync",
                    "restic",
                    "restic-restore",
                    "borg",
                ):
                    path = os.path.join(work, name)
                    if os.path.isdir(path):
                        shutil.rmtree(path, ignore_errors=True)
    report(results)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    path = os.path.join(HERE, "results", f"bench-{run}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {path}")
    if stopped is not None:
        sys.exit(f"run stopped at {stopped}")


def report(results):
    mib = 2**20
    print(
        f"\ntransport ceiling: {results['ceiling_mb_per_s']} MB/s;"
        f" compression: {results['compression']}"
    )
    header = (
        f"{'tree':<7} {'step':<8} {'seconds':>8} {'MB/s':>7} {'client RSS':>11}"
        f" {'server RSS':>11} {'sent MiB':>9} {'/ceiling':>9}  times"
    )
    print(header)
    print("-" * len(header))
    for name, entry in results["trees"].items():
        for step in ("full", "restore", "unchanged", "second"):
            m = entry[step]
            sent = f"{m['bytes_sent'] / mib:9.1f}" if "bytes_sent" in m else " " * 9
            print(
                f"{name:<7} {step:<8} {m['seconds']:8.2f} {m['mb_per_s']:7.1f}"
                f" {m['client_rss'] / mib:10.1f}M {m['server_rss'] / mib:10.1f}M {sent}"
                f" {m['mb_per_s'] / results['ceiling_mb_per_s']:9.2f}  {spread(m)}"
            )
    print()
    for name, entry in results["trees"].items():
        for tool, m in entry.get("baselines", {}).items():
            step = tool.rsplit("_", 1)[1]
            ours = entry[{"backup": "full"}.get(step, step)]
            print(
                f"{name:<7} {tool:<15} {m['mb_per_s']:7.1f} MB/s   ours / theirs ="
                f" {ours['mb_per_s'] / m['mb_per_s']:.2f}   per round {perRound(ours, m)}"
                f"   times {spread(m)}"
            )
    print()
    for name, entry in results["trees"].items():
        for step in ("unchanged", "second"):
            m = entry[step]
            print(
                f"{name:<7} {step:<9} sent {m['bytes_sent'] / mib:8.2f} MiB"
                f" ({100 * m['bytes_sent'] / entry['bytes']:.2f} % of the tree),"
                f" stored {m['bytes_stored'] / mib:8.2f} MiB,"
                f" disk growth {m['disk_growth'] / mib:8.2f} MiB"
                f" ({100 * m['disk_growth'] / entry['bytes']:.2f} %)"
            )
    print(
        f"\nmedians of {results['repeat']} runs of each step; 'per round' is the ratio"
        " of each repetition's two runs, made back to back"
    )


def perRound(ours, theirs):
    """
    The ratio ours / theirs of each repetition: both tools ran on the same
    data a minute apart at most, so the spread of these shows how much of
    the ratio of the medians may be the machine's own variation.  (The
    other tools' incremental backup after the change runs once.)
    """
    return " ".join(f"{t / o:.2f}" for o, t in zip(ours["samples"], theirs["samples"]))


def spread(m):
    return " ".join(f"{s:.2f}" for s in m["samples"])


if __name__ == "__main__":
    try:
        main()
    except RunStopped as e:
        sys.exit(f"run not started: {e}")
