"""A small X.509 CA for the dev environment and the tests, the server's TLS check,
and the one rule naming the identity a client certificate stands for.

Issues the server certificate with both `DNS:localhost` and the listen
host as SANs (strict gRPC clients check them) and client certificates whose
CN is the identity the server will see. Private keys are written 0600.
`check_server_files` proves, before the server binds a port, that its
certificate and key belong together and that its client CA is a certificate,
so a mistake there is named as such (gRPC only reports that it cannot bind).
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["DevCA", "check_server_files", "identity_from_cert", "write_private"]


@functools.lru_cache(maxsize=1024)
def identity_from_cert(pem: bytes) -> str:
    """First URI SAN of the certificate, else its subject common name (cached per
    certificate: the TLS layer verified it, and the same bytes name the same identity)."""
    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        if uris:
            return str(uris[0])
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by its owner only (0600 from creation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _spki(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def check_server_files(cert: Path, key: Path, client_ca: Path | None = None) -> None:
    """ValueError naming the file unless `key` is the private key of `cert`'s (first)
    certificate, and `client_ca` (if given) holds PEM certificates."""
    try:
        leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
    except (OSError, ValueError) as e:
        raise ValueError(f"{cert} is not a PEM certificate ({e})") from None
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), None)
    except TypeError:
        raise ValueError(f"{key} is encrypted; the server needs an unencrypted key") from None
    except (OSError, ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"{key} is not a PEM private key ({e})") from None
    if _spki(private.public_key()) != _spki(leaf.public_key()):
        raise ValueError(
            f"the key {key} does not match the certificate {cert} (another key pair's "
            "certificate or key); use the key the certificate was issued for"
        )
    if client_ca is not None:
        try:
            x509.load_pem_x509_certificates(client_ca.read_bytes())
        except (OSError, ValueError) as e:
            raise ValueError(f"{client_ca} is not a PEM certificate ({e})") from None


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class DevCA:
    def __init__(self, name: str = "signer dev CA", days: int = 365) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.days = days
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    @classmethod
    def load(cls, cert_pem: bytes, key_pem: bytes, days: int = 365) -> DevCA:
        """The CA written by `save`, to issue more certificates."""
        ca = cls.__new__(cls)
        key = serialization.load_pem_private_key(key_pem, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        ca.key, ca.cert, ca.days = key, x509.load_pem_x509_certificate(cert_pem), days
        return ca

    def save(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.pem)
        write_private(key_path, _pem_key(self.key))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, cn: str, *, server_hosts: list[str] | None = None, uri: str | None = None
    ) -> tuple[bytes, bytes]:
        """Return (certificate PEM, private key PEM) for a server or client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=self.days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        names: list[x509.GeneralName] = []
        if server_hosts is not None:
            for host in dict.fromkeys(["localhost", "127.0.0.1", *server_hosts]):
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            usage = ExtendedKeyUsageOID.SERVER_AUTH
        else:
            usage = ExtendedKeyUsageOID.CLIENT_AUTH
        if uri is not None:
            names.append(x509.UniformResourceIdentifier(uri))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).sign(
            self.key, hashes.SHA256()
        )
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)
