# -*- test-case-name: tests.test_archive -*-
"""
The rules an archive must follow, the same on both sides: they apply
I{the same} checks to a zip they did not make (C{docs/security.rst}, "What
is not trusted"): safe entry names (L{checkName}) and the limits of
entries, bytes and compression ratio (L{Limits}).
"""

import re
from dataclasses import dataclass

#: Bytes per read and write when copying file data.
COPY_BLOCK = 1 << 20
_MAX_NAME_BYTES = 4096
_MAX_COMPONENT_BYTES = 255
_MAX_DEPTH = 256
_MAX_LINK_TARGET = 4096


class ArchiveError(Exception):
    """
    An archive is unsafe, malformed, or over a limit; the message names the
    first offending entry and never includes a path outside the archive.
    """


@dataclass
class Limits:
    """
    Caps applied to an archive before and while it is unpacked.

    @ivar maxEntries: entries in the central directory.
    @ivar maxUnpacked: total bytes of file contents and link targets.
    @ivar maxRatio: the most an entry larger than C{ratioFloor} may expand
        (uncompressed / compressed size).
    """

    maxEntries: int = 1_000_000
    maxUnpacked: int = 1 << 40
    maxRatio: int = 200
    ratioFloor: int = 1 << 20


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def checkName(name):
    """
    Check one entry name and split it into components.

    Refused: empty names, NUL and control characters, backslashes, absolute
    paths, drives, empty, C{.} and C{..} components, over-long names and
    components, and excessive depth.

    @raise ArchiveError: naming the entry.
    @return: C{(parts, isDir)}.
    """
    def refuse(problem):
        # the name as shown is made only for a refusal: most names pass
        return ArchiveError(f"entry '{repr(name)[1:-1][:200]}' {problem}")

    if not name:
        raise ArchiveError("archive has an entry with an empty name")
    if _CONTROL.search(name):
        raise refuse("has a control character in its name")
    if "\\" in name:
        raise refuse("has a backslash in its name")
    if name.startswith("/"):
        raise refuse("has an absolute path")
    if len(name) >= 2 and name[1] == ":" and name[0].isalpha():
        raise refuse("has a drive letter")
    if len(name.encode("utf-8", "surrogatepass")) > _MAX_NAME_BYTES:
        raise refuse("has a name that is too long")
    isDir = name.endswith("/")
    parts = tuple((name[:-1] if isDir else name).split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise refuse("has an empty, '.' or '..' component")
        if len(part.encode("utf-8", "surrogatepass")) > _MAX_COMPONENT_BYTES:
            raise refuse("has a component that is too long")
    if len(parts) > _MAX_DEPTH:
        raise refuse("is nested too deeply")
    return parts, isDir
