"""
backup_client: the terminal client of backup_proto (C{backup-client}).

Never imports L{backup_proto.server}.
"""
