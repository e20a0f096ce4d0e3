"""Make a development CA and a server certificate for the SuperLink (QUIC and HTTPS).

    python -m flq.transport.certs OUTDIR [--name HOST_OR_IP ...] [--days N]

writes the files Flower's own TLS guide uses: ``ca.crt`` (give it to SuperNodes with
``--root-certificates`` and to ``flwr`` in the connection's ``root-certificates``),
``ca.key``, ``server.pem`` and ``server.key`` (give them to the SuperLink with
``--ssl-certfile`` / ``--ssl-keyfile`` / ``--ssl-ca-certfile``). The server certificate names
localhost, 127.0.0.1 and ::1 plus every ``--name``. For development only: keep ca.key
private, and use a real CA in production.
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

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FLQ development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def make_certificates(
    outdir: str | os.PathLike, names: list[str] | tuple[str, ...] = (), days: int = 365
) -> dict[str, Path]:
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    all_names = list(dict.fromkeys([*DEFAULT_NAMES, *names]))
    now = datetime.datetime.now(datetime.UTC)
    valid_from, valid_to = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("FLQ development CA"))
        .issuer_name(_name("FLQ development CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(all_names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from)
        .not_valid_after(valid_to)
        .add_extension(_san(all_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    key_format = dict(
        encoding=pem, format=serialization.PrivateFormat.PKCS8, encryption_algorithm=serialization.NoEncryption()
    )
    paths = {
        k: out / f
        for k, f in (
            ("ca_cert", "ca.crt"),
            ("ca_key", "ca.key"),
            ("server_cert", "server.pem"),
            ("server_key", "server.key"),
        )
    }
    _write(paths["ca_cert"], ca_cert.public_bytes(pem))
    _write(paths["ca_key"], ca_key.private_bytes(**key_format), private=True)
    _write(paths["server_cert"], server_cert.public_bytes(pem))
    _write(paths["server_key"], server_key.private_bytes(**key_format), private=True)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flq.transport.certs", description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="folder to write ca.crt, ca.key, server.pem, server.key into")
    parser.add_argument(
        "--name",
        action="append",
        default=[],
        help="extra DNS name or IP address for the server certificate (repeatable)",
    )
    parser.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    args = parser.parse_args(argv)
    paths = make_certificates(args.outdir, args.name, args.days)
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
