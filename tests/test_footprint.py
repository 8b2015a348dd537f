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

import pytest

ROOT = Path(__file__).resolve().parent.parent

OPTIONAL = ["hashlib", "_hashlib", "base64", "binascii", "ssl", "sqlite_utils", "firmware_bridge", "serial", "gpiozero",
            "edgebroker.bridge", "edgebroker.tls", "edgebroker.uplink", "traceback",
            # Never needed by a running broker (bench/README.md, "Issue 19"): dataclasses imports inspect
            # (ast, dis, tokenize: 1.2 MiB), argparse's help formatter shutil (zlib, bz2, lzma) and
            # gettext's locale, subprocess (for the schema migration's child) shutil too.
            "dataclasses", "inspect", "argparse", "gettext", "locale", "shutil", "subprocess", "bz2", "lzma",
            # the password hashes' worker thread, only with a password file (hashing.Verifier)
            "threading", "queue"]

#: Kept out of a plain start (no -c): `typing` (with the `re` it imports: about 1 MiB with Debian's
#: Python) is only in annotations (names imported under `if TYPE_CHECKING:`, record.NamedTuple at run
#: time), and nothing the default start runs compiles a regular expression.
NOT_AT_START = ["typing", "re"]

#: Kept out of a running broker, with or without -c (bench/README.md, Issue 19): the standard library's
#: wrappers around C modules the broker uses directly. socket.py (with selectors, array and the enum
#: classes it makes: `_socket` does the broker's work), signal.py (`_signal`), selectors (poller.py
#: polls epoll itself), sqlite3's package (`_sqlite3`; its dbapi2 imports datetime); and with them
#: `enum` (0.4 MiB), which nothing else of a plain start imports (a configuration file's parser needs
#: `re`, which imports it).
WRAPPERS = ["socket", "selectors", "signal", "array", "sqlite3", "sqlite3.dbapi2", "datetime"]
#: And what only some starts need: the bridges' and devices' configuration classes (the configuration
#: file's reader imports them), the command line's -d/-t/user helpers, and `math` (a shared library of
#: its own in some builds: the load averages compute e ** x themselves).
LAZY = ["edgebroker.bridgeconfig", "edgebroker.devices", "edgebroker.cli.startup", "math"]
#: And the standard library's Python modules around `_collections` and `_functools` (about 0.5 MiB
#: of resident memory; bench/README.md, Issue 19): deque and OrderedDict come from `_collections`,
#: tuple classes from record.namedtuple, and `_sqlite3` and tomllib get a stand-in for functools'
#: lru_cache (edgebroker/standins.py).
PYTHON_WRAPPERS = ["collections", "functools", "types", "operator", "reprlib", "keyword"]
NOT_RUNNING = WRAPPERS + NOT_AT_START + ["enum"] + LAZY + PYTHON_WRAPPERS

#: The broker's command line started as a service starts it, with a client that connects, subscribes
#: and gets its own PUBLISH back on a thread of its own (`_thread`: threading would add modules);
#: then the modules of argv[1:] loaded by then, and SIGTERM. Nothing of json (re) or socket.py.
RUNNING_PROBE = r"""
import _signal, _socket, _thread, os, sys
from edgebroker.cli import broker
from edgebroker.server import Server

names = sys.argv[sys.argv.index("--") + 1:]
found = []

def client(port):
    try:
        s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(("127.0.0.1", port))
        s.sendall(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a")  # CONNECT
        assert s.recv(4) == b"\x20\x02\x00\x00"  # CONNACK accepted
        s.sendall(b"\x82\x06\x00\x01\x00\x01t\x00")  # SUBSCRIBE t, QoS 0
        assert s.recv(5) == b"\x90\x03\x00\x01\x00"
        s.sendall(b"\x30\x04\x00\x01tx")  # PUBLISH t: x
        assert s.recv(6) == b"\x30\x04\x00\x01tx"
        s.close()
        found.extend(sorted(m for m in names if m in sys.modules))
        found.append("ok")
    finally:
        os.kill(os.getpid(), _signal.SIGTERM)

serve = Server.serve_forever

def serve_with_client(self):
    _thread.start_new_thread(client, (self.ports[0],))
    return serve(self)

Server.serve_forever = serve_with_client
code = broker.main(sys.argv[1:sys.argv.index("--")])
print("exit", code, "loaded:", *found)
"""


def _running(tmp_path, args: list, names: list) -> str:
    # -S: this venv's `site` (the editable install's finder) imports `re` itself; an installed broker's
    # does not. The database in a temporary XDG_DATA_HOME: persistence on, as by default.
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_DATA_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-S", "-c", RUNNING_PROBE] + args + ["--"] + names, env=env,
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_a_running_broker_loads_no_wrapper_of_what_it_uses_directly(tmp_path):
    # A plain start, a client served, persistence on (_sqlite3: the probe sees what is loaded): none of
    # these, typing, re and enum included.
    assert _running(tmp_path, ["-p", "0"], NOT_RUNNING + ["_sqlite3"]) == "exit 0 loaded: _sqlite3 ok"


#: Kept out of a start with a configuration file too (bench/README.md, Issue 19): the readers match
#: without `re` (and so without enum), tomllib is imported with stand-ins for re, string, datetime and
#: typing (edgebroker/tomlread.py), a password file's base64 is decoded by binascii (base64 imports re).
#: A file without bridges or devices does not import their configuration classes either.
NOT_WITH_FILE = WRAPPERS + NOT_AT_START + ["enum", "string", "base64", "edgebroker.bridgeconfig", "edgebroker.devices"] + \
    PYTHON_WRAPPERS


@pytest.mark.parametrize("kind", ["toml", "conf"])
def test_a_configuration_file_brings_no_re_and_no_wrapper(tmp_path, kind):
    conf = tmp_path / f"edgebroker.{kind}"
    conf.write_text('max_queued_messages = 5000\npersistence = true\nsys_interval = 10\n'
                    'persistent_client_expiration = "2d"\n' if kind == "toml" else
                    "max_queued_messages 5000\npersistence true\nsys_interval 10.5\npersistent_client_expiration 2d\n")
    assert _running(tmp_path, ["-p", "0", "-c", str(conf)], NOT_WITH_FILE + ["_sqlite3"]) == "exit 0 loaded: _sqlite3 ok"


def test_the_pi_images_configuration_brings_no_re(tmp_path):
    # The Pi's service: pi-image's edgebroker.toml with its password file (one user), persistence and
    # listener; its paths and port changed for a test, and anonymous clients let in for the probe's
    # client.
    from edgebroker import auth
    text = (ROOT / "pi-image" / "edgebroker.toml").read_text()
    for old, new in (("/etc/edgebroker/passwd", str(tmp_path / "passwd")), ("/var/lib/edgebroker", str(tmp_path)),
                     ("allow_anonymous = false", "allow_anonymous = true"),
                     ("\nport = 1883", '\nport = 0\naddress = "127.0.0.1"')):
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "passwd").write_text("gateway:" + auth.hash_password(b"pw") + "\n")
    conf = tmp_path / "edgebroker.toml"
    conf.write_text(text)
    assert _running(tmp_path, ["-c", str(conf)], NOT_WITH_FILE + ["binascii", "_sqlite3"]) == \
        "exit 0 loaded: _sqlite3 binascii ok"

#: RUNNING_PROBE's client over TLS: the broker's own TLS engine on a `_socket` (ssl would be loaded in
#: this process otherwise), trusting the listener's certificate.
TLS_CLIENT = r"""
import _socket, sys
from edgebroker.tls import TlsEngine, client_context

def tls_exchange(port, cafile):
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    tls = TlsEngine.client(client_context(cafile=cafile), "localhost")
    got = b""
    def send(data):
        tls.write(data)
        s.sendall(tls.data_to_send())
    def receive(n):
        nonlocal got
        while len(got) < n:
            data = s.recv(65536)
            assert data, "closed"
            got += tls.feed(data)
            out = tls.data_to_send()
            if out:
                s.sendall(out)
        head, got = got[:n], got[n:]
        return head
    s.sendall(tls.data_to_send())  # ClientHello
    send(b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01a")
    assert receive(4) == b"\x20\x02\x00\x00"
    send(b"\x82\x06\x00\x01\x00\x01t\x00")
    assert receive(5) == b"\x90\x03\x00\x01\x00"
    send(b"\x30\x04\x00\x01tx")
    assert receive(6) == b"\x30\x04\x00\x01tx"
    tls.close()
    s.sendall(tls.data_to_send())
    s.close()
"""


def test_a_tls_listener_brings_no_ssl_module(tmp_path):
    # A TLS listener's broker uses _ssl's context, MemoryBIO and TLS objects (edgebroker/sslcore.py):
    # not ssl.py, whose imports (socket.py, enum over hundreds of constants, re, base64) are about 2 MiB
    # of resident memory, and not datetime (_strptime: re, calendar, locale) for its certificate's dates.
    # A client connects over TLS, subscribes and gets its own PUBLISH back.
    from tlscerts import make_certs
    certs = make_certs(str(tmp_path / "certs"))
    conf = tmp_path / "edgebroker.toml"
    conf.write_text(f'allow_anonymous = true\n[[listener]]\nport = 0\naddress = "127.0.0.1"\n'
                    f'certfile = {json.dumps(certs.server)}\nkeyfile = {json.dumps(certs.server_key)}\n')
    probe = TLS_CLIENT + RUNNING_PROBE.replace("def client(port):", "def plain_client(port):").replace(
        "serve = Server.serve_forever", f"""
def client(port):
    try:
        tls_exchange(port, {certs.ca!r})
        found.extend(sorted(m for m in names if m in sys.modules))
        found.append("ok")
    finally:
        os.kill(os.getpid(), _signal.SIGTERM)

serve = Server.serve_forever""")
    names = NOT_WITH_FILE + ["ssl", "base64", "encodings.idna", "edgebroker.tlssocket", "_ssl"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), XDG_DATA_HOME=str(tmp_path))
    out = subprocess.run([sys.executable, "-S", "-c", probe, "-c", str(conf), "--"] + names, env=env,
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "exit 0 loaded: _ssl edgebroker.tlssocket ok"


#: Kept out of a bridging gateway (bench/README.md, "Issue 19: the bridge rows"): bridge.py works with
#: `_socket`, `_thread` and a deque, so a bridge to an IP literal loads none of socket.py, threading,
#: queue, random or ipaddress (about 1.3 MiB together); only a TLS bridge brings OpenSSL (tls.py).
NOT_IN_A_BRIDGE = WRAPPERS + NOT_AT_START + ["enum", "threading", "queue", "random", "ipaddress", "math",
                                            "ssl", "edgebroker.tls", "edgebroker.devices"] + PYTHON_WRAPPERS


def test_a_bridge_brings_no_wrapper_and_no_thread_module(tmp_path):
    # The bridge's remote is a loopback port nobody listens on: its first connect fails and is retried,
    # which the probe's client does not wait for; what the start imported is what is checked.
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'persistence_location = "{tmp_path}"\nallow_anonymous = true\n'
                    f'[[listener]]\nport = 0\naddress = "127.0.0.1"\n\n[[bridge]]\nconnection = "cloud"\n'
                    f'address = "127.0.0.1:{closed}"\ntopic = ["s/# out 1"]\nrestart_timeout = 30\n')
    assert _running(tmp_path, ["-c", str(conf)], NOT_IN_A_BRIDGE + ["_sqlite3", "edgebroker.bridge"]) == \
        "exit 0 loaded: _sqlite3 edgebroker.bridge ok"


def test_a_bridge_resolves_an_ascii_host_name_without_the_idna_codec():
    # getaddrinfo encodes a str host with the idna codec (re, enum, unicodedata, stringprep: 0.9 MiB in
    # a gateway); the bridge's lookup passes an ASCII name as bytes. localhost: /etc/hosts, no network.
    code = ("import sys\nfrom edgebroker.bridge import _getaddrinfo\nr = _getaddrinfo('localhost', 1883)\n"
            "print(sorted({a[4][0] for a in r}) if isinstance(r, list) else r)\n"
            "print([m for m in ('encodings.idna', 're', 'enum', 'unicodedata', 'stringprep') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-S", "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    addresses, loaded = out.stdout.splitlines()
    assert "127.0.0.1" in addresses and loaded == "[]"


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


def _loaded(options: dict, modules: list = OPTIONAL) -> list:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps(options), json.dumps(modules)],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_plain_broker_loads_no_optional_module(tmp_path):
    assert _loaded({"persistence_location": str(tmp_path)}) == []


#: PROBE without json (whose decoder imports re): the database directory and the modules in argv.
PLAIN_PROBE = """
import sys
from edgebroker.config import Config
from edgebroker.server import Server
import edgebroker.cli.broker
server = Server(Config(persistence_location=sys.argv[1]), default_port=0)
try:
    print("loaded:", *sorted(m for m in sys.argv[2:] if m in sys.modules))
finally:
    server.close()
"""


def test_sqlite_comes_with_persistence_only(tmp_path):
    # The SQLite driver with libsqlite3 is about 1 MiB of resident memory: a broker with persistence
    # false (a mosquitto.conf's default) never imports it, and one with persistence imports the C module
    # alone, not the sqlite3 package, whose dbapi2 imports datetime (0.4 MiB) for adapters the store
    # does not use.
    modules = ["sqlite3", "sqlite3.dbapi2", "_sqlite3", "datetime"]
    assert _loaded({"persistence": False, "persistence_location": str(tmp_path)}, modules) == []
    assert _loaded({"persistence_location": str(tmp_path)}, modules) == ["_sqlite3"]


def test_a_plain_start_loads_no_typing(tmp_path):
    # -S: this venv's `site` (the editable install's finder) imports `re` itself; an installed broker's
    # does not. Everything of a start: the command line's module, the server, a persistence database.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-S", "-c", PLAIN_PROBE, str(tmp_path)] + NOT_AT_START,
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "loaded:"


NO_TYPING = """
import importlib, sys
sys.modules["typing"] = None  # any import of it now fails
for name in sys.argv[1:]:
    importlib.import_module(name)
print("imported", len(sys.argv) - 1)
"""


def test_no_module_of_ours_imports_typing_at_run_time():
    # Every module of the package, the tools' and the bridge's too, imports with `typing` unavailable:
    # what a module names from it is only for the type checker (the TOML parser, which imports typing
    # itself, comes when a file is read: tomlread.py).
    names = sorted(".".join(path.relative_to(ROOT).with_suffix("").parts).replace(".__init__", "")
                   for path in (ROOT / "edgebroker").rglob("*.py"))
    names = [n for n in names if n != "edgebroker.__main__"]
    assert "edgebroker.packets" in names and "edgebroker.cli.broker" in names
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-S", "-c", NO_TYPING] + names, env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["imported", str(len(names))]


def test_without_site_hooks_a_plain_broker_loads_no_ipaddress(tmp_path):
    # An installed broker has no editable-install finder, whose imports (pathlib, urllib.parse and with
    # it ipaddress) would hide the broker's own here: -S keeps `site` out of the probe. Listener
    # addresses are told apart with socket.inet_pton (config.literal_family) instead.
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-S", "-c", PROBE, json.dumps({"persistence_location": str(tmp_path)}),
                          json.dumps(OPTIONAL + ["ipaddress", "urllib", "pathlib"])],
                         env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_a_password_file_loads_its_decoder(tmp_path):
    # The probe sees what a configuration that needs them loads (reading a password file decodes its
    # base64 salts with binascii; hashlib comes with the first password checked): the check above is not
    # vacuous.
    from edgebroker import auth
    pw = tmp_path / "passwd"
    pw.write_text("carol:" + auth.hash_password(b"pw", "sha512", 0) + "\n")
    loaded = _loaded({"persistence_location": str(tmp_path), "password_file": str(pw)})
    assert "binascii" in loaded and "base64" not in loaded and "hashlib" not in loaded


CLI_PROBE = """
import json, sys
from edgebroker.cli import broker
code = broker.main(sys.argv[3:])
print(json.dumps([code, sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)]))
"""


def test_the_command_line_loads_no_optional_module(tmp_path):
    # The broker's own command line as a service starts it (-c FILE), here stopped after the checks
    # (-t): everything a start reads, the configuration file and the command-line flags, without
    # argparse, tomllib's fellow travellers or dataclasses.
    # A TOML file gets tomllib, imported without typing (edgebroker/tomlread.py); a mosquitto.conf
    # needs no TOML parser at all.
    conf = tmp_path / "edgebroker.toml"
    conf.write_text(f"persistence_location = {json.dumps(str(tmp_path))}\nmax_queued_messages = 5000\n")
    mconf = tmp_path / "mosquitto.conf"
    mconf.write_text(f"persistence true\npersistence_location {tmp_path}\nmax_queued_messages 5000\n")
    toml = ["tomllib", "tomli"][sys.version_info < (3, 11)]
    for argv, loads in ((["-c", str(conf), "-t", "-p", "1884"], [toml]),
                        ([f"--config-file={conf}", "--check-config", "-v"], [toml]),
                        (["-c", str(mconf), "-t"], [])):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = subprocess.run([sys.executable, "-c", CLI_PROBE, "", json.dumps(OPTIONAL + ["typing", toml])] + argv,
                             env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
        assert (code, loaded) == (0, loads), argv


def test_unusual_flags_still_get_argparse(tmp_path, capsys):
    # Anything but the plain forms goes to argparse, which parses or reports it as before.
    from edgebroker.cli import broker
    assert broker._plain_args(["-c", "x.toml", "--port=1884", "-d", "-v"]).__dict__ == {
        "config_file": "x.toml", "check_config": False, "port": 1884, "daemon": True, "verbose": True}
    for argv in (["--help"], ["--version"], ["-p", "x"], ["-p"], ["-cx.toml"], ["--conf", "x"], ["-dv"],
                 ["-c", "-t"], ["extra"]):
        assert broker._plain_args(argv) is None, argv
    with pytest.raises(SystemExit) as stop:
        broker.main(["-p", "x"])
    assert stop.value.code == 2 and "invalid int value: 'x'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        broker.main(["-t"])
    assert stop.value.code == 2 and "--check-config needs -c FILE" in capsys.readouterr().err
