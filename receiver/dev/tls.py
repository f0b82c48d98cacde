"""A self-signed certificate for `osma-router dev --https`, made with `cryptography`.

The certificate names `localhost`, `127.0.0.1` and `::1`, lives next to its key in
`.osma-router/tls/` of the working directory and is reused while it is valid, so a
browser or an OS trust store that was told to trust it keeps trusting it.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..exceptions import ConfigError

DEV_TLS_DIR = Path(".osma-router") / "tls"
DNS_NAMES = ("localhost",)
IP_ADDRESSES = ("127.0.0.1", "::1")
VALID_FOR = timedelta(days=365)
RENEW_BEFORE = timedelta(days=7)


@dataclass(frozen=True)
class DevCertificate:
    """Paths of a development certificate and its private key, and when it expires."""

    cert: Path
    key: Path
    not_after: datetime
    created: bool


def ensure_dev_certificate(directory: Path = DEV_TLS_DIR, now: datetime | None = None) -> DevCertificate:
    """The certificate in `directory`, made anew when missing, unreadable or about to expire."""
    now = now or datetime.now(UTC)
    cert_path, key_path = directory / "localhost.pem", directory / "localhost-key.pem"
    existing = _still_valid(cert_path, key_path, now)
    if existing is not None:
        return DevCertificate(cert_path, key_path, existing, created=False)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        cert_pem, key_pem, not_after = make_self_signed(now)
        _write_private(key_path, key_pem)
        cert_path.write_bytes(cert_pem)
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot write the development certificate: {exc.strerror}") from None
    return DevCertificate(cert_path, key_path, not_after, created=True)


def make_self_signed(now: datetime) -> tuple[bytes, bytes, datetime]:
    """A P-256 key and a certificate for localhost signed by itself, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "localhost"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "osma-router dev"),
        ]
    )
    not_after = now + VALID_FOR
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in DNS_NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in IP_ADDRESSES]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, not_after


def trust_instructions(cert: Path, url: str) -> str:
    """What to tell a developer so their tools accept the certificate."""
    path = cert.resolve()
    return (
        f"  TLS      : self-signed certificate {path}\n"
        f"             curl:    curl --cacert {path} {url}/healthz\n"
        f"             Python:  SSL_CERT_FILE={path} (or httpx.Client(verify='{path}'))\n"
        f"             Debian/Ubuntu: sudo cp {path} /usr/local/share/ca-certificates/osma-router-dev.crt"
        f" && sudo update-ca-certificates\n"
        f"             macOS:   sudo security add-trusted-cert -d -r trustAsRoot"
        f" -k /Library/Keychains/System.keychain {path}\n"
        f"             browsers: import it as a trusted certificate, or accept the warning once\n"
    )


def _still_valid(cert_path: Path, key_path: Path, now: datetime) -> datetime | None:
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return None
    not_after = cert.not_valid_after_utc
    return not_after if not_after - now > RENEW_BEFORE else None


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)
