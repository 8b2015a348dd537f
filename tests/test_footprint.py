"""What a broker without the optional features loads (issue 19: memory on a Pi Zero).

A broker built from a plain configuration must not import the modules only some configurations need:
OpenSSL's libcrypto through hashlib (about 3.7 MiB of resident memory, needed for password files),
ssl (TLS listeners and bridges), the bridge, serial and migration code. Each check runs in a fresh
interpreter, since this test process has imported everything already."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

OPTIONAL = ["hashlib", "_hashlib", "base64", "ssl", "sqlite_utils", "firmware_bridge", "serial", "gpiozero",
            "edgebroker.bridge", "edgebroker.tls", "edgebroker.uplink", "traceback"]

PROBE = """
import json, sys
from edgebroker.config import Config
from edgebroker.server import Server
import edgebroker.cli.broker
server = Server(Config(**json.loads(sys.argv[1])), default_port=0)
try:
    print(json.dumps(sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)))
finally:
    server.close()
"""


def _loaded(options: dict) -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(options), json.dumps(OPTIONAL)],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_plain_broker_loads_no_optional_module(tmp_path):
    assert _loaded({"persistence_location": str(tmp_path)}) == []


def test_a_password_file_loads_its_decoder(tmp_path):
    # The probe sees what a configuration that needs them loads (reading a password file decodes its
    # base64 salts; hashlib comes with the first password checked): the check above is not vacuous.
    from edgebroker import auth
    pw = tmp_path / "passwd"
    pw.write_text("carol:" + auth.hash_password(b"pw", "sha512", 0) + "\n")
    loaded = _loaded({"persistence_location": str(tmp_path), "password_file": str(pw)})
    assert "base64" in loaded and "hashlib" not in loaded
