"""
backup_client: the terminal client of backup_proto (C{backup-client}).

Installed as C{backup_client}; the source folder is C{client/}.
"""
