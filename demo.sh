#!/usr/bin/env bash
# Set everything up and run the main job on loopback: start the server,
# register, back up a sample folder, list, restore it, and check that the
# restored tree equals the original.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup-venv.sh
export PATH="$PWD/.venv/bin:$PATH"

DEMO="$PWD/demo-data"
rm -rf "$DEMO"
mkdir -p "$DEMO"
backup-certs --dir "$DEMO/certs" >/dev/null
PORT=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

twistd -n --pidfile= backup-server --data-dir "$DEMO/server" \
    --listen "ssl:$PORT:interface=127.0.0.1:privateKey=$DEMO/certs/server.key:certKey=$DEMO/certs/server.pem" \
    >"$DEMO/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
    sleep 0.1
done

export BACKUP_SERVER="localhost:$PORT" BACKUP_CA="$DEMO/certs/ca.pem"
export BACKUP_USER=demo BACKUP_PASSWORD="demo password" BACKUP_CONFIG_DIR="$DEMO/client-config"

# a sample folder: text, random data, an empty folder, a link, an
# executable, and a second name (hard link) for the photo
SAMPLE="$DEMO/sample"
mkdir -p "$SAMPLE/notes" "$SAMPLE/empty folder"
for i in $(seq 20); do echo "note $i: the quick brown fox" > "$SAMPLE/notes/note $i.txt"; done
head -c 2000000 /dev/urandom > "$SAMPLE/photo.jpg"
printf '#!/bin/sh\necho hello\n' > "$SAMPLE/run.sh"; chmod 755 "$SAMPLE/run.sh"
ln -s "notes/note 1.txt" "$SAMPLE/latest note"
ln "$SAMPLE/photo.jpg" "$SAMPLE/notes/photo again.jpg"

echo "== register";  backup-client register
echo "== backup";    SNAPSHOT=$(backup-client backup "$SAMPLE" | tail -n 1); echo "$SNAPSHOT"
echo "== list";      backup-client list
echo "== restore";   backup-client restore "$DEMO/restored" --snapshot "$SNAPSHOT"
echo "== compare"
diff -r --no-dereference "$SAMPLE" "$DEMO/restored/sample"
.venv/bin/python - "$SAMPLE" "$DEMO/restored/sample" <<'PY'
import os, stat, sys
def sig(root):
    out, first = {}, {}
    for d, dirs, files in sorted(os.walk(root)):
        for n in sorted(dirs + files):
            p = os.path.join(d, n); st = os.lstat(p); rel = os.path.relpath(p, root)
            # a hard-link group by the first of its names
            group = first.setdefault(st.st_ino, rel) if st.st_nlink > 1 and stat.S_ISREG(st.st_mode) else None
            out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_uid, st.st_gid, group)
    return out
a, b = sig(sys.argv[1]), sig(sys.argv[2])
assert a == b, "modes, times, owners or hard links differ"
print(f"restored tree equals the original ({len(a)} entries; modes, times, owners and hard links included)")
PY
echo "demo OK"
