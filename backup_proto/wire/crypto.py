# -*- test-case-name: tests.test_crypto -*-
"""
The application-layer cryptography on top of TLS (C{docs/protocol.rst},
"Cryptography").

After login the client sends an RSA public key; the server draws a fresh
32-byte session secret, wraps it with RSA-OAEP (SHA-256), and both sides
derive two AES-256-GCM keys from it with HKDF-SHA256, one per direction, so
that an upload and a restore in one session can never share a (key, nonce).

Each transfer has a number, unique per direction within the session.  Chunk
C{i} of transfer C{t} is sealed with the nonce C{direction || t || i} and
the associated data C{label || size || i || last}: reordering, replaying,
dropping, truncating or extending a stream makes a chunk fail to open.
"""

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from backup_proto.wire.errors import Code, ProtocolError

#: Plaintext bytes per DATA chunk (the last chunk of a transfer may be
#: shorter, or empty for an empty stream).
CHUNK_SIZE = 64 * 1024
#: Bytes the AES-GCM tag adds to each chunk.
TAG_SIZE = 16
#: Bytes of the session secret and of each derived AES key.
SECRET_SIZE = 32

MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
CLIENT_RSA_BITS = 3072
MAX_PUBLIC_KEY_PEM = 16 * 1024

#: Direction numbers, used in HKDF info and in nonces.
CLIENT_TO_SERVER = 1
SERVER_TO_CLIENT = 2

_OAEP_LABEL = b"backup-proto session secret v1"
_AAD_LABEL = b"backup-proto/1"
_MAX_TRANSFER = 2**24 - 1


def _oaep():
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()),
        algorithm=hashes.SHA256(),
        label=_OAEP_LABEL,
    )


def generateClientKey(bits=CLIENT_RSA_BITS):
    """
    @return: a new RSA private key for the client (e = 65537).
    """
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def publicKeyPEM(privateKey):
    """
    @return: the PEM (SubjectPublicKeyInfo) of C{privateKey}'s public half.
    """
    return privateKey.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def loadClientPublicKey(pem):
    """
    Load and vet the public key a client sent.

    @param pem: PEM bytes.
    @raise ProtocolError: (L{Code.BAD_KEY}) unless it is an RSA key of
        2048..8192 bits with exponent 65537.
    @return: the L{rsa.RSAPublicKey}.
    """
    if len(pem) > MAX_PUBLIC_KEY_PEM:
        raise ProtocolError(Code.BAD_KEY, "public key too large")
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, Exception):
        raise ProtocolError(Code.BAD_KEY, "public key is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolError(Code.BAD_KEY, "public key must be an RSA key")
    if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
        raise ProtocolError(
            Code.BAD_KEY,
            f"RSA key must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {key.key_size}",
        )
    if key.public_numbers().e != 65537:
        raise ProtocolError(Code.BAD_KEY, "RSA public exponent must be 65537")
    return key


def newSessionSecret():
    """
    @return: 32 fresh random bytes: one session's secret.
    """
    return os.urandom(SECRET_SIZE)


def wrapSecret(publicKey, secret):
    """
    @return: C{secret} encrypted to C{publicKey} with RSA-OAEP (SHA-256).
    """
    return publicKey.encrypt(secret, _oaep())


def unwrapSecret(privateKey, wrapped):
    """
    @raise ProtocolError: (L{Code.BAD_KEY}) if it does not decrypt to a
        32-byte secret; one generic message, never an oracle.
    """
    try:
        secret = privateKey.decrypt(wrapped, _oaep())
    except ValueError:
        raise ProtocolError(Code.BAD_KEY, "session key could not be unwrapped") from None
    if len(secret) != SECRET_SIZE:
        raise ProtocolError(Code.BAD_KEY, "session key could not be unwrapped")
    return secret


def _directionKey(secret, direction):
    return HKDF(
        algorithm=hashes.SHA256(),
        length=SECRET_SIZE,
        salt=None,
        info=b"backup-proto/1 direction %d" % (direction,),
    ).derive(secret)


def chunkCount(size):
    """
    @return: how many DATA chunks carry a stream of C{size} bytes (an empty
        stream is one empty chunk, so that every stream has a last chunk).
    """
    return max(1, -(-size // CHUNK_SIZE))


def chunkLength(size, index):
    """
    @return: the plaintext length of chunk C{index} of a C{size}-byte stream.
    """
    last = chunkCount(size) - 1
    if index < last:
        return CHUNK_SIZE
    return size - last * CHUNK_SIZE


class ChunkCipher:
    """
    Seals or opens the chunks of one direction of one session.

    @ivar _aead: the L{AESGCM} of this direction's key.
    @ivar _direction: L{CLIENT_TO_SERVER} or L{SERVER_TO_CLIENT}.
    """

    def __init__(self, secret, direction):
        self._aead = AESGCM(_directionKey(secret, direction))
        self._direction = direction

    def _nonceAndAAD(self, transfer, size, index):
        if not 1 <= transfer <= _MAX_TRANSFER:
            raise ValueError("transfer number out of range")
        last = index == chunkCount(size) - 1
        nonce = struct.pack("!B", self._direction) + struct.pack("!I", transfer)[1:]
        nonce += struct.pack("!Q", index)
        aad = _AAD_LABEL + struct.pack("!QQB", size, index, last)
        return nonce, aad

    def seal(self, transfer, size, index, plaintext):
        """
        @return: ciphertext and tag of chunk C{index} of transfer C{transfer}
            of a C{size}-byte stream.
        """
        nonce, aad = self._nonceAndAAD(transfer, size, index)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, transfer, size, index, sealed):
        """
        @raise ProtocolError: (L{Code.BAD_UPLOAD}) if the chunk does not
            authenticate as chunk C{index} of this transfer.
        @return: the plaintext.
        """
        nonce, aad = self._nonceAndAAD(transfer, size, index)
        try:
            return self._aead.decrypt(nonce, sealed, aad)
        except InvalidTag:
            raise ProtocolError(Code.BAD_UPLOAD, f"chunk {index} failed authentication") from None


class SessionCiphers:
    """
    Both directions' L{ChunkCipher}s of one session, from its secret.

    @ivar upload: client-to-server chunks (backups).
    @ivar download: server-to-client chunks (restores).
    """

    def __init__(self, secret):
        self.upload = ChunkCipher(secret, CLIENT_TO_SERVER)
        self.download = ChunkCipher(secret, SERVER_TO_CLIENT)
