"""
backup_proto: a Twisted TLS backup server and the pieces its client shares.

The server is started with C{twistd backup-server} (see L{backup_proto.server.tap});
the terminal client is the C{backup_client} package (C{backup-client}).
"""

__version__ = "0.1.0"
