"""
The C{twistd backup-server} plugin: one line, the real code is in
L{backup_proto.server.tap}.
"""

from twisted.application.service import ServiceMaker

backupServer = ServiceMaker(
    "Backup server",
    "backup_proto.server.tap",
    "TLS backup server: accounts, encrypted uploads, snapshots and restores.",
    "backup-server",
)
