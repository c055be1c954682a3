"""
Tests for L{backup_proto.wire.crypto}: key vetting, key wrap, chunk sealing.
"""

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from backup_proto.wire import crypto
from backup_proto.wire.errors import Code, ProtocolError
from tests.helpers import TestCase, clientKey


def _pem(publicKey):
    return publicKey.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _fakeRSA(bits, e=65537):
    """
    A syntactically valid RSA public key of C{bits} bits (not a real
    modulus: loading does not check primality).
    """
    n = (1 << (bits - 1)) | 1 | (0x5A5A << 8)
    return rsa.RSAPublicNumbers(e, n).public_key()


class KeyVettingTests(TestCase):
    def refused(self, pem):
        e = self.assertRaises(ProtocolError, crypto.loadClientPublicKey, pem)
        self.assertEqual(e.code, Code.BAD_KEY)
        return e

    def test_goodKey(self):
        """
        A 3072-bit RSA key with e=65537 is accepted.
        """
        key = crypto.loadClientPublicKey(crypto.publicKeyPEM(clientKey()))
        self.assertEqual(key.key_size, 3072)

    def test_otherType(self):
        """
        An EC key is refused.
        """
        self.refused(_pem(ec.generate_private_key(ec.SECP256R1()).public_key()))

    def test_sizes(self):
        """
        RSA keys under 2048 or over 8192 bits are refused; the bounds pass.
        """
        self.refused(_pem(_fakeRSA(1024)))
        self.refused(_pem(_fakeRSA(8200)))
        crypto.loadClientPublicKey(_pem(_fakeRSA(2048)))
        crypto.loadClientPublicKey(_pem(_fakeRSA(8192)))

    def test_exponent(self):
        """
        An exponent other than 65537 is refused.
        """
        self.refused(_pem(_fakeRSA(3072, e=3)))

    def test_garbage(self):
        """
        Bytes that are not a PEM key, or too many of them, are refused.
        """
        self.refused(b"not a key")
        self.refused(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 20000)


class WrapTests(TestCase):
    def test_roundTrip(self):
        """
        A wrapped secret unwraps with the private key.
        """
        secret = crypto.newSessionSecret()
        wrapped = crypto.wrapSecret(clientKey().public_key(), secret)
        self.assertEqual(crypto.unwrapSecret(clientKey(), wrapped), secret)
        self.assertEqual(len(secret), 32)

    def test_fresh(self):
        """
        Every session gets a different secret.
        """
        self.assertNotEqual(crypto.newSessionSecret(), crypto.newSessionSecret())

    def test_tampered(self):
        """
        A tampered wrap fails with one generic error.
        """
        wrapped = bytearray(crypto.wrapSecret(clientKey().public_key(), b"k" * 32))
        wrapped[10] ^= 1
        e = self.assertRaises(ProtocolError, crypto.unwrapSecret, clientKey(), bytes(wrapped))
        self.assertEqual(e.code, Code.BAD_KEY)


class ChunkTests(TestCase):
    def setUp(self):
        super().setUp()
        self.ciphers = crypto.SessionCiphers(b"s" * 32)

    def test_roundTrip(self):
        """
        A sealed chunk opens at the same position.
        """
        sealed = self.ciphers.upload.seal(1, 10, 0, b"0123456789")
        self.assertEqual(self.ciphers.upload.open(1, 10, 0, sealed), b"0123456789")

    def test_directionsDiffer(self):
        """
        The two directions use different keys: the same position and
        plaintext seal differently, and one cannot open the other's.
        """
        up = self.ciphers.upload.seal(1, 3, 0, b"abc")
        down = self.ciphers.download.seal(1, 3, 0, b"abc")
        self.assertNotEqual(up, down)
        self.assertRaises(ProtocolError, self.ciphers.download.open, 1, 3, 0, up)

    def test_positionBound(self):
        """
        A chunk moved to another index, transfer, or stream size, or marked
        last when it is not, fails to open.
        """
        size = crypto.CHUNK_SIZE * 2
        sealed = self.ciphers.upload.seal(1, size, 0, b"x" * crypto.CHUNK_SIZE)
        for transfer, s, index in ((1, size, 1), (2, size, 0), (1, crypto.CHUNK_SIZE, 0)):
            self.assertRaises(ProtocolError, self.ciphers.upload.open, transfer, s, index, sealed)

    def test_bitFlip(self):
        """
        A flipped bit fails authentication.
        """
        sealed = bytearray(self.ciphers.upload.seal(1, 3, 0, b"abc"))
        sealed[0] ^= 0x80
        e = self.assertRaises(ProtocolError, self.ciphers.upload.open, 1, 3, 0, bytes(sealed))
        self.assertEqual(e.code, Code.BAD_UPLOAD)

    def test_chunkArithmetic(self):
        """
        Empty streams have one empty chunk; lengths add up to the size.
        """
        self.assertEqual(crypto.chunkCount(0), 1)
        self.assertEqual(crypto.chunkLength(0, 0), 0)
        size = crypto.CHUNK_SIZE * 3 + 5
        self.assertEqual(crypto.chunkCount(size), 4)
        self.assertEqual(sum(crypto.chunkLength(size, i) for i in range(4)), size)
        self.assertEqual(crypto.chunkCount(crypto.CHUNK_SIZE), 1)
