"""edgebroker-pub / edgebroker-sub over TLS, beside mosquitto_pub / mosquitto_sub with the same options:
--cafile, --capath, --cert, --key, --insecure, --tls-version, the default port 8883 when TLS is on, and
the same messages and exit codes for bad TLS options and refused handshakes."""
from __future__ import annotations

import os
import shutil
import subprocess
from typing import List

import pytest

from edgebroker.cli import pub as eb_pub
from edgebroker.client import Client
from edgebroker.config import Listener
from test_tools import EB_PUB, EB_SUB, M_PUB, M_SUB, run
from tlscerts import Certs, make_certs
from util import wait_for

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    c = make_certs(str(tmp_path_factory.mktemp("certs")))
    # a capath directory: the CA under its subject-hash name, as `openssl rehash` makes it
    h = subprocess.run(["openssl", "x509", "-noout", "-subject_hash", "-in", c.ca], capture_output=True,
                       text=True, check=True).stdout.strip()
    os.makedirs(f"{c.dir}/capath", exist_ok=True)
    shutil.copy(c.ca, f"{c.dir}/capath/{h}.0")
    return c


@pytest.fixture
def mtls_broker(make_broker, certs):
    return make_broker(listeners=[Listener(port=0, address="127.0.0.1", certfile=certs.server,
                                           keyfile=certs.server_key, cafile=certs.ca, require_certificate=True,
                                           crlfile=certs.crl)])


def client_args(certs: Certs) -> List[str]:
    return ["--cafile", certs.ca, "--cert", certs.client, "--key", certs.client_key]


@pytest.mark.parametrize("sub_tool, pub_tool", [(EB_SUB, EB_PUB), (M_SUB, EB_PUB), (EB_SUB, M_PUB)])
def test_pub_and_sub_over_tls_with_client_certificates(mtls_broker, certs, sub_tool, pub_tool):
    port = str(mtls_broker.port)
    sub = subprocess.Popen([*sub_tool, "-h", "localhost", "-p", port, "-t", "tls/#", "-v", "-C", "2", "-i", "s1",
                            "-q", "1", *client_args(certs)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: mtls_broker.server.broker.sessions.get("s1")
                 and mtls_broker.server.broker.sessions["s1"].subscriptions, TIMEOUT, what="the subscription")
        for i, extra in enumerate((["--tls-version", "tlsv1.2"], ["--capath", f"{certs.dir}/capath"])):
            args = client_args(certs)
            if extra[0] == "--capath":
                args = args[2:]  # --capath instead of --cafile
            r = run([*pub_tool, "-h", "localhost", "-p", port, "-t", f"tls/{i}", "-m", f"m{i}", "-q", "1",
                     *args, *extra])
            assert (r.returncode, r.stderr) == (0, b"")
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        sub.kill()
        sub.wait()
    assert (sub.returncode, out, err) == (0, b"tls/0 m0\ntls/1 m1\n", b"")


def _both(argv: List[str]) -> List[tuple]:
    """(exit code, stderr) of mosquitto_pub and edgebroker-pub with the same arguments."""
    got = []
    for tool in (M_PUB, EB_PUB):
        r = run([*tool, *argv])
        got.append((r.returncode, r.stderr.decode()))
    return got


@pytest.mark.parametrize("case", ["cert without key", "missing cafile", "bad tls version"])
def test_bad_tls_options_exit_and_say_what_mosquitto_pub_does(certs, case):
    argv = ["-p", "1", "-t", "a", "-m", "x"] + {
        "cert without key": ["--cafile", certs.ca, "--cert", certs.client],
        "missing cafile": ["--cafile", certs.dir + "/nope.pem"],
        "bad tls version": ["--cafile", certs.ca, "--tls-version", "tlsv1.0"],
    }[case]
    (m_rc, m_err), (e_rc, e_err) = _both(argv)
    assert e_rc == m_rc == 1
    if case == "bad tls version":  # we add why
        assert e_err.startswith(m_err.rstrip(".\n")), (m_err, e_err)
    else:
        assert e_err.replace("edgebroker-pub", "mosquitto_pub") == m_err


@pytest.mark.parametrize("case", ["untrusted broker", "revoked client", "no client certificate"])
def test_refused_handshakes_fail_like_mosquitto_pub(mtls_broker, certs, case):
    base = ["-h", "localhost", "-p", str(mtls_broker.port), "-t", "a", "-m", "x"]
    argv = base + {
        "untrusted broker": ["--cafile", certs.other_ca, "--cert", certs.client, "--key", certs.client_key],
        "revoked client": ["--cafile", certs.ca, "--cert", certs.revoked, "--key", certs.revoked_key],
        "no client certificate": ["--cafile", certs.ca],
    }[case]
    (m_rc, m_err), (e_rc, e_err) = _both(argv)
    assert e_rc != 0 and m_rc != 0
    if case == "untrusted broker":
        # refused by the client: both say so (mosquitto_pub as "Error: A TLS error occurred." with exit 8
        # when its loop finds it, else as below with exit 1: the handshake races its connect call)
        assert "A TLS error occurred." in m_err.splitlines()[-1]
        assert (e_rc, e_err.splitlines()[-1]) == (1, "Unable to connect (A TLS error occurred.).")
        assert "self-signed certificate" in e_err  # and why
    else:  # refused by the broker: the connection is lost
        assert (e_rc, e_err) == (m_rc, m_err) == (7, "Error: The connection was lost.\n")


def test_insecure_skips_only_the_host_name(make_broker, certs):
    """The broker's certificate names localhost, 127.0.0.1 and ::1; reached as 127.0.0.2 it is refused
    unless --insecure, by both tools."""
    broker = make_broker(listeners=[Listener(port=0, address="127.0.0.2", certfile=certs.server,
                                             keyfile=certs.server_key)])
    base = ["-h", "127.0.0.2", "-p", str(broker.port), "-t", "a", "-m", "x", "--cafile", certs.ca]
    (m_rc, _), (e_rc, e_err) = _both(base)
    assert m_rc != 0 and e_rc == 1 and "TLS error" in e_err
    assert _both(base + ["--insecure"]) == [(0, ""), (0, "")]
    (m_rc, _), (e_rc, _) = _both(base[:-1] + [certs.other_ca, "--insecure"])  # the chain is still checked
    assert m_rc != 0 and e_rc != 0


def test_tls_makes_the_default_port_8883(monkeypatch, certs):
    seen = {}

    def fake_connect(self, host, port, **kw):
        seen["port"], seen["tls"] = port, kw.get("tls")
        raise ConnectionRefusedError  # stop here

    monkeypatch.setattr(Client, "connect", fake_connect)
    for args, port in ((["--cafile", certs.ca], 8883), ([], 1883), (["--cert", certs.client, "--key",
                                                                         certs.client_key], 1883),
                       (["--cafile", certs.ca, "-p", "1884"], 1884)):
        seen.clear()
        with pytest.raises(ConnectionRefusedError):
            eb_pub.main(["-t", "a", "-m", "x", *args])
        assert seen["port"] == port and (seen["tls"] is not None) == ("--cafile" in args)
