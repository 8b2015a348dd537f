"""edgebroker.sslcore: what TLS uses of `ssl`, from `_ssl` directly, and tls.py's dates without datetime.

Each stand-in is checked against the standard library's own function on the same input (the PEM
decoder, the ALPN list, the host name's encoding; the certificate's validity dates against datetime's
strptime), and the engine is run once with the standard `ssl` module's contexts (the fallback of
`sslcore.load()`), so both paths stay working. tests/test_tls.py runs the engine on sslcore's contexts.
"""
from __future__ import annotations

import datetime
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebroker import sslcore, tls
from edgebroker.errors import ConfigError
from test_tls import pump
from tlscerts import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def test_load_takes_the_c_module_and_falls_back_to_ssl(monkeypatch):
    assert sslcore.load() is sslcore
    assert tls.ssl is sslcore  # what the engine runs on here
    # The exceptions are the very classes ssl re-exports: `except ssl.SSLError` is the same either way.
    assert sslcore.SSLError is ssl.SSLError and sslcore.SSLWantReadError is ssl.SSLWantReadError
    assert sslcore.MemoryBIO is ssl.MemoryBIO
    assert isinstance(sslcore.SSLContext(sslcore.PROTOCOL_TLS_SERVER), ssl._ssl._SSLContext)  # type: ignore[attr-defined]
    assert sslcore.TLSVersion.TLSv1_2 == ssl.TLSVersion.TLSv1_2 and sslcore.CERT_REQUIRED == ssl.CERT_REQUIRED
    assert sslcore._works()
    monkeypatch.setattr(sslcore, "_CONTEXT_METHODS", sslcore._CONTEXT_METHODS + ("no_such_method",))
    assert sslcore.load() is ssl
    monkeypatch.undo()
    assert sslcore.load() is sslcore


@pytest.mark.parametrize("broken", ["raises", "no hello"])
def test_a_c_module_whose_calls_changed_is_not_used(monkeypatch, broken):
    # The self-check runs a client's first handshake step: a _wrap_bio taking other arguments (a
    # TypeError) or a handshake that writes nothing sends load() to ssl.
    if broken == "raises":
        def wrap_bio(self, *args):
            raise TypeError("_wrap_bio() takes other arguments")
        monkeypatch.setattr(sslcore.SSLContext, "_wrap_bio", wrap_bio)
    else:
        monkeypatch.setattr(sslcore.SSLContext, "_wrap_bio", lambda self, i, o, s, h: type("Quiet", (), {
            "do_handshake": lambda _: None})())
    assert sslcore.load() is ssl


@pytest.mark.parametrize("lib", ["sslcore", "ssl"])
def test_the_engine_on_either_module(certs, monkeypatch, lib):
    # The same handshake, client certificate, ALPN, data and close_notify with sslcore's contexts and
    # with the standard module's (the fallback).
    if lib == "ssl":
        monkeypatch.setattr(tls, "ssl", ssl)
    sctx = tls.server_context(certs.server, certs.server_key, cafile=certs.ca, require_certificate=True)
    assert isinstance(sctx, ssl.SSLContext) == (lib == "ssl")
    sctx.set_alpn_protocols(["mqtt"])
    cctx = tls.client_context(cafile=certs.ca, certfile=certs.client, keyfile=certs.client_key)
    server = tls.TlsEngine.server(sctx)
    client = tls.TlsEngine.client(cctx, "localhost", alpn=["mqtt"])
    client.write(b"hello")
    to_client, to_server = pump(client, server)
    assert to_server == b"hello" and server.alpn_protocol == "mqtt" and client.alpn_protocol == "mqtt"
    assert tls.common_name(server.peer_certificate()) == "sensor-1"
    assert server.peer_certificate_der() == ssl.PEM_cert_to_DER_cert(open(certs.client).read())
    assert client.cipher is not None and client.version in ("TLSv1.2", "TLSv1.3")
    client.close()
    pump(client, server)
    assert server.peer_closed
    with pytest.raises(ConfigError, match="expired on"):
        tls.server_context(certs.expired, certs.expired_key)


def test_the_command_line_tools_get_the_standard_context(certs):
    # A blocking client wraps its socket with ssl.SSLContext.wrap_socket: client_context(blocking=True)
    # makes that one, with the same options.
    ctx = tls.client_context(cafile=certs.ca, tls_version="tlsv1.3", blocking=True)
    assert isinstance(ctx, ssl.SSLContext) and ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    lean = tls.client_context(cafile=certs.ca, tls_version="tlsv1.3")
    assert not isinstance(lean, ssl.SSLContext) and lean.minimum_version == ssl.TLSVersion.TLSv1_3
    assert lean.verify_mode == ssl.CERT_REQUIRED and lean.check_hostname
    assert lean.options == ctx.options


def test_alpn_list_as_ssl_makes_it():
    ours, theirs = sslcore.SSLContext(sslcore.PROTOCOL_TLS_CLIENT), ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for bad in ([""], ["x" * 256], ["mqtt", ""]):
        with pytest.raises(ssl.SSLError) as a:
            ours.set_alpn_protocols(bad)
        with pytest.raises(ssl.SSLError) as b:
            theirs.set_alpn_protocols(bad)
        assert str(a.value) == str(b.value)
    ours.set_alpn_protocols(["mqtt", "x" * 255])  # accepted, as by ssl


def _idna(name: str):
    try:
        return name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["", "a", "localhost", "x" * 63, "x" * 64, "br\u00f6ker", "-", "1"]), max_size=5))
def test_host_names_encode_as_the_idna_codec_does(labels):
    name = ".".join(labels)
    try:
        ours = sslcore._encode_hostname(name)
    except UnicodeError as exc:
        ours = type(exc)
    assert ours == _idna(name)


def test_pem_to_der_as_ssl_does(certs):
    pem = open(certs.server).read()
    for text in (pem, pem.replace("\n", "\r\n"), pem + open(certs.ca).read(), "  " + pem, pem[:-30],
                 pem.replace("MII", "M-I-I"), "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n"):
        try:
            theirs = ssl.PEM_cert_to_DER_cert(text)
        except ValueError:
            theirs = ValueError
        try:
            ours = sslcore.PEM_cert_to_DER_cert(text)
        except ValueError:
            ours = ValueError
        assert ours == theirs


def test_a_certificate_file_with_windows_line_ends_is_read_as_before(certs, tmp_path):
    crlf = tmp_path / "server.pem"
    crlf.write_bytes(open(certs.server, "rb").read().replace(b"\n", b"\r\n"))
    tls.server_context(str(crlf), certs.server_key)
    expired = tmp_path / "expired.pem"
    expired.write_bytes(open(certs.expired, "rb").read().replace(b"\n", b"\r\n"))
    with pytest.raises(ConfigError, match="expired on"):
        tls.server_context(str(expired), certs.expired_key)


@settings(max_examples=500, deadline=None)
@given(st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59, 59)))
def test_validity_dates_without_datetime(when):
    # The canonical GeneralizedTime of any second, and UTCTime where it can say it: the same fields,
    # seconds since the epoch and text as datetime's.
    when = when.replace(microsecond=0, tzinfo=datetime.timezone.utc)
    texts = [(0x18, when.strftime("%Y%m%d%H%M%SZ").rjust(15, "0"))]
    if 1950 <= when.year < 2050:
        texts.append((0x17, when.strftime("%Y%m%d%H%M%SZ")[2:]))
    for tag, text in texts:
        fields = tls._utc_fields(tag, text.encode())
        assert fields == (when.year, when.month, when.day, when.hour, when.minute, when.second)
        assert tls._epoch_seconds(fields) == int(when.timestamp())
        assert tls._utc_text(fields) == f"{when:%Y-%m-%d %H:%M:%S}" or when.year < 1000


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.text(alphabet="0123456789Z ", min_size=10, max_size=17),
    st.sampled_from(["20240230120000Z", "20230229120000Z", "20240229120000Z", "21000229000000Z", "20000229000000Z",
                     "20241301000000Z", "20240100000000Z", "20240101240000Z", "20240101006000Z", "20240101000060Z",
                     "00000101000000Z", "2024010100000Z", "202401 1000000Z", "20240101000000.5Z", "２０２４0101000000Z"]),
))
def test_any_other_time_is_read_as_strptime_reads_it(text):
    # Valid or not, canonical or not: the fields are datetime's, or ValueError where it raises one.
    def theirs():
        try:
            d = tls._der_time(0x18, text.encode())
        except ValueError:
            return ValueError
        return d.year, d.month, d.day, d.hour, d.minute, d.second
    try:
        ours = tls._utc_fields(0x18, text.encode())
    except ValueError:
        ours = ValueError
    assert ours == theirs()
