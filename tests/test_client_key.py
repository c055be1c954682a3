"""
The client's RSA key is made once and kept private in its config folder.
"""

import os
import stat

from backup_client.connecting import loadOrCreateKey
from tests.helpers import TestCase


class ClientKeyTests(TestCase):
    def test_keptAndReused(self):
        """
        The first call makes a key in a 0600 file; the next call loads the
        same key rather than making another.
        """
        directory = os.path.join(self.mktemp(), "config")
        first = loadOrCreateKey(directory)
        path = os.path.join(directory, "client_key.pem")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        again = loadOrCreateKey(directory)
        self.assertEqual(again.private_numbers(), first.private_numbers())

    def test_unreadableKeyReplaced(self):
        """
        A key file that is not a key is replaced by a new key.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "client_key.pem")
        with open(path, "wb") as f:
            f.write(b"not a key")
        key = loadOrCreateKey(directory)
        self.assertEqual(loadOrCreateKey(directory).private_numbers(), key.private_numbers())
        with open(path, "rb") as f:
            self.assertIn(b"PRIVATE KEY", f.read())
