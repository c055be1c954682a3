"""
What travels between client and server, shared by both: frames and their
schemas (L{frames}), error codes (L{errors}), the session's key exchange
and chunk ciphers (L{crypto}), the POSIX C{cksum} CRC (L{cksum}) and the
chunked, encrypted transfer of one zip (L{transfer}).

Imports nothing from L{backup_proto.server} or L{backup_client}.
"""
