# -*- test-case-name: tests.test_interrupts -*-
"""
The console script's entry point, kept free of imports: Ctrl-C or SIGTERM
while the client's modules load (the first few tenths of a second) ends
like one at any later moment -- C{interrupted} on stderr and 128 + the
signal's number -- not with a traceback.
"""

import signal
import sys


def main():
    from backup_client.interrupts import Interrupted, raiseOnTerm

    signal.signal(signal.SIGTERM, raiseOnTerm)
    try:
        from backup_client import cli

        cli.main()
    except KeyboardInterrupt:
        code = Interrupted(signal.SIGINT).exitCode
    except Interrupted as e:
        code = e.exitCode
    else:
        return
    print("backup-client: interrupted", file=sys.stderr)
    raise SystemExit(code)
