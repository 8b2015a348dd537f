"""TLS as bytes in, bytes out: `ssl.MemoryBIO` + `SSLObject`, no socket, no clock.

Theory of operation: a `TlsEngine` is one side of one TLS connection. The caller feeds it the bytes that
came from the network (`feed`, which returns the application bytes they decrypt to) and hands it the
application bytes to encrypt (`write`); whatever must go to the network (handshake records, encrypted
data, alerts, close_notify) accumulates in the engine and is taken with `data_to_send()`. The handshake
runs by itself inside `feed`; data written before it completes waits and leaves once it has. Nothing
here blocks, so a handshake is simply a few turns of whatever loop drives the engine.

    server side: TlsEngine.server(server_context(certfile, keyfile, ...))
    client side: TlsEngine.client(client_context(cafile=..., ...), "broker.example", alpn=["mqtt"])
                 then data_to_send() at once: the ClientHello

The contexts are built from Mosquitto's listener options (mosquitto.conf(5)) and bridge/client options;
every problem with a file (unreadable, not PEM, a key that is not the certificate's, an expired server
certificate) is a `ConfigError` naming the option, which the configuration reader locates in its file.
"""
from __future__ import annotations

import os

from .errors import ConfigError, EdgebrokerError

try:  # _ssl's own objects without ssl.py's Python layer (about 2 MiB): edgebroker/sslcore.py
    from . import sslcore
    ssl = sslcore.load()
except (ImportError, AttributeError):
    import ssl

TYPE_CHECKING = False
if TYPE_CHECKING:
    import datetime
    from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["TlsEngine", "TlsError", "server_context", "client_context", "TLS_VERSIONS", "subject_string",
           "common_name", "certificate_validity"]

#: tls_version values (Mosquitto 2.0: the *minimum* version). Unset: TLS 1.2 and 1.3, as Mosquitto.
TLS_VERSIONS: Dict[str, ssl.TLSVersion] = {
    "tlsv1.3": ssl.TLSVersion.TLSv1_3, "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
}
_DEFAULT_MIN_VERSION = ssl.TLSVersion.TLSv1_2

#: Bytes asked of SSLObject.read at a time (it returns at most one record, 16 KiB, per call).
_READ_SIZE = 65536


class TlsError(EdgebrokerError):
    """The peer broke the TLS protocol or failed verification (OpenSSL's reason in the message): the
    connection is over. Whatever alert OpenSSL wrote for the peer is still in data_to_send()."""


# ---- contexts ------------------------------------------------------------------------------------

def _readable(path: str, option: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", option=option) from None


def _reason(exc: ssl.SSLError) -> str:
    return exc.reason.lower().replace("_", " ") if getattr(exc, "reason", None) else str(exc)


def _common(ctx: ssl.SSLContext, cafile: Optional[str], capath: Optional[str], tls_version: Optional[str],
            ciphers: Optional[str]) -> None:
    if tls_version is not None:
        if tls_version not in TLS_VERSIONS:
            raise ConfigError(f"expected one of {', '.join(TLS_VERSIONS)}, got {tls_version!r}", option="tls_version")
        ctx.minimum_version = TLS_VERSIONS[tls_version]
    else:
        ctx.minimum_version = _DEFAULT_MIN_VERSION
    if ciphers is not None:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise ConfigError(f"no cipher in {ciphers!r} can be used (see `openssl ciphers`)",
                              option="ciphers") from None
    if cafile is not None:
        _readable(cafile, "cafile")
        try:
            ctx.load_verify_locations(cafile=cafile)
        except ssl.SSLError as exc:
            raise ConfigError(f"{cafile} holds no PEM certificate ({_reason(exc)})", option="cafile") from None
    if capath is not None:
        if not os.path.isdir(capath):
            raise ConfigError(f"{capath} is not a directory", option="capath")
        ctx.load_verify_locations(capath=capath)  # read lazily by OpenSSL, by hashed name


_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"


def _load_chain(ctx: ssl.SSLContext, certfile: str, keyfile: Optional[str], now: Optional[float],
                own: bool) -> None:
    """Load a certificate and its key; `own`: refuse an expired or not yet valid certificate (our own
    identity, which no peer would accept)."""
    _readable(certfile, "certfile")
    if keyfile is not None:
        _readable(keyfile, "keyfile")
    try:
        with open(certfile, "rb") as f:  # (bytes.decode: no codec module to import, as a text file has)
            pem = f.read().decode("ascii", "replace").replace("\r\n", "\n").replace("\r", "\n")
        # The first certificate block alone (the broker's own): the file may go on with a chain or
        # with the key, as OpenSSL's (and Mosquitto's) certfile may.
        start = pem.index(_PEM_BEGIN)
        der = ssl.PEM_cert_to_DER_cert(pem[start:pem.index(_PEM_END, start) + len(_PEM_END)])
    except ValueError:
        raise ConfigError(f"{certfile} holds no PEM certificate", option="certfile") from None
    asked: List[bool] = []

    def no_passphrase() -> bytes:  # never OpenSSL's prompt on the terminal: a service has nobody to ask
        asked.append(True)
        return b""

    try:
        ctx.load_cert_chain(certfile, keyfile, password=no_passphrase)
    except ssl.SSLError as exc:
        reason = _reason(exc)
        if asked:
            raise ConfigError(f"the key in {keyfile or certfile} is encrypted with a passphrase; give an "
                              "unencrypted key (openssl pkey -in KEY -out NEWKEY), readable by the broker only",
                              option="keyfile" if keyfile else "certfile") from None
        if "mismatch" in reason:
            raise ConfigError(f"the key in {keyfile or certfile} does not belong to the certificate in {certfile}",
                              option="keyfile" if keyfile else "certfile") from None
        raise ConfigError(f"cannot load {keyfile or certfile}: {reason}",
                          option="keyfile" if keyfile else "certfile") from None
    if own:
        try:
            not_before, not_after = (_utc_fields(tag, text) for tag, text in _validity_times(der))
        except ValueError:
            return  # OpenSSL took it: leave the judgement to it
        if now is None:
            import time
            now = time.time()
        if now > _epoch_seconds(not_after):
            raise ConfigError(f"the certificate in {certfile} expired on {_utc_text(not_after)} UTC",
                              option="certfile")
        if now < _epoch_seconds(not_before):
            raise ConfigError(f"the certificate in {certfile} is not valid before {_utc_text(not_before)} UTC",
                              option="certfile")


def server_context(certfile: str, keyfile: str, cafile: Optional[str] = None, capath: Optional[str] = None,
                   require_certificate: bool = False, tls_version: Optional[str] = None,
                   ciphers: Optional[str] = None, crlfile: Optional[str] = None,
                   now: Optional[float] = None) -> ssl.SSLContext:
    """The context of a TLS listener, from Mosquitto's listener options. require_certificate: the
    server asks for a client certificate and a client without a valid one (signed by cafile/capath,
    not revoked by crlfile) fails the handshake; without it no client certificate is asked for, as in
    Mosquitto. `now` (seconds since the epoch) is for tests of expiry. Raises ConfigError naming the
    option."""
    if require_certificate and cafile is None and capath is None:
        raise ConfigError("client certificates are checked against cafile or capath: set one",
                          option="require_certificate")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, cafile, capath, tls_version, ciphers)
    _load_chain(ctx, certfile, keyfile, now, own=True)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_certificate else ssl.CERT_NONE
    if crlfile is not None:
        _readable(crlfile, "crlfile")
        with open(crlfile, "rb") as f:
            if b"-----BEGIN X509 CRL-----" not in f.read():
                raise ConfigError(f"{crlfile} holds no PEM certificate revocation list", option="crlfile")
        try:
            ctx.load_verify_locations(cafile=crlfile)
        except ssl.SSLError as exc:
            raise ConfigError(f"{crlfile} holds no PEM certificate revocation list ({_reason(exc)})",
                              option="crlfile") from None
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF  # novm
    return ctx


def client_context(cafile: Optional[str] = None, capath: Optional[str] = None, certfile: Optional[str] = None,
                   keyfile: Optional[str] = None, insecure: bool = False, tls_version: Optional[str] = None,
                   ciphers: Optional[str] = None, use_os_certs: bool = False,
                   blocking: bool = False) -> ssl.SSLContext:
    """The context of a TLS client (bridges, edgebroker-pub/-sub), with mosquitto_pub's options: the
    server's certificate is always verified against cafile/capath (or the system's store with
    use_os_certs); `insecure` only skips the host name check (mosquitto_pub --insecure). certfile and
    keyfile: a client certificate. `blocking`: the standard library's ssl.SSLContext, whose
    wrap_socket a blocking client (the command-line tools) uses; otherwise one for TlsEngine. Raises
    ConfigError naming the option."""
    if cafile is None and capath is None and not use_os_certs:
        raise ConfigError("the broker's certificate is verified against cafile or capath: set one", option="cafile")
    if (certfile is None) != (keyfile is None):
        raise ConfigError("certfile and keyfile go together: set both or neither",
                          option="keyfile" if certfile is not None else "certfile")
    if blocking:
        import ssl as std
        ctx = std.SSLContext(std.PROTOCOL_TLS_CLIENT)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    if use_os_certs:
        ctx.load_default_certs()  # for server authentication, ssl's default
    _common(ctx, cafile, capath, tls_version, ciphers)
    if certfile is not None:
        _load_chain(ctx, certfile, keyfile, None, own=False)
    if insecure:
        ctx.check_hostname = False
    return ctx


# ---- the engine ------------------------------------------------------------------------------------

class TlsEngine:
    """One side of one TLS connection, sans-IO. See the module's docstring."""

    __slots__ = ("_in", "_out", "_obj", "handshake_done", "peer_closed", "_early", "server_side")

    def __init__(self, context: ssl.SSLContext, server_side: bool, server_hostname: Optional[str] = None,
                 alpn: Optional[Sequence[str]] = None) -> None:
        if alpn:
            context.set_alpn_protocols(list(alpn))
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = context.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self.server_side = server_side
        #: True once the handshake has completed (the peer's certificate, if any, is verified).
        self.handshake_done = False
        #: True once the peer sent close_notify: no more data will come.
        self.peer_closed = False
        self._early: List[bytes] = []  # written before the handshake completed
        if not server_side:
            self._handshake()  # the ClientHello, ready in data_to_send()

    @classmethod
    def server(cls, context: ssl.SSLContext) -> "TlsEngine":
        return cls(context, True)

    @classmethod
    def client(cls, context: ssl.SSLContext, server_hostname: Optional[str] = None,
               alpn: Optional[Sequence[str]] = None) -> "TlsEngine":
        """server_hostname: the name the broker's certificate must carry (unless the context has
        check_hostname off), also sent as SNI; alpn: protocols to offer (e.g. ["mqtt"]). Note that
        ALPN is set on the context, which is shared by the engines made from it."""
        return cls(context, False, server_hostname, alpn)

    def _handshake(self) -> None:
        try:
            self._obj.do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except ssl.SSLError as exc:
            raise TlsError(f"TLS handshake failed: {_describe(exc)}") from None
        self.handshake_done = True
        if self._early:
            early, self._early = self._early, []
            for data in early:
                self._obj.write(data)

    def feed(self, data: bytes) -> bytes:
        """Bytes from the network in; the application bytes they complete out (b"" when none yet).
        Raises TlsError when the peer breaks the protocol or its certificate is refused."""
        if data:
            self._in.write(data)
        if not self.handshake_done:
            self._handshake()
            if not self.handshake_done:
                return b""
        obj = self._obj
        chunks = []
        try:
            while True:
                chunk = obj.read(_READ_SIZE)
                if not chunk:  # the peer's close_notify (OpenSSL's zero return)
                    self.peer_closed = True
                    break
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.peer_closed = True
        except ssl.SSLError as exc:
            raise TlsError(f"TLS error: {_describe(exc)}") from None
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data: bytes) -> None:
        """Application bytes to encrypt; before the handshake completes they wait for it."""
        if not self.handshake_done:
            self._early.append(bytes(data))
            return
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise TlsError(f"TLS error: {_describe(exc)}") from None

    def data_to_send(self) -> bytes:
        """Everything the engine has for the network, taken (b"" when nothing)."""
        return self._out.read()

    @property
    def has_data_to_send(self) -> bool:
        return self._out.pending > 0

    def close(self) -> None:
        """Queue a close_notify alert (then data_to_send() and close the transport)."""
        obj = self._obj
        try:
            if hasattr(obj, "shutdown"):  # _ssl's own object (sslcore); ssl.SSLObject calls it unwrap
                obj.shutdown()
            else:
                obj.unwrap()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            pass  # the peer's close_notify is not awaited
        except ssl.SSLError:
            pass  # nothing sensible to say to a peer that broke the protocol

    # ---- what the handshake established ----

    def peer_certificate(self) -> Optional[dict]:
        """The peer's verified certificate as ssl's dict (subject, issuer, notAfter...), None when the
        peer sent none."""
        cert = self._obj.getpeercert(False)
        return cert or None

    def peer_certificate_der(self) -> Optional[bytes]:
        return self._obj.getpeercert(True)

    @property
    def alpn_protocol(self) -> Optional[str]:
        return self._obj.selected_alpn_protocol()

    @property
    def version(self) -> Optional[str]:
        return self._obj.version()

    @property
    def cipher(self) -> Optional[Tuple[str, str, int]]:
        return self._obj.cipher()


def _describe(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if getattr(exc, "reason", None):
        return exc.reason.lower().replace("_", " ")  # type: ignore[union-attr]
    return str(exc)


# ---- certificate fields ------------------------------------------------------------------------------

#: OpenSSL's short names for the attributes ssl's dicts spell out (what X509_NAME_print_ex prints).
_SHORT_NAMES = {
    "commonName": "CN", "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST",
    "organizationName": "O", "organizationalUnitName": "OU", "streetAddress": "street",
    "domainComponent": "DC", "userId": "UID", "emailAddress": "emailAddress", "serialNumber": "serialNumber",
    "surname": "SN", "givenName": "GN", "title": "title", "initials": "initials",
    "generationQualifier": "generationQualifier", "dnQualifier": "dnQualifier", "pseudonym": "pseudonym",
    "postalCode": "postalCode", "name": "name",
}


def _rfc2253_escape(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;' or (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def subject_string(cert: dict) -> str:
    """The certificate's subject as Mosquitto's use_subject_as_username gives it (OpenSSL's RFC 2253
    form: the last RDN first, `,` between RDNs, `+` inside one), e.g. `CN=test client,O=Server,C=GB`."""
    rdns = cert.get("subject", ())
    parts = []
    for rdn in reversed(rdns):
        parts.append("+".join(f"{_SHORT_NAMES.get(k, k)}={_rfc2253_escape(v)}" for k, v in rdn))
    return ",".join(parts)


def common_name(cert: dict) -> Optional[str]:
    """The first CN of the subject (Mosquitto's use_identity_as_username), None when there is none."""
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


# ---- validity dates, read from the DER (the ssl module has no public parser) ---------------------------

def _der_item(data: bytes, pos: int) -> Tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at pos."""
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _time_text(tag: int, text: bytes) -> str:
    """A DER time as YYYYMMDDHHMMSSZ."""
    s = text.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: 50-99 are 19xx (RFC 5280)
        year = int(s[:2])
        s = ("19" if year >= 50 else "20") + s
    elif tag != 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    return s


def _der_time(tag: int, text: bytes) -> datetime.datetime:
    import datetime  # (about 0.4 MiB with _strptime's imports: only where the dates are wanted as such)
    return datetime.datetime.strptime(_time_text(tag, text), "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


#: Days in each month of a common year.
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _utc_fields(tag: int, text: bytes) -> Tuple[int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second) of a DER time: what _der_time's strptime reads from
    the canonical form (YYYYMMDDHHMMSSZ, every field two digits but the year's four), with the checks
    datetime makes; any other form goes to _der_time itself, so the result is always its."""
    s = _time_text(tag, text)
    if len(s) != 15 or s[-1] != "Z" or not s[:14].isdigit():
        d = _der_time(tag, text)
        return d.year, d.month, d.day, d.hour, d.minute, d.second
    year, month, day, hour, minute, second = int(s[:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), \
        int(s[10:12]), int(s[12:14])
    leap = month == 2 and year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not (year >= 1 and 1 <= month <= 12 and 1 <= day <= _MONTH_DAYS[month - 1] + leap and hour < 24 and minute < 60
            and second < 60):
        raise ValueError(f"not a valid time: {s}")
    return year, month, day, hour, minute, second


def _epoch_seconds(fields: Tuple[int, int, int, int, int, int]) -> int:
    """Seconds since 1970-01-01 00:00:00 UTC (the proleptic Gregorian calendar, as datetime's)."""
    year, month, day, hour, minute, second = fields
    y = year - (month <= 2)  # days from the civil date: March-based years, leap day last
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return ((days * 24 + hour) * 60 + minute) * 60 + second


def _utc_text(fields: Tuple[int, int, int, int, int, int]) -> str:
    """As f"{datetime:%Y-%m-%d %H:%M:%S}"."""
    return "%04d-%02d-%02d %02d:%02d:%02d" % fields


def _validity_times(der: bytes) -> Tuple[Tuple[int, bytes], Tuple[int, bytes]]:
    """The (tag, text) of notBefore and notAfter in a DER certificate; ValueError when it cannot be read."""
    try:
        _, start, _ = _der_item(der, 0)               # Certificate SEQUENCE
        _, pos, end = _der_item(der, start)           # TBSCertificate SEQUENCE
        tag, _, nxt = _der_item(der, pos)
        if tag == 0xA0:                               # [0] version
            pos = nxt
        for _ in range(3):                            # serialNumber, signature, issuer
            _, _, pos = _der_item(der, pos)
        tag, pos, _ = _der_item(der, pos)             # Validity SEQUENCE
        if tag != 0x30:
            raise ValueError("no validity")
        t1, s1, e1 = _der_item(der, pos)
        t2, s2, e2 = _der_item(der, e1)
        return (t1, der[s1:e1]), (t2, der[s2:e2])
    except IndexError as exc:
        raise ValueError(f"unreadable certificate: {exc}") from None


def certificate_validity(der: bytes) -> Tuple[datetime.datetime, datetime.datetime]:
    """(notBefore, notAfter) of a DER certificate, in UTC; ValueError when it cannot be read."""
    (t1, text1), (t2, text2) = _validity_times(der)
    try:
        return _der_time(t1, text1), _der_time(t2, text2)
    except UnicodeDecodeError as exc:
        raise ValueError(f"unreadable certificate: {exc}") from None
