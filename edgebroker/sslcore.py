"""What edgebroker's TLS uses of the standard library's `ssl`, taken from its C module `_ssl` directly.

Why: the `ssl` module is a Python layer over `_ssl`. Importing it also imports socket.py, enum (ssl
builds enum classes from hundreds of `_ssl` constants at import), re, base64, warnings and
collections. That is about 2 MiB of resident memory, paid by every broker with a TLS listener
(bench/README.md, "Issue 19: what a TLS listener and a password file cost"). The engine (tls.py) does
not need that layer. It needs the C context (`_ssl._SSLContext`, which `ssl.SSLContext` subclasses),
MemoryBIO, the exception classes (ssl re-exports `_ssl`'s own), the integer constants behind ssl's
enums, and three small methods of ssl.SSLContext, which are written again below with the same
effect. The contexts are the same OpenSSL objects either way: same options, same defaults, same
handshake.

`load()` returns this module when `_ssl` has everything used here and a client's first handshake step
works through it (a self-check: a ClientHello with our ALPN list must come out; about 1 ms, once per
process). Otherwise (a Python whose `_ssl` has changed, or Windows, where `load_default_certs` also
reads the system's stores) it returns the standard `ssl` module, which has the same names. tls.py uses
only names that both have.

One difference from ssl: `SSLContext.wrap_bio` returns `_ssl`'s own TLS object, not an
`ssl.SSLObject` around it. Its methods have the same names and take positional arguments, except
that ssl's `unwrap()` is its `shutdown()` (see tls.TlsEngine.close).
"""
from __future__ import annotations

import sys

import _ssl
from _ssl import (  # noqa: F401 (re-exported: what tls.py uses of ssl)
    CERT_NONE, CERT_REQUIRED, PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER, VERIFY_CRL_CHECK_LEAF, MemoryBIO,
    SSLCertVerificationError, SSLError, SSLWantReadError, SSLWantWriteError, SSLZeroReturnError,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Iterable, Optional

__all__ = ["load", "SSLContext", "MemoryBIO", "PEM_cert_to_DER_cert", "TLSVersion"]


class TLSVersion:
    """ssl.TLSVersion's values used here, as plain integers (what OpenSSL's version setters take)."""
    TLSv1_1 = _ssl.PROTO_TLSv1_1
    TLSv1_2 = _ssl.PROTO_TLSv1_2
    TLSv1_3 = _ssl.PROTO_TLSv1_3


class SSLContext(_ssl._SSLContext):
    """ssl.SSLContext without its Python layer. Properties such as minimum_version, verify_mode and
    verify_flags are `_ssl`'s and take and return integers, where ssl's wrap them in enums."""

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False,
                 server_hostname: Optional[str] = None) -> Any:
        """As ssl.SSLContext.wrap_bio; returns `_ssl`'s TLS object (see the module's docstring)."""
        if isinstance(server_hostname, str):
            server_hostname = _encode_hostname(server_hostname)
        return self._wrap_bio(incoming, outgoing, server_side, server_hostname)

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        """As ssl.SSLContext.set_alpn_protocols: the protocols in ALPN's wire format."""
        protos = bytearray()
        for protocol in alpn_protocols:
            b = bytes(protocol, "ascii")
            if len(b) == 0 or len(b) > 255:
                raise SSLError("ALPN protocols must be 1 to 255 in length")
            protos.append(len(b))
            protos.extend(b)
        self._set_alpn_protocols(protos)

    def load_default_certs(self) -> None:
        """As ssl.SSLContext.load_default_certs() outside Windows: OpenSSL's default CA paths."""
        self.set_default_verify_paths()


def _encode_hostname(name: str) -> str:
    """ssl's `name.encode("idna").decode("ascii")`: for an ASCII name whose labels the idna codec takes
    (1 to 63 characters, the last may be empty), the name itself, which is what that codec returns
    for those without importing it (encodings.idna imports re, stringprep and unicodedata)."""
    if name.isascii():
        labels = name.split(".")
        if all(0 < len(label) < 64 for label in labels[:-1]) and len(labels[-1]) < 64:
            return name
    return name.encode("idna").decode("ascii")


_PEM_HEADER = "-----BEGIN CERTIFICATE-----"
_PEM_FOOTER = "-----END CERTIFICATE-----"


def PEM_cert_to_DER_cert(pem_cert_string: str) -> bytes:
    """As ssl.PEM_cert_to_DER_cert: the same checks and the same (lenient) base64 decoding, which is
    binascii's (base64.decodebytes calls it)."""
    import binascii
    if not pem_cert_string.startswith(_PEM_HEADER):
        raise ValueError(f"Invalid PEM encoding; must start with {_PEM_HEADER}")
    if not pem_cert_string.strip().endswith(_PEM_FOOTER):
        raise ValueError(f"Invalid PEM encoding; must end with {_PEM_FOOTER}")
    d = pem_cert_string.strip()[len(_PEM_HEADER):-len(_PEM_FOOTER)]
    return binascii.a2b_base64(d.encode("ASCII", "strict"))


#: What this module takes from `_ssl` beyond the names imported above.
_CONTEXT_METHODS = ("_wrap_bio", "_set_alpn_protocols", "set_default_verify_paths", "load_cert_chain",
                    "load_verify_locations", "set_ciphers", "minimum_version", "verify_mode", "verify_flags",
                    "check_hostname")


def _works() -> bool:
    """A client's first handshake step through this module: a ClientHello must come out of wrap_bio's
    object (so a `_ssl` whose calls changed is not used)."""
    ctx = SSLContext(PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = CERT_NONE
    ctx.set_alpn_protocols(["mqtt"])
    incoming, outgoing = MemoryBIO(), MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, False, "localhost")
    try:
        obj.do_handshake()
    except SSLWantReadError:
        pass
    hello = outgoing.read()
    return hello[:1] == b"\x16" and b"mqtt" in hello  # a handshake record, with our ALPN list


def load() -> ModuleType:
    """This module where `_ssl` has all it uses and a handshake starts through it (checked here, once
    per process), else the standard library's `ssl`."""
    if sys.platform != "win32" and all(hasattr(_ssl._SSLContext, name) for name in _CONTEXT_METHODS):
        try:
            works = _works()
        except Exception:  # noqa: BLE001 (whatever broke, ssl's own layer is the way)
            works = False
        if works:
            return sys.modules[__name__]
    import ssl
    return ssl
