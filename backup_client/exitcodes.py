# -*- test-case-name: tests.test_cli_plan -*-
"""
The client's exit codes: stable, and documented in README.rst's "Exit
codes" table (a test compares the two).
"""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_UNREACHABLE = 4
EXIT_VERIFY = 5
EXIT_WARNINGS = 6
EXIT_STORAGE_FULL = 7
EXIT_QUOTA = 8
EXIT_LOCAL_FULL = 9
EXIT_PROTECTED = 10
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

#: Every exit code the client uses, with what it means (one line).
MEANINGS = {
    EXIT_OK: "success",
    EXIT_ERROR: "other error",
    EXIT_USAGE: "usage error",
    EXIT_AUTH: "authentication or account refused",
    EXIT_UNREACHABLE: "server unreachable or not trusted",
    EXIT_VERIFY: "transfer verification failed after all resends",
    EXIT_WARNINGS: "finished with warnings",
    EXIT_STORAGE_FULL: "server storage full",
    EXIT_QUOTA: "over the account's quota",
    EXIT_LOCAL_FULL: "local disk full",
    EXIT_PROTECTED: "removal refused by the account's delete protection",
    EXIT_SIGINT: "interrupted by Ctrl-C (SIGINT)",
    EXIT_SIGTERM: "stopped by SIGTERM",
}


class Fatal(Exception):
    """
    Stop with a one-line message and an exit code.
    """

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message
