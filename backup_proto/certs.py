# -*- test-case-name: tests.test_tap -*-
"""
C{backup-certs}: a private CA and a server certificate for development.

Writes C{ca.pem}, C{ca.key}, C{server.pem} and C{server.key} (EC P-256,
SHA-256 signatures); private keys get mode 0600 and no file is overwritten
without C{--force}.  See C{certs/README.rst} for real deployments.
"""

import argparse
import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
FILES = ("ca.pem", "ca.key", "server.pem", "server.key")


def _name(common):
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "backup_proto development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _subjectAltNames(hosts):
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def makeCertificates(hosts=DEFAULT_HOSTS, days=825):
    """
    @return: C{{filename: PEM bytes}} for a new CA and a server certificate
        valid for C{hosts} (DNS names or IP addresses).
    """
    now = datetime.datetime.now(datetime.timezone.utc)
    caKey = ec.generate_private_key(ec.SECP256R1())
    caName = _name("backup_proto development CA")
    caCert = (
        x509.CertificateBuilder()
        .subject_name(caName)
        .issuer_name(caName)
        .public_key(caKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(caKey.public_key()), critical=False
        )
        .sign(caKey, hashes.SHA256())
    )
    serverKey = ec.generate_private_key(ec.SECP256R1())
    serverCert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(caName)
        .public_key(serverKey.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_subjectAltNames(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()),
            critical=False,
        )
        .sign(caKey, hashes.SHA256())
    )

    def keyPEM(key):
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    return {
        "ca.pem": caCert.public_bytes(serialization.Encoding.PEM),
        "ca.key": keyPEM(caKey),
        "server.pem": serverCert.public_bytes(serialization.Encoding.PEM),
        "server.key": keyPEM(serverKey),
    }


def writeCertificates(directory, files, force=False):
    """
    Write the files; keys with mode 0600.

    @raise FileExistsError: if one exists and C{force} is false (then none
        is written).
    """
    os.makedirs(directory, exist_ok=True)
    if not force:
        for name in files:
            if os.path.exists(os.path.join(directory, name)):
                raise FileExistsError(os.path.join(directory, name))
    for name, data in files.items():
        path = os.path.join(directory, name)
        mode = 0o600 if name.endswith(".key") else 0o644
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="backup-certs",
        description="Create a private CA and a server certificate signed by it "
        "(for development and tests; see certs/README.rst for production).",
    )
    parser.add_argument("--dir", default="certs", help="output folder (default: certs)")
    parser.add_argument(
        "--host",
        action="append",
        dest="hosts",
        metavar="NAME",
        help="a DNS name or IP address for the server certificate (repeatable;"
        " default: localhost, 127.0.0.1, ::1)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    hosts = tuple(args.hosts) if args.hosts else DEFAULT_HOSTS
    try:
        writeCertificates(args.dir, makeCertificates(hosts), force=args.force)
    except FileExistsError as e:
        print(f"backup-certs: {e} exists; use --force to replace it", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"backup-certs: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1
    print(f"wrote {', '.join(FILES)} to {args.dir} for {', '.join(hosts)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run():
    """
    Console-script entry point.
    """
    sys.exit(main())
