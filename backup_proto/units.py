# -*- test-case-name: tests.test_cli_plan,tests.test_lifecycle -*-
"""
Sizes for people, both ways: C{humanSize} for what the client and the
server print, C{parseSize} for what operators type (C{10G}).
"""

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]?)(?:I?B)?\Z", re.I)


def humanSize(n):
    """
    @return: C{n} bytes for a person: C{"812 B"}, C{"1.4 KiB"}, C{"3.0 GiB"}.
    """
    if n < 1024:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024:
            return f"{n:.1f} {unit}"
    return f"{n / 1024:.1f} TiB"


def parseSize(text):
    """
    @return: bytes from C{123}, C{10G}, C{1.5T}, C{512MiB} (binary units:
        K is 1024).
    @raise ValueError: for anything else.
    """
    match = _SIZE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"bad size {text!r}: use e.g. 500M, 10G or 2T")
    number, unit = match.groups()
    return int(float(number) * _UNITS[unit.upper()])
