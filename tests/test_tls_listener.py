"""TLS listeners, end to end: the broker's loop with real TLS clients (paho-mqtt, mosquitto_pub and
mosquitto_sub, Python's ssl), certificates made for the test (tests/tlscerts.py).

Covered: delivery over TLS both ways; big messages through a client that stops reading (partial TLS
writes); client certificates required, missing, from another CA, revoked by the CRL; the certificate's
CN or subject as the username (conn.tls_username); tls_version; garbage, plaintext on a TLS port and
TLS on a plain port each closing that one connection while another client keeps being served; a
handshake that stalls closed after connect_timeout; start-up refusing a bad key, an expired
certificate, an unreadable file.
"""
from __future__ import annotations

import getpass
import queue
import socket
import ssl
import subprocess
from typing import Any, List

import pytest

from edgebroker.config import Listener
from edgebroker.errors import ConfigError
from edgebroker.server import Server
from edgebroker.config import Config
import mqttwire as w
from tlscerts import CLIENT_SUBJECT, Certs, make_certs
from util import wait_for

mqtt = pytest.importorskip("paho.mqtt.client")

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def tls_listener(certs: Certs, **kw: Any) -> Listener:
    return Listener(port=0, address="127.0.0.1", certfile=certs.server, keyfile=certs.server_key, **kw)


def mtls_listener(certs: Certs, **kw: Any) -> Listener:
    return tls_listener(certs, cafile=certs.ca, require_certificate=True, crlfile=certs.crl, **kw)


def client_ctx(certs: Certs, cert: str = "", key: str = "") -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=certs.ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def tls_raw(broker: Any, ctx: ssl.SSLContext, host: str = "localhost") -> w.RawClient:
    c = w.RawClient(broker.host, broker.port, timeout=TIMEOUT)
    c.sock = ctx.wrap_socket(c.sock, server_hostname=host)
    return c


class PahoTls:
    def __init__(self, broker: Any, certs: Certs, cert: str = "", key: str = "", client_id: str = "") -> None:
        self.messages: "queue.Queue[Any]" = queue.Queue()
        self.connacks: "queue.Queue[int]" = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.tls_set(ca_certs=certs.ca, certfile=cert or None, keyfile=key or None)
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), m.qos))
        self.client.connect("localhost", broker.port, keepalive=60)
        self.client.loop_start()
        assert self.connacks.get(timeout=TIMEOUT) == 0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def pahos():
    made: List[PahoTls] = []

    def make(*args: Any, **kw: Any) -> PahoTls:
        c = PahoTls(*args, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def roundtrip(c: w.RawClient, topic: str = "ping/me") -> None:
    """Subscribe on c, publish to itself, get it back: the connection is served."""
    c.send(w.subscribe(1, [(topic, 0)]))
    assert c.read_raw_packet() == w.suback(1, [0])
    c.send(w.publish(topic, b"alive"))
    assert c.read_raw_packet() == w.publish(topic, b"alive")


# ---- delivery -----------------------------------------------------------------------------------

def test_paho_over_tls(make_broker, certs, pahos):
    broker = make_broker(listeners=[tls_listener(certs)])
    pub = pahos(broker, certs, client_id="pub")
    pub.client.publish("greenhouse/marker", b"m", qos=1, retain=True).wait_for_publish(TIMEOUT)
    sub = pahos(broker, certs, client_id="sub")
    sub.client.subscribe("greenhouse/#", qos=1)
    assert sub.messages.get(timeout=TIMEOUT) == ("greenhouse/marker", b"m", 1)  # subscribed
    for qos in (1, 0):
        for i in range(50):
            pub.client.publish(f"greenhouse/q{qos}", f"{i}".encode(), qos=qos)
        got = [sub.messages.get(timeout=TIMEOUT) for _ in range(50)]
        assert got == [(f"greenhouse/q{qos}", f"{i}".encode(), qos) for i in range(50)]


def test_big_messages_to_a_client_that_stops_reading(make_broker, certs):
    """Partial TLS writes: the subscriber reads nothing while 8 MiB are routed to it, then everything
    arrives intact and in order (ciphertext kept by the TLS socket, plaintext re-offered by the loop)."""
    broker = make_broker(listeners=[tls_listener(certs)], max_queued_messages=0, max_inflight_messages=0)
    sub = tls_raw(broker, client_ctx(certs))
    assert sub.connect("sub") == w.connack(False, 0)
    sub.send(w.subscribe(1, [("big", 1)]))
    assert sub.read_raw_packet() == w.suback(1, [1])
    pub = tls_raw(broker, client_ctx(certs))
    assert pub.connect("pub") == w.connack(False, 0)
    payloads = [bytes([i]) * (256 * 1024 + i) for i in range(32)]
    for i, p in enumerate(payloads):
        pub.send(w.publish("big", p, qos=1, packet_id=i + 1))
        assert pub.read_raw_packet() == w.puback(i + 1)
    assert broker.server._writing, "the subscriber's output should be backed up"
    for i, p in enumerate(payloads):
        first, body = sub.read_packet(timeout=TIMEOUT)
        assert first >> 4 == w.PUBLISH
        assert body.endswith(p) and len(body) == 2 + 3 + 2 + len(p)
        sub.send(w.puback(int.from_bytes(body[5:7], "big")))
    roundtrip(pub)


# ---- client certificates --------------------------------------------------------------------------

def test_required_certificate(make_broker, certs):
    broker = make_broker(listeners=[mtls_listener(certs)])
    ok = tls_raw(broker, client_ctx(certs, certs.client, certs.client_key))
    assert ok.connect("ok") == w.connack(False, 0)
    for cert, key in (("", ""), (certs.revoked, certs.revoked_key), (certs.stranger, certs.stranger_key)):
        with pytest.raises((ssl.SSLError, ConnectionError, AssertionError)):
            c = tls_raw(broker, client_ctx(certs, cert, key))
            try:  # TLS 1.3: the client learns of the refusal at its first read
                c.connect("refused")
            finally:
                c.close()
    roundtrip(ok)


@pytest.mark.parametrize("option,expected", [("use_identity_as_username", "sensor-1"),
                                             ("use_subject_as_username", CLIENT_SUBJECT)])
def test_certificate_as_username(make_broker, certs, option, expected):
    broker = make_broker(listeners=[mtls_listener(certs, **{option: True})])
    c = tls_raw(broker, client_ctx(certs, certs.client, certs.client_key))
    assert c.connect("sensor") == w.connack(False, 0)
    conns = broker.server.broker.connections
    assert [conn.tls_username for conn in conns] == [expected]


def test_plain_listener_has_no_tls_username(broker):
    c = w.RawClient(broker.host, broker.port)
    assert c.connect("plain") == w.connack(False, 0)
    assert [conn.tls_username for conn in broker.server.broker.connections] == [None]
    c.close()


def test_tls_version_minimum(make_broker, certs):
    broker = make_broker(listeners=[tls_listener(certs, tls_version="tlsv1.3")])
    ctx = client_ctx(certs)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        tls_raw(broker, ctx)
    c = tls_raw(broker, client_ctx(certs))
    assert c.sock.version() == "TLSv1.3"
    assert c.connect("v13") == w.connack(False, 0)


# ---- bad input closes that one connection ----------------------------------------------------------

def test_garbage_plaintext_and_wrong_port(make_broker, certs):
    broker = make_broker(listeners=[tls_listener(certs), Listener(port=0, address="127.0.0.1")])
    tls_port, plain_port = broker.server.ports
    good = tls_raw(broker, client_ctx(certs))
    assert good.connect("good") == w.connack(False, 0)
    # plaintext MQTT on the TLS port: OpenSSL's alert, then the close
    c = w.RawClient("127.0.0.1", tls_port)
    c.send(w.connect("plain-on-tls"))
    c.expect_closed(allow_data=True)
    # garbage that looks like a TLS record
    c = w.RawClient("127.0.0.1", tls_port)
    c.send(b"\x16\x03\x01\x00\x10" + b"\xee" * 16)
    c.expect_closed(allow_data=True)
    # a TLS client on the plain port: the ClientHello is a malformed MQTT packet
    raw = socket.create_connection(("127.0.0.1", plain_port), timeout=TIMEOUT)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        client_ctx(certs).wrap_socket(raw, server_hostname="localhost")
    raw.close()
    roundtrip(good)
    assert len(broker.server.broker.connections) == 1


def test_stalled_handshake_closed_after_connect_timeout(make_broker, certs):
    """Half a ClientHello, then silence: the loop serves others meanwhile, and the connect deadline
    closes the stalled one."""
    broker = make_broker(listeners=[tls_listener(certs)], connect_timeout=0.5)
    stalled = w.RawClient(broker.host, broker.port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_ctx(certs).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    hello = outgoing.read()
    stalled.send(hello[: len(hello) // 2])
    good = tls_raw(broker, client_ctx(certs))
    assert good.connect("good") == w.connack(False, 0)
    roundtrip(good)
    stalled.expect_closed(timeout=TIMEOUT)
    roundtrip(good, "again")


# ---- start-up -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("what", ["mismatch", "expired", "unreadable"])
def test_startup_refuses_bad_files(certs, tmp_path, what):
    cert, key = {"mismatch": (certs.server, certs.client_key), "expired": (certs.expired, certs.expired_key),
                 "unreadable": (certs.server, str(tmp_path / "nope.key"))}[what]
    config = Config(listeners=[Listener(port=0, address="127.0.0.1", certfile=cert, keyfile=key)],
                    persistence=False)
    with pytest.raises(ConfigError) as info:
        Server(config)
    assert {"mismatch": "does not belong", "expired": "expired on", "unreadable": "No such file"}[what] in str(info.value)


# ---- real clients: mosquitto_pub / mosquitto_sub -----------------------------------------------------

def test_mosquitto_clients_with_client_certificates(make_broker, certs):
    broker = make_broker(listeners=[mtls_listener(certs)])
    tls_args = ["--cafile", certs.ca, "--cert", certs.client, "--key", certs.client_key]
    sub = subprocess.Popen(["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "-t", "t/#", "-C", "1",
                            "-W", "10", "-i", "msub", "-q", "1"] + tls_args,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(c.client_id == "msub" for c in broker.server.broker.connections), TIMEOUT)
        wait_for(lambda: broker.server.broker.sessions["msub"].subscriptions, TIMEOUT)
        done = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(broker.port), "-t", "t/x",
                               "-m", "over tls", "-q", "1"] + tls_args, capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        sub.kill()
        sub.wait()
    assert sub.returncode == 0, err
    assert out == "over tls\n"
    refused = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(broker.port), "-t", "t/x", "-m", "x",
                              "--cafile", certs.ca, "--cert", certs.revoked, "--key", certs.revoked_key],
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert refused.returncode != 0


# ---- the certificate's name as the username, with password and ACL files (docs/security.md) -----------

def test_identity_username_meets_the_acl_and_skips_the_password(make_broker, certs, tmp_path):
    """A listener with use_identity_as_username and a configuration that refuses anonymous clients: the
    sensor's certificate (CN sensor-1) gets it in without username or password, and the ACL lines of
    user sensor-1 decide what it may read and write; a username and wrong password in its CONNECT are
    ignored, as in Mosquitto."""
    acl = tmp_path / "acl"
    acl.write_text("user sensor-1\ntopic readwrite greenhouse/sensor-1/#\n", encoding="utf-8")
    passwd = tmp_path / "passwd"
    passwd.write_text("", encoding="utf-8")
    broker = make_broker(listeners=[mtls_listener(certs, use_identity_as_username=True)], allow_anonymous=False,
                         acl_file=str(acl), password_file=str(passwd))
    c = tls_raw(broker, client_ctx(certs, certs.client, certs.client_key))
    assert c.connect("sensor", username="mallory", password=b"wrong") == w.connack(False, 0)
    c.send(w.subscribe(1, [("greenhouse/sensor-1/#", 1), ("greenhouse/sensor-2/#", 1)]))
    assert c.read_raw_packet() == w.suback(1, [1, 0x80])
    c.send(w.publish("greenhouse/sensor-2/t", b"not mine", qos=1, packet_id=2))  # acknowledged, dropped
    assert c.read_raw_packet() == w.puback(2)
    c.send(w.publish("greenhouse/sensor-1/t", b"mine", qos=1, packet_id=3))
    got = {c.read_raw_packet() for _ in range(2)}
    assert w.puback(3) in got
    (delivered,) = got - {w.puback(3)}
    assert delivered[0] >> 4 == w.PUBLISH and delivered.endswith(b"mine")
    assert [conn.username for conn in broker.server.broker.connections] == ["sensor-1"]


def test_sighup_reloads_the_certificate(make_broker, certs, tmp_path):
    """A renewed certificate (same file names) is served to connections made after a SIGHUP reload, as
    in Mosquitto; a certificate file that no longer loads keeps the running one, logged."""
    import shutil
    cert, key = str(tmp_path / "gw.pem"), str(tmp_path / "gw.key")
    shutil.copy(certs.server, cert)
    shutil.copy(certs.server_key, key)
    broker = make_broker(listeners=[Listener(port=0, address="127.0.0.1", certfile=cert, keyfile=key)])
    server = broker.server
    lines: List[str] = []
    server.reloader = lambda: server.config
    server.log = lambda level, line: lines.append(line)

    def served() -> bytes:
        c = tls_raw(broker, client_ctx(certs))
        try:
            return c.sock.getpeercert(binary_form=True)
        finally:
            c.close()

    first = served()
    renewed = make_certs(str(tmp_path / "renewed"))  # another CA: trust both
    shutil.copy(renewed.server, cert)
    shutil.copy(renewed.server_key, key)
    old = client_ctx(certs)
    old.load_verify_locations(renewed.ca)
    kept = tls_raw(broker, old)  # a connection made before the reload keeps working
    assert kept.connect("kept") == w.connack(False, 0)
    server.request_reload()
    wait_for(lambda: "Reloaded configuration." in lines, TIMEOUT)
    c = tls_raw(broker, old)
    assert c.sock.getpeercert(binary_form=True) not in (None, first)
    c.close()
    roundtrip(kept)
    # a broken file: the running certificate stays
    with open(key, "w") as f:
        f.write("not a key\n")
    lines.clear()
    server.request_reload()
    wait_for(lambda: "Reloaded configuration." in lines, TIMEOUT)
    assert any("keeps its running certificate" in line and "gw.key" in line for line in lines), lines
    c = tls_raw(broker, old)
    assert c.connect("after") == w.connack(False, 0)


# ---- beside Mosquitto: the same username from the same certificate -------------------------------------

@pytest.mark.parametrize("option", ["use_identity_as_username", "use_subject_as_username"])
def test_username_from_certificate_equals_mosquittos(make_broker, certs, tmp_path, option):
    """Mosquitto logs the username it took from the certificate (u'...' in its connection line); the same
    certificate gives edgebroker the same username."""
    from test_tools import MOSQUITTO, _accepts, _free_port
    port = _free_port()
    log = tmp_path / "mosquitto.log"
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\ncertfile {certs.server}\nkeyfile {certs.server_key}\n"
                    f"cafile {certs.ca}\nrequire_certificate true\n{option} true\nallow_anonymous false\n"
                    f"log_dest file {log}\nuser {getpass.getuser()}\n", encoding="utf-8")  # it reads our files
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: proc.poll() is not None or _accepts(port), TIMEOUT, what="mosquitto to listen")
        assert proc.poll() is None, log.read_text()
        r = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(port), "-t", "a", "-m", "x",
                            "--cafile", certs.ca, "--cert", certs.client, "--key", certs.client_key],
                           capture_output=True, text=True, timeout=TIMEOUT)
        assert r.returncode == 0, r.stderr
        line = wait_for(lambda: [ln for ln in log.read_text().splitlines() if "New client connected" in ln],
                        TIMEOUT)[0]
    finally:
        proc.kill()
        proc.wait(TIMEOUT)
    mosquittos = line[line.index("u'") + 2:line.rindex("')")]
    broker = make_broker(listeners=[mtls_listener(certs, **{option: True})])
    c = tls_raw(broker, client_ctx(certs, certs.client, certs.client_key))
    assert c.connect("sensor") == w.connack(False, 0)
    assert [conn.tls_username for conn in broker.server.broker.connections] == [mosquittos]
