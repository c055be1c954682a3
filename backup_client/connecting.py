# -*- test-case-name: tests.test_e2e,tests.test_client_key -*-
"""
Reaching the server for a command: its address, the CA that vouches for
it, the client's RSA key, the password, a logged-in session with keys
exchanged, and what a lost or refused connection is in words.
"""

import getpass
import os
import re
import sys

from twisted.internet.defer import TimeoutError as NoAnswer
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    ConnectionRefusedError,
    DNSLookupError,
    NoRouteError,
    TimeoutError,
)
from twisted.internet.ssl import (
    Certificate,
    TLSVersion,
    optionsForClientTLS,
    trustRootFromCertificates,
)
from twisted.internet.threads import deferToThread

from backup_client.config import configDir
from backup_client.exitcodes import EXIT_UNREACHABLE, EXIT_USAGE, Fatal
from backup_client.interrupts import Interrupts
from backup_client.protocol import BackupClientProtocol
from backup_proto.wire import crypto
from backup_proto.wire.frames import DEFAULT_PORT

CONNECT_TIMEOUT = 15

#: Seconds to wait for the handshake and each login-phase answer (the
#: server may delay a throttled login by up to a minute).
ANSWER_TIMEOUT = 90


def parseServer(text):
    """
    @return: C{(host, port)} from C{HOST}, C{HOST:PORT} or C{[V6]:PORT}.
    """
    host, port = text, DEFAULT_PORT
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed [ in server address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("bad server address")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, portText = text.split(":")
        port = int(portText)
    if not host or not 0 < port < 65536:
        raise ValueError("bad server address")
    return host, port


def firstLine(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except OSError as e:
        raise Fatal(EXIT_USAGE, f"cannot read {what}: {e.strerror}") from None


def readPassword(args, confirm):
    if args.password_file:
        return firstLine(args.password_file, "password file")
    if os.environ.get("BACKUP_PASSWORD") is not None:
        return os.environ["BACKUP_PASSWORD"]
    if not sys.stdin.isatty():
        raise Fatal(
            EXIT_USAGE,
            "no password: use --password-file or BACKUP_PASSWORD"
            " (or run on a terminal to be asked)",
        )
    with interruptsOf(args).prompting():
        password = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Password (again): ") != password:
            raise Fatal(EXIT_USAGE, "passwords do not match")
    return password


def interruptsOf(args):
    """
    @return: the command's L{Interrupts} (L{backup_client.cli.run} sets one).
    """
    if getattr(args, "interrupts", None) is None:
        args.interrupts = Interrupts()
    return args.interrupts


def loadOrCreateKey(directory):
    """
    The client's RSA key, kept in C{directory/client_key.pem} (mode 0600)
    so that it is not generated on every run (blocking).
    """
    from cryptography.hazmat.primitives import serialization

    path = os.path.join(directory, "client_key.pem")
    try:
        with open(path, "rb") as f:
            # our own key, private to this user: its consistency checks
            # (about 90 ms for RSA-3072) would only re-prove what
            # generateClientKey made
            key = serialization.load_pem_private_key(
                f.read(), None, unsafe_skip_rsa_key_validation=True
            )
        if key.key_size >= crypto.CLIENT_RSA_BITS:
            return key
    except (FileNotFoundError, ValueError, TypeError):
        pass
    key = crypto.generateClientKey()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    os.replace(tmp, path)
    return key


def trustRoot(args):
    path = args.ca or ("certs/ca.pem" if os.path.exists("certs/ca.pem") else None)
    if path is None:
        raise Fatal(EXIT_USAGE, "no CA certificate: give --ca FILE or set BACKUP_CA")
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise Fatal(EXIT_USAGE, f"cannot read CA certificate {path}: {e.strerror}") from None
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", pem, re.DOTALL)
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except Exception:
        certificates = []
    if not certificates:
        raise Fatal(EXIT_USAGE, f"{path} holds no PEM certificate")
    return trustRootFromCertificates(certificates)


def describeLoss(reason):
    """
    @return: C{(exit code, message)} for a connection that ended early.
    """
    from OpenSSL.SSL import Error as SSLError
    from service_identity import VerificationError

    value = reason.value
    if isinstance(value, (SSLError, VerificationError)):
        return EXIT_UNREACHABLE, f"server not trusted: TLS verification failed ({value})"
    return EXIT_UNREACHABLE, "connection to the server was lost"


def connectFailure(error):
    """
    @return: why a connection could not be made, for a person.
    """
    if isinstance(error, DNSLookupError):
        return "no such host (the name did not resolve)"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is the server running, on that port?)"
    if isinstance(error, (TimeoutError, ConnectingCancelledError)):
        return f"no answer within {CONNECT_TIMEOUT} s"
    if isinstance(error, NoRouteError):
        return "no route to the host"
    if isinstance(error, ConnectError) and isinstance(error.osError, int):
        return os.strerror(error.osError).lower()
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return "the connection failed"


async def connect(reactor, args):
    try:
        host, port = parseServer(args.server)
    except ValueError as e:
        raise Fatal(EXIT_USAGE, f"--server {args.server!r}: {e}") from None
    options = optionsForClientTLS(
        host,
        trustRoot=trustRoot(args),
        extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3},
    )
    endpoint = wrapClientTLS(
        options, HostnameEndpoint(reactor, host, port, timeout=CONNECT_TIMEOUT)
    )
    proto = BackupClientProtocol(deferToThread, reactor)
    connecting = connectProtocol(endpoint, proto)
    interrupts = interruptsOf(args)
    interrupts.onInterrupt(connecting.cancel)
    try:
        await connecting
    except (ConnectError, ConnectingCancelledError, TimeoutError, OSError) as e:
        interrupts.check()
        raise Fatal(EXIT_UNREACHABLE, f"cannot reach {args.server}: {connectFailure(e)}") from None
    # whatever waits on the server then fails, and the server drops its
    # staging data
    interrupts.onInterrupt(proto.abort)
    return proto


async def answered(reactor, proto, d):
    """
    Wait for an answer to a login-phase request (the TLS handshake happens
    here too): a server that accepts the connection but never answers is
    "unreachable" after L{ANSWER_TIMEOUT} seconds, not a hang.
    """
    d.addTimeout(ANSWER_TIMEOUT, reactor)
    try:
        return await d
    except NoAnswer:
        proto.transport.abortConnection()
        raise Fatal(EXIT_UNREACHABLE, f"no answer from the server in {ANSWER_TIMEOUT} s") from None


async def openSession(reactor, args, user, password):
    key = await deferToThread(loadOrCreateKey, configDir(args.config_dir))
    proto = await connect(reactor, args)
    await answered(reactor, proto, proto.login(user, password))
    await answered(reactor, proto, proto.exchangeKeys(key))
    return proto


def needUser(args):
    if not args.user:
        raise Fatal(EXIT_USAGE, "no username: use --user or BACKUP_USER")
    return args.user


def isQuiet(args):
    return args.quiet or getattr(args, "quiet2", False) or not sys.stderr.isatty()
