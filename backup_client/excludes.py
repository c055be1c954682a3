# -*- test-case-name: tests.test_excludes -*-
"""
What a backup leaves out: gitignore-style patterns (C{--exclude},
C{--exclude-file}), matched by C{pathspec}'s C{GitIgnoreSpec} rather than
by hand, and folders marked as caches (C{--exclude-caches}: a
C{CACHEDIR.TAG} with the standard signature, https://bford.info/cachedir/).

Paths are matched relative to the folder backed up, as a C{.gitignore} at
its top would match them: C{*.log} anywhere, C{/build} only at the top,
C{tmp/} only folders, C{!keep.log} takes one back.
"""

import os

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"


def isCacheDir(path):
    """
    @return: whether the folder holds a valid C{CACHEDIR.TAG}.
    """
    try:
        with open(os.path.join(path, "CACHEDIR.TAG"), "rb") as f:
            return f.read(len(CACHEDIR_SIGNATURE)) == CACHEDIR_SIGNATURE
    except OSError:
        return False


class Excludes:
    """
    C{excludes(relpath, isDir, path) -> bool}, for
    L{backup_proto.archive.plan.planArchive}'s C{exclude}.
    """

    def __init__(self, patterns=(), caches=False):
        patterns = list(patterns)
        self.spec = None
        if patterns:
            # loaded only when used: every command imports this module
            from pathspec import GitIgnoreSpec

            self.spec = GitIgnoreSpec.from_lines(patterns)
        self.caches = caches

    @classmethod
    def fromOptions(cls, patterns, files, caches):
        """
        @param files: files of patterns, one per line (blank lines and
            C{#} comments ignored, as in C{.gitignore}).
        @raise OSError: a file cannot be read.
        """
        lines = list(patterns)
        for path in files:
            with open(path, encoding="utf-8") as f:
                lines.extend(f.read().splitlines())
        return cls(lines, caches)

    def __bool__(self):
        return self.spec is not None or self.caches

    def __call__(self, relpath, isDir, path):
        if self.spec is not None and self.spec.match_file(relpath + "/" if isDir else relpath):
            return True
        return isDir and self.caches and isCacheDir(path)
