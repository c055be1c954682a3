# -*- test-case-name: tests.test_e2e -*-
"""
Progress bars for the terminal (tqdm), or nothing when quiet.
"""

import sys

from tqdm import tqdm


class _Bar:
    """
    A callable byte counter: C{bar(n)} adds C{n} bytes.  A no-op when quiet.
    """

    def __init__(self, label, total, quiet):
        self._tqdm = None
        if not quiet:
            self._tqdm = tqdm(
                total=total,
                desc=label,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                leave=False,
                dynamic_ncols=True,
                mininterval=0.2,
            )

    def __call__(self, n):
        if self._tqdm is not None:
            self._tqdm.update(n)

    def close(self):
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progressBar(label, total, quiet):
    """
    @param total: bytes expected, or C{None} if unknown.
    @return: a bar showing bytes, rate and time left; usable as a context
        manager and as a callable taking byte counts.
    """
    return _Bar(label, total, quiet)
