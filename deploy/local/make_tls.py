"""Test-only TLS material for the local stack's SSL and SASL_SSL listeners, run by stack.sh.

`make_tls.py DIR` writes, fresh each time:

- ca.pem: a self-signed CA (the truststore of broker and clients),
- broker.pem: the broker's key (PKCS#8, unencrypted) and certificate, for
  127.0.0.1 and localhost, signed by the CA (Kafka's PEM keystore),
- client.pem, client-key.pem: a client certificate and key signed by the CA,
  for the mutual-TLS listener (principal CN=worker),
- client-key-encrypted.pem: the same key encrypted with the password
  `client-key-secret`, to test `kafka.ssl_key_password`.

Keys and passwords here protect nothing: never use them outside the local stack.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_KEY_PASSWORD = b"client-key-secret"
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "kinesis-destination local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: list[x509.ObjectIdentifier] | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def make(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("kinesis-destination local test CA")
    ca = _certificate("kinesis-destination local test CA", ca_key, ca_name, ca_key, ca=True)

    broker_key = ec.generate_private_key(ec.SECP256R1())
    broker = _certificate(
        "localhost",
        broker_key,
        ca_name,
        ca_key,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
        names=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate(
        "worker", client_key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )

    _write(folder / "ca.pem", _pem_cert(ca))
    _write(folder / "broker.pem", _pem_key(broker_key) + _pem_cert(broker) + _pem_cert(ca))
    _write(folder / "client.pem", _pem_cert(client))
    _write(folder / "client-key.pem", _pem_key(client_key))
    _write(folder / "client-key-encrypted.pem", _pem_key(client_key, CLIENT_KEY_PASSWORD))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    make(parser.parse_args().folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
