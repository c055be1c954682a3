"""
The server: the connection adapter and session state machine, accounts,
the snapshot store and its database, login throttling, thread pools, and
the C{twistd backup-server} plugin's options (L{tap}).

Never imported by L{backup_client}, L{backup_proto.wire} or
L{backup_proto.archive}.
"""
