"""The hashes of password files (PBKDF2-HMAC-SHA512, SHA-512, SHA-256), without OpenSSL while few are made.

Why: hashlib's functions are OpenSSL's. Importing hashlib (or `_hashlib`) maps libcrypto, and its
initialisation fetches every digest, which leaves about 3.7 MiB of the process resident for the rest
of its life (bench/README.md, "Issue 19: what a TLS listener and a password file cost"). A gateway with
a password file usually has a handful of accounts, and the broker remembers a verified password
(auth.PasswordFile.known_good). So such a gateway makes a few hashes in its whole life.
The interpreter's built-in SHA-2 module (`_sha512` and `_sha256` up to Python 3.11, `_sha2` from
3.12) computes the same digests in C without OpenSSL.

Theory of operation: `pbkdf2_sha512` computes the first PYTHON_HASHES hashes of a process with
PBKDF2's loop written out below over the built-in SHA-512: 1.4-1.5x OpenSSL's time on Python 3.9 to 3.11
(mosquitto_passwd's 101 iterations: 95 against 68 us on the build machine with 3.11), 2.5x from 3.12
(bench/README.md, the same section).
After those it uses OpenSSL's `pbkdf2_hmac`, for a fleet of devices logging in after a power cut or a
client guessing passwords; a password file of more than PYTHON_HASHES accounts uses it from
the file's load (`expect_accounts`). Hashes of more than `inline_limit` iterations always go to OpenSSL:
they run on the hashing thread, and OpenSSL releases the interpreter's lock while it hashes, where the
loop written out here would hold it. SHA-512 ($6$ lines) and SHA-256 (the verified passwords' cache)
are one call each and always built in.

Where the built-in module is missing (a Python built without it) everything goes to hashlib.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

__all__ = ["expect_accounts", "pbkdf2_sha512", "sha512", "sha256", "compare_digest", "PYTHON_HASHES"]

try:
    from _sha512 import sha512  # Python 3.9 to 3.11
    from _sha256 import sha256
except ImportError:
    try:
        from _sha2 import sha256, sha512  # Python 3.12 and later
    except ImportError:
        from hashlib import sha256, sha512  # OpenSSL's, as hashlib would give them

try:
    from _operator import _compare_digest as compare_digest  # hmac's compare_digest (hmac imports hashlib)
except ImportError:
    from hmac import compare_digest

#: PBKDF2 hashes a process computes without OpenSSL (see the module's docstring); at 101 iterations on
#: Python 3.11 this costs about 2 ms of CPU more than OpenSSL would, on 3.12 and later about 7 ms.
PYTHON_HASHES = 64

#: Hashes left to compute without OpenSSL.
_python_left = PYTHON_HASHES if sha512.__module__ != "_hashlib" else 0

#: Each byte XOR 0x36 and XOR 0x5C: HMAC's inner and outer pads applied to a key with bytes.translate.
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def expect_accounts(count: int) -> None:
    """A password file of `count` accounts was read (at start, or a reload). With more than PYTHON_HASHES
    its logins would pass the built-in hashes' budget anyway (a fleet's first logins after a power cut),
    so OpenSSL's module is loaded now, before the loop serves, and not at the login that passes the
    budget: that one would pay the load, and libcrypto's 3.7 MiB would land in the middle of a connect
    storm (bench S6-auth counted them as memory per connection)."""
    global _python_left
    if count > PYTHON_HASHES and _python_left > 0:
        try:
            import _hashlib  # noqa: F401
        except ImportError:  # a Python without OpenSSL: the built-in hashes it is
            return
        _python_left = 0


def pbkdf2_sha512(password: bytes, salt: bytes, iterations: int, dklen: int, inline_limit: int) -> bytes:
    """hashlib.pbkdf2_hmac("sha512", password, salt, iterations, dklen)."""
    global _python_left, _openssl_pbkdf2
    if _python_left > 0 and iterations <= inline_limit and 0 < iterations and 0 < dklen <= 64:
        _python_left -= 1
        return _pbkdf2_python(password, salt, iterations)[:dklen]
    pbkdf2 = _openssl_pbkdf2
    if pbkdf2 is None:
        from _hashlib import pbkdf2_hmac as pbkdf2  # libcrypto, without hashlib's module (hashlib.py, _blake2)
        _openssl_pbkdf2 = pbkdf2
    return pbkdf2("sha512", password, salt, iterations, dklen)


#: OpenSSL's PBKDF2 once the first hash has needed it: looked up by an import statement at every login
#: it cost about 1 us, against 68 for the hash (S6-auth logs 2,000 devices in)
_openssl_pbkdf2 = None


def _pbkdf2_python(password: bytes, salt: bytes, iterations: int) -> bytes:
    """The first 64-byte block of PBKDF2-HMAC-SHA512 (RFC 8018, RFC 2104): U1 = HMAC(password, salt ||
    INT(1)), Ui = HMAC(password, Ui-1), the result their XOR. The key's inner and outer pads are
    hashed once; each HMAC copies those states, so it costs two SHA-512 blocks."""
    if len(password) > 128:  # HMAC: a key longer than the hash's block is hashed first
        password = sha512(password).digest()
    key = password.ljust(128, b"\0")
    inner = sha512(key.translate(_IPAD))
    outer = sha512(key.translate(_OPAD))
    icopy = inner.copy
    ocopy = outer.copy
    h = icopy()
    h.update(salt + b"\0\0\0\1")
    o = ocopy()
    o.update(h.digest())
    u = o.digest()
    us = [u]
    for _ in range(iterations - 1):
        h = icopy()
        h.update(u)
        o = ocopy()
        o.update(h.digest())
        u = o.digest()
        us.append(u)
    return _xor_blocks(us)


def _xor_blocks(blocks: Any) -> bytes:
    """The XOR of blocks of 64 bytes: one integer of them all, folded in halves (a few operations on
    long integers instead of one per block). An odd block out stays on top and is folded later."""
    n = len(blocks)
    value = int.from_bytes(b"".join(blocks), "big")
    while n > 1:
        bits = 512 * (n // 2)
        value = (value >> bits) ^ (value & ((1 << bits) - 1))
        n -= n // 2
    return value.to_bytes(64, "big")
