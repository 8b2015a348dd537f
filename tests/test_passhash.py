"""edgebroker.passhash: password hashes without OpenSSL's libcrypto for the first few, OpenSSL's after.

PBKDF2-HMAC-SHA512 written out over the built-in SHA-512 must give hashlib's (OpenSSL's) result for
any password, salt, iteration count and length; a broker that verifies a few passwords must not load
`_hashlib` (libcrypto: about 3.7 MiB of resident memory), one that verifies many must move to it, and an
expensive hash (the hashing thread's) always goes to OpenSSL, which releases the interpreter's lock.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgebroker import auth, passhash

ROOT = Path(__file__).resolve().parent.parent


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=40), st.integers(1, 260), st.integers(1, 64))
def test_pbkdf2_as_openssl_computes_it(password, salt, iterations, dklen):
    expected = hashlib.pbkdf2_hmac("sha512", password, salt, iterations, dklen)
    assert passhash._pbkdf2_python(password, salt, iterations)[:dklen] == expected
    assert passhash.pbkdf2_sha512(password, salt, iterations, dklen, 200) == expected


def test_the_fold_of_blocks_is_their_xor():
    for n in range(1, 40):
        blocks = [os.urandom(64) for _ in range(n)]
        acc = 0
        for b in blocks:
            acc ^= int.from_bytes(b, "big")
        assert passhash._xor_blocks(blocks) == acc.to_bytes(64, "big"), n


def test_built_in_first_then_openssl(monkeypatch):
    calls = []
    real = passhash._pbkdf2_python
    monkeypatch.setattr(passhash, "_pbkdf2_python", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(passhash, "_python_left", 2)
    args = (b"pw", b"salt", 101, 64, auth.INLINE_ITERATIONS)
    expected = hashlib.pbkdf2_hmac("sha512", b"pw", b"salt", 101)
    assert [passhash.pbkdf2_sha512(*args) for _ in range(3)] == [expected] * 3
    assert len(calls) == 2  # the third went to OpenSSL
    monkeypatch.setattr(passhash, "_python_left", 5)
    assert passhash.pbkdf2_sha512(b"pw", b"salt", 201, 64, 200) == hashlib.pbkdf2_hmac("sha512", b"pw", b"salt", 201)
    assert len(calls) == 2 and passhash._python_left == 5  # the hashing thread's: OpenSSL's


#: Verify passwords the way the broker does (PasswordFile.known_good/remember, PasswordEntry.verify), then
#: print whether OpenSSL's hashing module, hashlib or hmac are loaded.
PROBE = r"""
import sys
from edgebroker import auth, passhash
pf = auth.parse_password_file(open(sys.argv[1]).read(), sys.argv[1])
logins = int(sys.argv[2])
for i in range(logins):
    user = ("u0", "u1", "old")[i % 3] if sys.argv[3] == "few" else f"u{i}"
    entry = pf.entries[user]
    if not pf.known_good(user, entry, b"pw"):
        assert entry.verify(b"pw") and not entry.verify(b"wrong")
        pf.remember(user, entry, b"pw")
print(*[m for m in ("_hashlib", "hashlib", "hmac") if m in sys.modules])
"""


def _loaded(tmp_path, users: int, logins: int, mode: str, iterations: int = 101) -> str:
    pw = tmp_path / "passwd"
    pw.write_text("".join(f"u{i}:{auth.hash_password(b'pw', iterations=iterations)}\n" for i in range(users)) +
                  f"old:{auth.hash_password(b'pw', 'sha512')}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-S", "-c", PROBE, str(pw), str(logins), mode], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_few_logins_load_no_openssl(tmp_path):
    # Three users ($7$ twice, $6$ once) logging in 100 times: three hashes (the rest are remembered),
    # each with a wrong password beside: all built in.
    assert _loaded(tmp_path, 3, 100, "few") == ""


def test_many_logins_move_to_openssl(tmp_path):
    # Each user once and a wrong password each: past PYTHON_HASHES, OpenSSL's, without hashlib's module.
    assert _loaded(tmp_path, passhash.PYTHON_HASHES, passhash.PYTHON_HASHES, "each") == "_hashlib"


def test_an_expensive_hash_is_openssls_at_once(tmp_path):
    assert _loaded(tmp_path, 1, 1, "each", iterations=auth.INLINE_ITERATIONS + 1) == "_hashlib"


#: Load a password file as the broker does (auth.load_password_file), no login; print the same modules.
LOAD_PROBE = r"""
import sys
from edgebroker import auth
auth.load_password_file(sys.argv[1])
print(*[m for m in ("_hashlib", "hashlib", "hmac") if m in sys.modules])
"""


@pytest.mark.parametrize("accounts, loaded", [(passhash.PYTHON_HASHES, ""),
                                               (passhash.PYTHON_HASHES + 1, "_hashlib")])
def test_a_file_of_many_accounts_loads_openssl_at_once(tmp_path, accounts, loaded):
    """More accounts than PYTHON_HASHES: OpenSSL's hashes from the file's load (at start, before the
    loop serves), not from the login that passes the budget, in the middle of a connect storm."""
    pw = tmp_path / "passwd"
    pw.write_text("".join(f"u{i}:{auth.hash_password(b'pw', 'sha512')}\n" for i in range(accounts)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-S", "-c", LOAD_PROBE, str(pw)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == loaded
