# -*- test-case-name: tests.test_server -*-
"""
Error codes shared by the server, the client and the wire spec.

Every error the server sends is an C{ERROR} frame carrying one of these codes
and a one-line message meant for a person; the client maps the code to its
exit status (see L{backup_client.cli}).
"""


class Code:
    """
    The error codes of C{docs/protocol.rst}, section "Errors".
    """

    BAD_FRAME = "bad-frame"  # malformed or oversized frame
    BAD_STATE = "bad-state"  # a message not allowed in the current state
    BAD_MESSAGE = "bad-message"  # a field is missing, of the wrong type...
    AUTH_FAILED = "auth-failed"  # unknown user or wrong password (same text)
    TOO_MANY_ATTEMPTS = "too-many-attempts"
    NAME_TAKEN = "name-taken"
    BAD_USERNAME = "bad-username"
    BAD_PASSWORD = "bad-password"
    BAD_KEY = "bad-key"
    TIMEOUT = "timeout"
    TOO_LARGE = "too-large"  # a declared size over the server's limit
    BAD_UPLOAD = "bad-upload"  # more or fewer bytes than declared, bad chunk
    BAD_ARCHIVE = "bad-archive"  # the zip failed validation
    VERIFY_FAILED = "verify-failed"  # checksum mismatch after all resends
    NOT_FOUND = "not-found"  # no such snapshot (or not yours)
    PARENT_CHANGED = "parent-changed"  # an incremental's parent changed or went
    STORAGE_FULL = "storage-full"
    QUOTA_EXCEEDED = "quota-exceeded"  # the account's quota would be passed
    PROTECTED = "protected"  # the account's delete protection refuses a removal
    ACCOUNT_DISABLED = "account-disabled"  # the operator disabled the account
    BUSY = "busy"
    SHUTTING_DOWN = "shutting-down"  # the server is stopping: try again later
    INTERNAL = "internal"


class ProtocolError(Exception):
    """
    A peer broke the protocol, or a request cannot be served.

    @ivar code: one of the L{Code} constants.
    @ivar message: a one-line explanation for a person; never a traceback,
        a path on the server, or a secret.
    """

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        return self.message
