# -*- test-case-name: tests.test_browse -*-
"""
Looking inside snapshots from their manifests, without downloading them:
what C{ls}, C{find} and C{diff} show, and the conflicts a restore would
meet in DEST, found before any of its data moves.

An entry is a manifest entry (L{backup_proto.archive.manifest}): C{(path,
kind, size, mtimeNs, mode, target, crc, owner, link)}, its path starting
with the snapshot's top-level name.
"""

import datetime
import fnmatch
import os
import stat

from backup_proto.archive.manifest import Selection

_KIND_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "link": stat.S_IFLNK}

#: The fields a diff compares, in the order it names them.
_COMPARED = (
    ("type", 1),
    ("size", 2),
    ("content", 6),
    ("mode", 4),
    ("owner", 7),
    ("hardlink", 8),
    ("target", 5),
    ("time", 3),
)


def entryObject(entry):
    """
    @return: an entry as C{ls --json} prints it.
    """
    path, kind, size, mtimeNs, mode, target, crc, owner, link = entry
    uid, gid, user, group = owner or (None, None, None, None)
    return {
        "path": path,
        "type": kind,
        "size": size,
        "mtime": isoTime(mtimeNs),
        "mtime_ns": mtimeNs,
        "mode": f"{mode:04o}",
        "uid": uid,
        "gid": gid,
        "user": user,
        "group": group,
        "target": target,
        "hardlink": None if link == path else link,
        "crc32": crc,
    }


def ownerText(owner):
    """
    @return: C{user/group} as C{tar -tv} shows them (ids where no name was
        recorded), or C{?/?} for an entry recorded without an owner.
    """
    if owner is None:
        return "?/?"
    uid, gid, user, group = owner
    return f"{user or uid}/{group or gid}"


def isoTime(mtimeNs):
    when = datetime.datetime.fromtimestamp(mtimeNs // 1_000_000_000, datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def normalisePath(path):
    """
    @return: a path inside a snapshot as its manifest spells it: no leading
        or trailing slash, no C{.} components.
    """
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts)


def under(entries, path):
    """
    @return: the entries at C{path} or below it (all for an empty path),
        sorted by path.
    """
    path = normalisePath(path)
    prefix = path + "/"
    chosen = [e for e in entries if not path or e[0] == path or e[0].startswith(prefix)]
    return sorted(chosen, key=lambda e: e[0])


def longLine(entry):
    """
    @return: one C{ls --long} line: mode, size, time, path (and a link's
        target).
    """
    path, kind, size, mtimeNs, mode, target, _crc, owner, link = entry
    text = (
        f"{stat.filemode(_KIND_BITS[kind] | mode)} {ownerText(owner):<17} {size:>12}"
        f" {isoTime(mtimeNs)}  {path}"
    )
    if link is not None and link != path:
        text += f" link to {link}"
    return text + (f" -> {target}" if kind == "link" else "")


def matches(pattern, path):
    """
    Whether a path matches a C{find} pattern (shell wildcards): a pattern
    with a slash is matched against the whole path, one without against
    the last component (as restic's C{find} and C{find -name} do).
    """
    if "/" in pattern:
        return fnmatch.fnmatchcase(path, normalisePath(pattern))
    return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)


def _differ(a, b, i):
    if i == 7:
        # owners by id, and only where both were recorded (an older
        # manifest has none)
        return a[7] is not None and b[7] is not None and a[7][:2] != b[7][:2]
    return a[i] != b[i]


def diff(old, new):
    """
    Compare two snapshots' entries.

    @return: C{(added, removed, changed)}: paths only in C{new}, paths only
        in C{old}, and C{(path, [what changed...])} for paths in both whose
        type, size, content, mode, owner, hard-link group, link target or
        time differ; each sorted.
    """
    before = {e[0]: e for e in old}
    after = {e[0]: e for e in new}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = []
    for path in sorted(set(before) & set(after)):
        a, b = before[path], after[path]
        what = [name for name, i in _COMPARED if _differ(a, b, i)]
        if a[1] != b[1]:
            what = ["type"]
        elif a[1] == "dir":
            what = [w for w in what if w in ("mode", "owner")]
        if what:
            changed.append((path, what))
    return added, removed, changed


def conflictOf(entry, dest, overwrite):
    """
    Whether a restore into C{dest} would refuse to place C{entry} (the
    rules of L{backup_client.restoring.findConflicts}), found from the
    manifest before any data moves.

    @return: the reason, or C{None}.
    """
    path, kind = entry[0], entry[1]
    try:
        st = os.lstat(os.path.join(dest, path))
    except (FileNotFoundError, NotADirectoryError):
        return None  # a parent that is a file is reported for the parent
    isDir = stat.S_ISDIR(st.st_mode)
    if kind == "dir":
        return None if isDir else "exists and is not a folder"
    if isDir:
        return "is a folder; it will not be replaced by a file"
    return None if overwrite else "already exists"


class RestoreCheck:
    """
    What a restore's manifest says before it is downloaded: the paths it
    would refuse in DEST, and which of the paths asked for (C{--include})
    it holds.  Fed one entry at a time (a manifest may be large).

    @ivar conflicts: C{(path, reason)} of each refused path.
    @ivar unmatched: the include paths nothing matched (so far).
    """

    def __init__(self, dest, overwrite, include=()):
        self.dest = dest
        self.overwrite = overwrite
        # the server picks a partial restore's entries the same way
        self._selection = Selection(include) if include else None
        self.conflicts = []

    @property
    def unmatched(self):
        return set() if self._selection is None else self._selection.unmatched

    def add(self, entry):
        if self._selection is not None and not self._selection.wants(entry):
            return
        reason = conflictOf(entry, self.dest, self.overwrite)
        if reason is not None:
            self.conflicts.append((entry[0], reason))


def conflictReport(conflicts, shown=20):
    """
    @return: the message naming a restore's conflicts: the first C{shown}
        (by path), then how many more.
    """
    conflicts = sorted(conflicts)
    lines = [f"  {path} {reason}" for path, reason in conflicts[:shown]]
    if len(conflicts) > shown:
        lines.append(f"  ... and {len(conflicts) - shown} more")
    hint = "" if all("folder" in r for _p, r in conflicts) else " (--overwrite replaces files)"
    return f"{len(conflicts)} paths in the way of the restore{hint}:\n" + "\n".join(lines)
