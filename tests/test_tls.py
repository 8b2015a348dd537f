"""edgebroker.tls: the sans-IO TLS engine and the contexts built from Mosquitto's options.

Both sides of each connection are TlsEngines pumped in memory (no socket), with certificates made for
the test (tests/tlscerts.py): handshake, data both ways, data written before the handshake, client
certificates required / missing / from another CA / revoked, host name checks, garbage, close_notify,
ALPN; the configuration errors (unreadable file, key of another certificate, expired certificate).
"""
from __future__ import annotations

import datetime
import ssl

import pytest

from edgebroker.errors import ConfigError
from edgebroker.tls import (
    TlsEngine, TlsError, certificate_validity, client_context, common_name, server_context, subject_string,
)
from tlscerts import CLIENT_SUBJECT, Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def pump(a: TlsEngine, b: TlsEngine, rounds: int = 10):
    """Move bytes between the two engines until neither has any; returns what each received."""
    got_a, got_b = [], []
    for _ in range(rounds):
        out_a, out_b = a.data_to_send(), b.data_to_send()
        if not out_a and not out_b:
            break
        if out_a:
            got_b.append(b.feed(out_a))
        if out_b:
            got_a.append(a.feed(out_b))
    return b"".join(got_a), b"".join(got_b)


def test_handshake_and_data_both_ways(certs):
    server = TlsEngine.server(server_context(certs.server, certs.server_key))
    client = TlsEngine.client(client_context(cafile=certs.ca), "localhost")
    client.write(b"\x10 CONNECT before the handshake")  # waits for it
    assert not client.handshake_done
    to_client, to_server = pump(client, server)
    assert server.handshake_done and client.handshake_done
    assert to_server == b"\x10 CONNECT before the handshake"
    server.write(b"\x20\x02\x00\x00")
    big = bytes(range(256)) * 1000  # several records
    client.write(big)
    to_client, to_server = pump(client, server)
    assert to_client == b"\x20\x02\x00\x00" and to_server == big
    assert server.version in ("TLSv1.2", "TLSv1.3")
    assert server.peer_certificate() is None  # no client certificate asked for


def test_client_certificate_identity(certs):
    ctx = server_context(certs.server, certs.server_key, cafile=certs.ca, require_certificate=True)
    server = TlsEngine.server(ctx)
    client = TlsEngine.client(client_context(cafile=certs.ca, certfile=certs.client, keyfile=certs.client_key),
                              "127.0.0.1")
    pump(client, server)
    cert = server.peer_certificate()
    assert cert is not None
    assert common_name(cert) == "sensor-1"
    assert subject_string(cert) == CLIENT_SUBJECT


@pytest.mark.parametrize("who", ["none", "stranger", "revoked"])
def test_required_certificate_refused(certs, who):
    ctx = server_context(certs.server, certs.server_key, cafile=certs.ca, require_certificate=True,
                         crlfile=certs.crl)
    kw = {"none": {}, "stranger": dict(certfile=certs.stranger, keyfile=certs.stranger_key),
          "revoked": dict(certfile=certs.revoked, keyfile=certs.revoked_key)}[who]
    server = TlsEngine.server(ctx)
    client = TlsEngine.client(client_context(cafile=certs.ca, **kw), "localhost")
    with pytest.raises(TlsError) as info:
        pump(client, server)
    reason = {"none": "certificate", "stranger": "unable to get local issuer",
              "revoked": "revoked"}[who]
    assert reason in str(info.value)


def test_crl_lets_a_valid_client_in(certs):
    ctx = server_context(certs.server, certs.server_key, cafile=certs.ca, require_certificate=True,
                         crlfile=certs.crl)
    server = TlsEngine.server(ctx)
    client = TlsEngine.client(client_context(cafile=certs.ca, certfile=certs.client, keyfile=certs.client_key),
                              "localhost")
    client.write(b"hello")
    assert pump(client, server)[1] == b"hello"


def test_host_name_checked_unless_insecure(certs):
    server = TlsEngine.server(server_context(certs.server, certs.server_key))
    client = TlsEngine.client(client_context(cafile=certs.ca), "broker.example")
    with pytest.raises(TlsError, match="Hostname mismatch|hostname|IP address mismatch"):
        pump(client, server)
    server = TlsEngine.server(server_context(certs.server, certs.server_key))
    client = TlsEngine.client(client_context(cafile=certs.ca, insecure=True), "broker.example")
    client.write(b"x")
    assert pump(client, server)[1] == b"x"
    # insecure still verifies the chain (mosquitto_pub --insecure does too)
    server = TlsEngine.server(server_context(certs.server, certs.server_key))
    client = TlsEngine.client(client_context(cafile=certs.other_ca, insecure=True), "localhost")
    with pytest.raises(TlsError, match="certificate verify failed"):
        pump(client, server)


def test_plaintext_and_garbage_fail_the_handshake(certs):
    ctx = server_context(certs.server, certs.server_key)
    server = TlsEngine.server(ctx)
    with pytest.raises(TlsError):
        server.feed(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # an MQTT CONNECT
    server = TlsEngine.server(ctx)
    with pytest.raises(TlsError):
        server.feed(b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff")  # a handshake record of junk
    server = TlsEngine.server(ctx)
    assert server.feed(b"\x16\x03") == b""  # a partial record waits for more
    assert not server.handshake_done


def test_close_notify(certs):
    server = TlsEngine.server(server_context(certs.server, certs.server_key))
    client = TlsEngine.client(client_context(cafile=certs.ca), "localhost")
    pump(client, server)
    client.write(b"last words")
    client.close()
    assert server.feed(client.data_to_send()) == b"last words"
    assert server.peer_closed


def test_alpn(certs):
    sctx = server_context(certs.server, certs.server_key)
    sctx.set_alpn_protocols(["mqtt"])
    server = TlsEngine.server(sctx)
    client = TlsEngine.client(client_context(cafile=certs.ca), "localhost", alpn=["x-other", "mqtt"])
    pump(client, server)
    assert client.alpn_protocol == "mqtt" and server.alpn_protocol == "mqtt"


def test_tls_version_minimum(certs):
    server = TlsEngine.server(server_context(certs.server, certs.server_key, tls_version="tlsv1.3"))
    cctx = client_context(cafile=certs.ca)
    cctx.maximum_version = ssl.TLSVersion.TLSv1_2
    client = TlsEngine.client(cctx, "localhost")
    with pytest.raises(TlsError):
        pump(client, server)
    server = TlsEngine.server(server_context(certs.server, certs.server_key, tls_version="tlsv1.2"))
    client = TlsEngine.client(client_context(cafile=certs.ca, tls_version="tlsv1.2"), "localhost")
    pump(client, server)
    assert server.handshake_done


# ---- configuration errors ------------------------------------------------------------------------

def _error(**kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        server_context(**kw)
    return info.value


def test_errors_name_option_and_file(certs, tmp_path):
    e = _error(certfile=certs.server, keyfile=str(tmp_path / "missing.key"))
    assert e.option == "keyfile" and "missing.key" in str(e) and "No such file" in str(e)
    e = _error(certfile=certs.server, keyfile=certs.client_key)
    assert e.option == "keyfile" and "does not belong" in str(e)
    e = _error(certfile=certs.expired, keyfile=certs.expired_key)
    assert e.option == "certfile" and "expired on" in str(e)
    e = _error(certfile=certs.server, keyfile=certs.server_key, require_certificate=True)
    assert e.option == "require_certificate"
    e = _error(certfile=certs.server, keyfile=certs.server_key, tls_version="sslv3")
    assert e.option == "tls_version"
    e = _error(certfile=certs.server, keyfile=certs.server_key, ciphers="NO-SUCH-CIPHER")
    assert e.option == "ciphers"
    e = _error(certfile=certs.server, keyfile=certs.server_key, cafile=certs.server_key)
    assert e.option == "cafile"
    e = _error(certfile=certs.server, keyfile=certs.server_key, cafile=certs.ca, crlfile=certs.ca,
               require_certificate=True)
    assert e.option == "crlfile"
    e = _error(certfile=certs.ca + ".nope", keyfile=certs.server_key)
    assert e.option == "certfile"
    e = _error(certfile=certs.server_key, keyfile=certs.server_key)
    assert e.option == "certfile" and "no PEM certificate" in str(e)
    with pytest.raises(ConfigError) as info:
        client_context(certfile=certs.client, cafile=certs.ca)
    assert info.value.option == "keyfile"
    with pytest.raises(ConfigError) as info:
        client_context()
    assert info.value.option == "cafile"


def test_certfile_may_hold_its_chain_or_its_key(certs, tmp_path):
    """A certfile that goes on after its certificate, with the CA's (a chain) or with its key, as
    OpenSSL's certificate chain files and Mosquitto's certfile may: the first block is the broker's
    certificate (its expiry is checked), and the listener serves."""
    cert, key, ca = (open(path).read() for path in (certs.server, certs.server_key, certs.ca))
    with_key = tmp_path / "with-key.pem"
    with_key.write_text(cert + key)
    key_first = tmp_path / "key-first.pem"
    key_first.write_text(key + cert)
    chain = tmp_path / "chain.pem"
    chain.write_text(cert + ca)
    for certfile, keyfile in ((with_key, None), (with_key, certs.server_key), (key_first, None),
                              (chain, certs.server_key)):
        server = TlsEngine.server(server_context(str(certfile), keyfile))
        client = TlsEngine.client(client_context(cafile=certs.ca), "localhost")
        pump(client, server)
        assert server.handshake_done, certfile
    expired = tmp_path / "expired-with-key.pem"
    expired.write_text(open(certs.expired).read() + open(certs.expired_key).read())
    e = _error(certfile=str(expired), keyfile=None)
    assert e.option == "certfile" and "expired on" in str(e)


def test_expiry_judged_at_now(certs):
    before, after = certificate_validity(ssl.PEM_cert_to_DER_cert(open(certs.expired).read()))
    assert before < after < datetime.datetime.now(datetime.timezone.utc)
    # the same certificate was fine while it was valid
    server_context(certs.expired, certs.expired_key, now=(after - datetime.timedelta(hours=1)).timestamp())
    with pytest.raises(ConfigError, match="not valid before"):
        server_context(certs.expired, certs.expired_key, now=(before - datetime.timedelta(hours=1)).timestamp())


def test_subject_string_escapes():
    cert = {"subject": ((("countryName", "GB"),), (("organizationName", "A, B+C"),),
                        (("commonName", " x"), ("userId", "7")))}
    assert subject_string(cert) == "CN=\\ x+UID=7,O=A\\, B\\+C,C=GB"
    assert common_name(cert) == " x"
    assert common_name({"subject": ((("organizationName", "o"),),)}) is None


def test_encrypted_key_is_refused_without_a_prompt(certs, tmp_path):
    """An encrypted key would make OpenSSL ask for its passphrase on the terminal: refused instead."""
    import subprocess
    key = str(tmp_path / "enc.key")
    subprocess.run(["openssl", "pkey", "-in", certs.server_key, "-out", key, "-aes256", "-passout", "pass:secret"],
                   check=True, capture_output=True)
    e = _error(certfile=certs.server, keyfile=key)
    assert e.option == "keyfile" and "encrypted with a passphrase" in str(e)
