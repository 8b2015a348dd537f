"""Password and ACL files against the real Mosquitto: both brokers run as processes from the same
mosquitto.conf, password file and ACL file, and must give the same answers (the documented differences,
CONNACK 4 for bad credentials and SUBACK 0x80, are asserted as such). Also: edgebroker-passwd and the real
mosquitto_passwd read each other's files, mosquitto_pub/sub and paho log in with -u/-P.

Every packet is built by tests/mqttwire.py (independent of edgebroker); brokers listen on free loopback
ports and are killed at teardown.
"""
from __future__ import annotations

import os
import pty
import select
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

import pytest

import mqttwire as w
from mqttwire import RawClient
from util import wait_for

MOSQUITTO = "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0


def _passwd_tool() -> List[str]:
    script = Path(sys.executable).parent / "edgebroker-passwd"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgebroker", "passwd"]


EB_PASSWD = _passwd_tool()


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run(argv: List[str], check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env(), check=check, **kw)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class BrokerProc:
    """`mosquitto -c CONF` or `edgebroker -c CONF` for a mosquitto.conf body, on a free loopback port."""

    def __init__(self, kind: str, directory: Path, body: str) -> None:
        self.kind = kind
        for _ in range(5):  # the port may be taken between choosing and binding it
            self.port = _free_port()
            conf = directory / f"{kind}.conf"
            # Mosquitto started as root switches to user mosquitto, which cannot read pytest's 0700 temp dirs.
            user = "user root\n" if kind == "mosquitto" and os.geteuid() == 0 else ""
            conf.write_text(f"listener {self.port} 127.0.0.1\npersistence false\n{user}{body}")
            argv = ([MOSQUITTO, "-c", str(conf)] if kind == "mosquitto"
                    else [sys.executable, "-m", "edgebroker", "-c", str(conf)])
            self.log_path = directory / f"{kind}.log"
            self.log = open(self.log_path, "wb")
            self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=_env())
            wait_for(lambda: self.p.poll() is not None or _accepts(self.port), TIMEOUT, what=f"{kind} to listen")
            if self.p.poll() is None:
                return
            self.log.close()
        raise AssertionError(f"{kind} did not start: {self.log_path.read_text()}")

    def stop(self) -> None:
        self.p.kill()
        self.p.wait(TIMEOUT)
        self.log.close()

    def client(self) -> RawClient:
        return RawClient("127.0.0.1", self.port)


@pytest.fixture
def brokers(tmp_path) -> Iterator:
    started: List[BrokerProc] = []

    def start(kind: str, body: str) -> BrokerProc:
        directory = tmp_path / f"{kind}{len(started)}"
        directory.mkdir()
        b = BrokerProc(kind, directory, body)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


def connack_code(b: BrokerProc, client_id: str, username: Optional[str], password: Optional[bytes]) -> int:
    with b.client() as c:
        got = c.connect(client_id, username=username, password=password)
        assert got[:3] == b"\x20\x02\x00", got
        return got[3]


# ---- edgebroker-passwd and mosquitto_passwd read each other's files -------------------------------------

@pytest.mark.parametrize("flags", [[], ["-H", "sha512"], ["-I", "5000"]])
def test_mosquitto_accepts_files_edgebroker_passwd_writes(tmp_path, brokers, flags):
    pw = tmp_path / "passwd"
    run(EB_PASSWD + flags + ["-c", "-b", str(pw), "alice", "s3cret"])
    run(EB_PASSWD + flags + ["-b", str(pw), "bob", "other pw"])
    m = brokers("mosquitto", f"password_file {pw}\n")
    assert connack_code(m, "a", "alice", b"s3cret") == 0
    assert connack_code(m, "b", "bob", b"other pw") == 0
    assert connack_code(m, "c", "alice", b"wrong") == 5  # Mosquitto 2.0 answers 5 to every refusal
    log = m.log_path.read_text()
    assert "removing entry" not in log and "Invalid" not in log


@pytest.mark.parametrize("flags", [[], ["-H", "sha512"], ["-I", "5000"]])
def test_edgebroker_accepts_files_mosquitto_passwd_writes(tmp_path, brokers, flags):
    pw = tmp_path / "passwd"
    run([MOSQUITTO_PASSWD] + flags + ["-c", "-b", str(pw), "alice", "s3cret"])
    e = brokers("edgebroker", f"password_file {pw}\n")
    assert connack_code(e, "a", "alice", b"s3cret") == 0
    assert connack_code(e, "c", "alice", b"wrong") == 4
    # and the real mosquitto_pub logs in with -u/-P
    ok = run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(e.port), "-u", "alice", "-P", "s3cret", "-t", "t",
              "-m", "x"], check=False)
    assert ok.returncode == 0, ok.stderr
    bad = run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(e.port), "-u", "alice", "-P", "nope", "-t", "t",
               "-m", "x"], check=False)
    assert bad.returncode != 0 and "bad user name or password" in bad.stderr.lower()


def test_edgebroker_passwd_edits_a_mosquitto_passwd_file(tmp_path, brokers):
    pw = tmp_path / "passwd"
    run([MOSQUITTO_PASSWD, "-c", "-b", str(pw), "alice", "a1"])
    run([MOSQUITTO_PASSWD, "-b", str(pw), "bob", "b1"])
    run(EB_PASSWD + ["-b", str(pw), "alice", "a2"])   # change
    run(EB_PASSWD + ["-D", str(pw), "bob"])           # delete
    run(EB_PASSWD + ["-b", str(pw), "carol", "c1"])   # add
    lines = pw.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["alice", "carol"]
    missing = run(EB_PASSWD + ["-D", str(pw), "bob"], check=False)
    assert missing.returncode == 1 and "User bob not found" in missing.stderr
    m = brokers("mosquitto", f"password_file {pw}\n")
    assert [connack_code(m, "x", u, p) for u, p in (("alice", b"a2"), ("alice", b"a1"), ("bob", b"b1"),
                                                   ("carol", b"c1"))] == [0, 5, 5, 0]
    run([MOSQUITTO_PASSWD, "-D", str(pw), "carol"])   # and mosquitto_passwd edits ours
    assert "carol" not in pw.read_text()


def test_update_hashes_plaintext_and_leaves_hashes_alone(tmp_path, brokers):
    pw = tmp_path / "passwd"
    run(EB_PASSWD + ["-c", "-b", str(pw), "hashed", "h1"])
    before = pw.read_text()
    with open(pw, "a") as f:
        f.write("plain:p1\n# comment\n")
    run(EB_PASSWD + ["-U", str(pw)])
    text = pw.read_text()
    assert text.startswith(before) and "plain:$7$101$" in text and "# comment" in text
    e = brokers("edgebroker", f"password_file {pw}\n")
    m = brokers("mosquitto", f"password_file {pw}\n")
    for b in (e, m):
        assert connack_code(b, "x", "hashed", b"h1") == 0 and connack_code(b, "y", "plain", b"p1") == 0


@pytest.mark.parametrize("args, words", [
    (["-c", "-D", "f", "u"], "-c and -D cannot be used together"),
    (["-H", "md5", "-b", "f", "u", "p"], "Unknown hash type 'md5'"),
    (["-I", "0", "-b", "f", "u", "p"], "Number of iterations must be > 0"),
    (["-b", "f", "u:x", "p"], "must not contain the ':' character"),
    (["-b", "missing-file", "u", "p"], "Unable to open password file missing-file"),
])
def test_edgebroker_passwd_errors(tmp_path, args, words):
    r = run(EB_PASSWD + args, check=False, cwd=tmp_path)
    assert r.returncode == 1 and words in r.stderr, r.stderr


def _on_terminal(argv: List[str], answers: List[bytes]) -> Tuple[int, bytes]:
    """Run argv on a pseudo-terminal, answering each "password:" prompt in turn; (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once
        os.execvpe(argv[0], argv, _env())
    out = b""
    pending = list(answers)
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], TIMEOUT)
            assert ready, f"no output from {argv}: {out!r}"
            try:
                chunk = os.read(fd, 1024)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            if pending and out.lower().endswith(b"password: "):
                os.write(fd, pending.pop(0))
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_password_is_asked_twice_without_echo(tmp_path, brokers):
    pw = str(tmp_path / "passwd")
    code, out = _on_terminal(EB_PASSWD + ["-c", pw, "alice"], [b"t0ps3cret\n", b"t0ps3cret\n"])
    assert code == 0 and b"t0ps3cret" not in out and out.count(b"assword:") == 2, out
    code, out = _on_terminal(EB_PASSWD + [pw, "bob"], [b"one\n", b"two\n"])
    assert code == 1 and b"Passwords do not match" in out
    m = brokers("mosquitto", f"password_file {pw}\n")
    assert connack_code(m, "a", "alice", b"t0ps3cret") == 0 and connack_code(m, "b", "bob", b"one") == 5


# ---- the differential test --------------------------------------------------------------------------------

ACL = """\
# anonymous clients
topic read public/#
topic readwrite anon/#

user alice
topic readwrite home/#
topic deny home/secret/#
topic write sensors/+/out
topic read sensors/+/in

user bob
topic read home/#
topic read sensors/#
topic readwrite bob/#
topic write users/+/inbox

pattern readwrite devices/%c/#
pattern read users/%u/inbox
"""
# (client id, username, password)
IDENTITIES = [("anon1", None, None), ("alice-c", "alice", b"alice-pw"), ("bob-c", "bob", b"bob-pw"),
              ("dev7", "carol", b"carol-pw")]
TOPICS = ["public/news", "anon/x", "home/kitchen", "home/secret/key", "sensors/t1/out", "sensors/t1/in",
          "bob/notes", "devices/dev7/status", "devices/dev8/status", "users/alice/inbox", "users/carol/inbox",
          "misc/topic"]


def _security_files(tmp_path: Path) -> Tuple[Path, Path]:
    pw = tmp_path / "passwd"
    run([MOSQUITTO_PASSWD, "-c", "-b", str(pw), "alice", "alice-pw"])
    run([MOSQUITTO_PASSWD, "-H", "sha512", "-b", str(pw), "bob", "bob-pw"])
    run([MOSQUITTO_PASSWD, "-I", "2000", "-b", str(pw), "carol", "carol-pw"])
    with open(pw, "a") as f:
        f.write("plainuser:plainpw\njunk line without colon\nweird:$5$abc$def\n")
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return pw, acl


def _drain(c: RawClient) -> List[Tuple[str, bytes, bool]]:
    """Ping and read up to the PINGRESP: every PUBLISH that arrived before it (topic, payload, retain)."""
    c.send(w.pingreq())
    got = []
    while True:
        first, body = c.read_packet()
        if first == 0xD0:
            return got
        if first >> 4 == w.PUBLISH:
            n = int.from_bytes(body[:2], "big")
            topic = body[2:2 + n].decode()
            qos = (first >> 1) & 3
            payload = body[2 + n + (2 if qos else 0):]
            if qos == 1:
                c.send(w.puback(int.from_bytes(body[2 + n:4 + n], "big")))
            got.append((topic, payload, bool(first & 1)))


def _session(b: BrokerProc) -> Dict[str, object]:
    """Run the same script on one broker; return what each client saw."""
    seen: Dict[str, object] = {}
    # CONNACK codes, including refused credentials
    seen["connack"] = [connack_code(b, "x1", u, p) for u, p in (
        ("alice", b"alice-pw"), ("alice", b"wrong"), ("nobody", b"x"), ("plainuser", b"plainpw"),
        ("weird", b"x"), (None, None), ("bob", None))]
    # retained messages from every identity, then subscribers see what they may read of them
    for cid, user, pw in IDENTITIES:
        with b.client() as c:
            assert c.connect(cid + "-r", username=user, password=pw) == w.connack(False, 0)
            for i, topic in enumerate(TOPICS, 1):
                c.send(w.publish(topic, f"retained {topic} by {cid}".encode(), qos=1, retain=True, packet_id=i))
                assert c.read_raw_packet() == w.puback(i)
    subs: Dict[str, RawClient] = {}
    for cid, user, pw in IDENTITIES:
        c = subs[cid] = b.client()
        assert c.connect(cid, username=user, password=pw) == w.connack(False, 0)
        c.send(w.subscribe(1, [("#", 1)]))
        first, body = c.read_packet()
        assert first == 0x90
        seen[f"{cid} suback #"] = body[2:]
        seen[f"{cid} retained"] = sorted(_drain(c))
    # live messages: every identity publishes to every topic, QoS 1 (acknowledged after routing)
    for cid, user, pw in IDENTITIES:
        with b.client() as c:
            assert c.connect(cid + "-p", username=user, password=pw) == w.connack(False, 0)
            for i, topic in enumerate(TOPICS, 1):
                c.send(w.publish(topic, f"live {topic} by {cid}".encode(), qos=1, packet_id=i))
                assert c.read_raw_packet() == w.puback(i)  # acknowledged even when denied
    for cid, c in subs.items():
        seen[f"{cid} live"] = sorted(_drain(c))
        c.send(w.subscribe(2, [("home/secret/#", 0), ("public/#", 0), ("devices/dev7/#", 0)]))
        first, body = c.read_packet()
        seen[f"{cid} suback specific"] = body[2:]
        c.close()
    return seen


def test_same_files_same_answers_as_mosquitto(tmp_path, brokers):
    pw, acl = _security_files(tmp_path)
    body = f"password_file {pw}\nacl_file {acl}\nallow_anonymous true\n"
    mosq = _session(brokers("mosquitto", body))
    edge = _session(brokers("edgebroker", body))
    # Credentials: the same decisions; edgebroker says 4 where the credentials are wrong (documented).
    assert mosq["connack"] == [0, 5, 5, 5, 5, 0, 5]
    assert edge["connack"] == [0, 4, 4, 4, 4, 0, 4]
    # Deliveries, retained and live: identical.
    for cid, _, _ in IDENTITIES:
        assert edge[f"{cid} retained"] == mosq[f"{cid} retained"], cid
        assert edge[f"{cid} live"] == mosq[f"{cid} live"], cid
    # and not trivially so: each client saw something, and not everything
    for cid, _, _ in IDENTITIES:
        live = edge[f"{cid} live"]
        assert live and len(live) < len(TOPICS) * len(IDENTITIES), (cid, live)
    # alice reads home/# but not home/secret/#, and users/alice/inbox through the %u pattern (bob writes it)
    assert sorted({t for t, _, _ in edge["alice-c live"]}) == ["home/kitchen", "users/alice/inbox"]  # type: ignore
    assert sorted(edge["dev7 live"]) == [("users/carol/inbox", b"live users/carol/inbox by bob-c", False)]
    # SUBACK: Mosquitto grants every filter; edgebroker refuses those the client can read nothing under.
    for cid, _, _ in IDENTITIES:
        assert mosq[f"{cid} suback #"] == b"\x01" and mosq[f"{cid} suback specific"] == b"\x00\x00\x00"
    assert edge["anon1 suback specific"] == b"\x80\x00\x80"     # anon reads public/#, and devices/anon1/#
    assert edge["alice-c suback specific"] == b"\x80\x80\x80"   # deny; nothing; dev7 is not alice-c
    assert edge["dev7 suback specific"] == b"\x80\x80\x00"
    assert all(edge[f"{cid} suback #"] == b"\x01" for cid, _, _ in IDENTITIES)


def test_an_empty_acl_file_denies_everything_on_both(tmp_path, brokers):
    acl = tmp_path / "acl"
    acl.write_text("")
    for kind in ("mosquitto", "edgebroker"):
        b = brokers(kind, f"acl_file {acl}\nallow_anonymous true\n")
        with b.client() as sub, b.client() as pub:
            assert sub.connect("s") == w.connack(False, 0) and pub.connect("p") == w.connack(False, 0)
            sub.send(w.subscribe(1, [("#", 0)]))
            assert sub.read_raw_packet() == w.suback(1, [0 if kind == "mosquitto" else 0x80])
            pub.send(w.publish("a/b", b"x", qos=1, packet_id=1))
            assert pub.read_raw_packet() == w.puback(1)
            assert _drain(sub) == []


# ---- clients: mosquitto_sub and paho with credentials ----------------------------------------------------

def test_mosquitto_sub_and_pub_with_credentials_and_acl(tmp_path, brokers):
    pw, acl = _security_files(tmp_path)
    e = brokers("edgebroker", f"password_file {pw}\nacl_file {acl}\nlog_type all\n")
    hp = ["-h", "127.0.0.1", "-p", str(e.port)]
    sub = subprocess.Popen(["mosquitto_sub"] + hp + ["-u", "bob", "-P", "bob-pw", "-t", "home/#", "-t", "bob/#",
                                                      "-C", "2", "-v", "-i", "bob-sub"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "Sending SUBACK to bob-sub" in e.log_path.read_text() or sub.poll() is not None,
                 TIMEOUT, what="the subscriber")
        for topic in ("home/secret/x", "home/a", "bob/n"):  # alice may not write home/secret: dropped
            r = run(["mosquitto_pub"] + hp + ["-u", "alice", "-P", "alice-pw", "-t", topic, "-m", topic, "-q", "1"],
                    check=False)
            assert r.returncode == 0, r.stderr
        run(["mosquitto_pub"] + hp + ["-u", "bob", "-P", "bob-pw", "-t", "bob/n", "-m", "bob/n"])
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert out.splitlines() == ["home/a home/a", "bob/n bob/n"], err
    # anonymous is refused: a listener is configured and allow_anonymous is not set
    r = run(["mosquitto_pub"] + hp + ["-t", "public/x", "-m", "x"], check=False)
    assert r.returncode != 0 and "not authori" in r.stderr.lower()
    assert "Anonymous clients are refused (a listener is configured" in e.log_path.read_text()


def test_paho_reports_bad_credentials_and_a_refused_subscription(tmp_path, brokers):
    mqtt = pytest.importorskip("paho.mqtt.client")
    pw, acl = _security_files(tmp_path)
    e = brokers("edgebroker", f"password_file {pw}\nacl_file {acl}\n")

    def connect(user: str, password: str) -> Tuple[object, List]:
        events: List = []
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{user}-{password}",
                        protocol=mqtt.MQTTv311)
        c.username_pw_set(user, password)
        c.on_connect = lambda cl, ud, flags, rc, props: events.append(("connect", rc))
        c.on_subscribe = lambda cl, ud, mid, rcs, props: events.append(("subscribe", rcs))
        c.connect("127.0.0.1", e.port)
        c.loop_start()
        return c, events

    c, events = connect("alice", "wrong")
    try:
        wait_for(lambda: events, TIMEOUT, what="paho's connect callback")
        rc = events[0][1]
        assert rc.is_failure and "bad user name or password" in str(rc).lower(), rc
    finally:
        c.disconnect()
        c.loop_stop()
    c, events = connect("alice", "alice-pw")
    try:
        wait_for(lambda: events, TIMEOUT, what="paho's connect callback")
        assert not events[0][1].is_failure
        c.subscribe([("home/#", 1), ("bob/#", 1)])
        wait_for(lambda: len(events) == 2, TIMEOUT, what="the SUBACK")
        granted, refused = events[1][1]
        assert not granted.is_failure and refused.is_failure and refused.value == 0x80
    finally:
        c.disconnect()
        c.loop_stop()


def test_edgebroker_pub_and_sub_log_in_with_u_and_P(tmp_path, brokers):
    pw, acl = _security_files(tmp_path)
    e = brokers("edgebroker", f"password_file {pw}\nacl_file {acl}\nlog_type all\n")
    hp = ["-h", "127.0.0.1", "-p", str(e.port)]
    tool = [sys.executable, "-m", "edgebroker"]
    sub = subprocess.Popen(tool + ["sub"] + hp + ["-u", "bob", "-P", "bob-pw", "-t", "bob/#", "-C", "1",
                                                  "-i", "eb-sub"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        wait_for(lambda: "Sending SUBACK to eb-sub" in e.log_path.read_text() or sub.poll() is not None,
                 TIMEOUT, what="the subscriber")
        run(tool + ["pub"] + hp + ["-u", "bob", "-P", "bob-pw", "-t", "bob/n", "-m", "hello"])
        out, err = sub.communicate(timeout=TIMEOUT)
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()
    assert out == "hello\n", err
    bad = run(tool + ["pub"] + hp + ["-u", "bob", "-P", "nope", "-t", "bob/n", "-m", "x"], check=False)
    assert bad.returncode != 0 and "bad user name or password" in bad.stderr.lower(), bad.stderr
