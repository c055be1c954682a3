"""
The zip archive, shared by both sides: the records both sides read and
write, the rules an archive must follow, a zip made as it is read (backup
on the client, restore on the server) and a zip unpacked as it arrives
(backup on the server, restore on the client), with the disk I/O they need.

Imports nothing from L{backup_proto.server} or L{backup_client}.
"""
