"""TLS listener options in configuration files: mosquitto.conf and TOML read into Listener fields, and
`edgebroker -t` reading the certificate files, with errors at the file, line and option."""
from __future__ import annotations

import os

import pytest

from edgebroker.cli import broker as cli
from edgebroker.config import Listener
from edgebroker.configfile import load_config
from edgebroker.errors import ConfigError
from tlscerts import Certs, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_mosquitto_conf_tls_listener(tmp_path, certs):
    path = write(tmp_path, "m.conf", f"""allow_anonymous true
listener 1883 127.0.0.1
listener 8883
cafile {certs.ca}
capath {certs.dir}
certfile {certs.server}
keyfile {certs.server_key}
require_certificate true
use_identity_as_username true
use_subject_as_username false
tls_version tlsv1.2
ciphers ECDHE-ECDSA-AES128-GCM-SHA256:HIGH
crlfile {certs.crl}
""")
    loaded = load_config(path)
    plain, tls = loaded.config.listeners
    assert plain == Listener(1883, "127.0.0.1") and not plain.tls
    assert tls == Listener(8883, cafile=certs.ca, capath=certs.dir, certfile=certs.server, keyfile=certs.server_key,
                           require_certificate=True, use_identity_as_username=True, tls_version="tlsv1.2",
                           ciphers="ECDHE-ECDSA-AES128-GCM-SHA256:HIGH", crlfile=certs.crl)
    assert loaded.origins["listener[1].crlfile"].line == 13


def test_tls_options_before_any_listener_make_the_default_listener(tmp_path, certs):
    path = write(tmp_path, "m.conf", f"certfile {certs.server}\nkeyfile {certs.server_key}\n")
    (listener,) = load_config(path).config.listeners
    assert (listener.port, listener.address, listener.tls) == (1883, None, True)


def test_toml_tls_listener(tmp_path, certs):
    path = write(tmp_path, "t.toml", f"""[[listener]]
port = 8883
certfile = "{certs.server}"
keyfile = "{certs.server_key}"
cafile = "{certs.ca}"
require_certificate = true
use_subject_as_username = true
""")
    (listener,) = load_config(path).config.listeners
    assert listener == Listener(8883, certfile=certs.server, keyfile=certs.server_key, cafile=certs.ca,
                                require_certificate=True, use_subject_as_username=True)


@pytest.mark.parametrize("lines, line, option, words", [
    (["certfile {server}", "keyfile {client_key}"], 4, "keyfile", "does not belong to the certificate"),
    (["certfile {expired}", "keyfile {expired_key}"], 3, "certfile", "expired on"),
    (["certfile {server}", "keyfile {dir}/missing.key"], 4, "keyfile", "No such file"),
    (["certfile {server}", "keyfile {server_key}", "cafile {dir}/nope.pem"], 5, "cafile", "cannot read"),
    (["certfile {server}", "keyfile {server_key}", "cafile {ca}", "require_certificate true",
      "crlfile {ca}"], 7, "crlfile", "no PEM certificate revocation list"),
    (["certfile {server}", "keyfile {server_key}", "require_certificate true"], 5, "require_certificate",
     "cafile or capath"),
    (["certfile {server}", "keyfile {server_key}", "use_identity_as_username true"], 5,
     "use_identity_as_username", "needs require_certificate"),
    (["certfile {server}", "keyfile {server_key}", "tls_version tlsv1.0"], 5, "tls_version", "tlsv1.3"),
    (["certfile {server}", "keyfile {server_key}", "ciphers NOPE"], 5, "ciphers", "openssl ciphers"),
    (["keyfile {server_key}"], 3, "keyfile", "go together"),
])
def test_errors_name_file_line_and_option(tmp_path, certs, capsys, lines, line, option, words):
    text = "allow_anonymous true\nlistener 8883\n" + "".join(x.format(**certs._asdict()) + "\n" for x in lines)
    path = write(tmp_path, "m.conf", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    exc = info.value
    assert (exc.file, exc.line, exc.option) == (path, line, option), str(exc)
    assert words in str(exc)
    # edgebroker -t says the same and exits 1
    assert cli.main(["-t", "-c", path]) == 1
    assert capsys.readouterr().err == f"Error: {exc}\n"


def test_check_config_accepts_a_good_tls_listener(tmp_path, certs, capsys):
    path = write(tmp_path, "m.conf", f"allow_anonymous true\nlistener 8883\ncertfile {certs.server}\n"
                                     f"keyfile {certs.server_key}\n")
    assert cli.main(["-t", "-c", path]) == 0
    assert capsys.readouterr().out == f"{path}: OK\n"


def test_unreadable_file_is_refused(tmp_path, certs):
    path = write(tmp_path, "m.conf", f"listener 8883\ncertfile {certs.server}\nkeyfile {tmp_path}\n")
    with pytest.raises(ConfigError, match=r"m.conf:3: keyfile: cannot read .*: Is a directory"):
        load_config(path)
