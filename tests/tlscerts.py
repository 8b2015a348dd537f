"""Certificates made for the TLS tests (trustme, with cryptography for the revocation list).

`make_certs(directory)` writes, as PEM files: a CA (ca.pem); the broker's certificate for localhost and
127.0.0.1 (server.pem, server.key); a client certificate with CN "sensor-1" (client.pem, client.key);
a server certificate that expired (expired.pem, expired.key); a client certificate revoked by the CA
(revoked.pem, revoked.key) and the CA's revocation list naming it (crl.pem); a client certificate from
another CA (stranger.pem, stranger.key); and returns a `Certs` with every path.
"""
from __future__ import annotations

import datetime
import os
from typing import NamedTuple

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization


class Certs(NamedTuple):
    dir: str
    ca: str
    server: str
    server_key: str
    client: str
    client_key: str
    expired: str
    expired_key: str
    revoked: str
    revoked_key: str
    crl: str
    stranger: str
    stranger_key: str
    other_ca: str


CLIENT_SUBJECT = "CN=sensor-1,OU=greenhouse,O=edgebroker tests"


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_certs(directory: str) -> Certs:
    os.makedirs(directory, exist_ok=True)
    p = lambda name: os.path.join(directory, name)  # noqa: E731
    ca = trustme.CA()
    ca.cert_pem.write_to_path(p("ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    server.cert_chain_pems[0].write_to_path(p("server.pem"))
    server.private_key_pem.write_to_path(p("server.key"))
    client = ca.issue_cert("sensor-1@example", common_name="sensor-1", organization_name="edgebroker tests",
                           organization_unit_name="greenhouse")
    client.cert_chain_pems[0].write_to_path(p("client.pem"))
    client.private_key_pem.write_to_path(p("client.key"))
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = ca.issue_cert("localhost", "127.0.0.1", not_before=now - datetime.timedelta(days=30),
                            not_after=now - datetime.timedelta(days=1))
    expired.cert_chain_pems[0].write_to_path(p("expired.pem"))
    expired.private_key_pem.write_to_path(p("expired.key"))
    revoked = ca.issue_cert("revoked@example", common_name="revoked-1")
    revoked.cert_chain_pems[0].write_to_path(p("revoked.pem"))
    revoked.private_key_pem.write_to_path(p("revoked.key"))
    other = trustme.CA()
    other.cert_pem.write_to_path(p("other-ca.pem"))
    stranger = other.issue_cert("stranger@example", common_name="stranger")
    stranger.cert_chain_pems[0].write_to_path(p("stranger.pem"))
    stranger.private_key_pem.write_to_path(p("stranger.key"))

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    revoked_serial = x509.load_pem_x509_certificate(revoked.cert_chain_pems[0].bytes()).serial_number
    entry = (x509.RevokedCertificateBuilder().serial_number(revoked_serial)
             .revocation_date(now - datetime.timedelta(minutes=5)).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
           .last_update(now - datetime.timedelta(minutes=10)).next_update(now + datetime.timedelta(days=30))
           .add_revoked_certificate(entry).sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    _write(p("crl.pem"), crl.public_bytes(serialization.Encoding.PEM))
    return Certs(directory, p("ca.pem"), p("server.pem"), p("server.key"), p("client.pem"), p("client.key"),
                 p("expired.pem"), p("expired.key"), p("revoked.pem"), p("revoked.key"), p("crl.pem"),
                 p("stranger.pem"), p("stranger.key"), p("other-ca.pem"))
