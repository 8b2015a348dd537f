"""Authentication and ACLs: password files (as the real mosquitto_passwd writes them), ACL files, the
CONNACK codes, the checks at PUBLISH, SUBSCRIBE and delivery, and password hashing off the loop.

The pure module (edgebroker.auth) is tested directly; the core in memory through the harness of
test_core (a fake clock, no sockets); the loop and its hashing thread with a real Server. Files are
written by the real `mosquitto_passwd` (Debian's mosquitto package, which scripts/test.sh installs).
"""
from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pytest

from edgebroker import auth
from edgebroker import log as L
from edgebroker.config import Config, Listener
from edgebroker.errors import ConfigError
from edgebroker.packets import Connack, Suback
from edgebroker.server import Server

import mqttwire as w
from mqttwire import RawClient
from test_core import Client, Core
from util import wait_for

MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


def mosquitto_passwd(*args: str) -> None:
    subprocess.run([MOSQUITTO_PASSWD, *args], check=True, capture_output=True, timeout=60)


def password_file(tmp_path: Path, users: List[Tuple[str, str]], *flags: str) -> str:
    """A password file written by the real mosquitto_passwd (-b: password on the command line)."""
    path = str(tmp_path / "passwd")
    for i, (user, password) in enumerate(users):
        mosquitto_passwd(*(("-c",) if i == 0 else ()), *flags, "-b", path, user, password)
    return path


# ---- password files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, kind", [((), "sha512-pbkdf2"), (("-H", "sha512"), "sha512"),
                                         (("-I", "2000"), "sha512-pbkdf2")])
def test_files_written_by_mosquitto_passwd_verify_right_and_refuse_wrong_passwords(tmp_path, flags, kind):
    path = password_file(tmp_path, [("alice", "s3cret"), ("bob", "hunter2 with spaces")], *flags)
    pw = auth.load_password_file(path)
    assert sorted(pw.entries) == ["alice", "bob"] and pw.notes == []
    alice = pw.entries["alice"]
    assert alice.kind == kind
    if flags == ("-I", "2000"):
        assert alice.iterations == 2000
    assert alice.verify(b"s3cret") and pw.entries["bob"].verify(b"hunter2 with spaces")
    assert not alice.verify(b"s3cret ") and not alice.verify(b"") and not alice.verify(b"hunter2 with spaces")


def test_junk_lines_get_mosquittos_treatment_with_file_and_line(tmp_path):
    good = password_file(tmp_path, [("alice", "s3cret")])
    text = Path(good).read_text() + "\n".join([
        "",                                # 2: blank
        "# a comment",                     # 3: skipped
        "no colon here",                   # 4: skipped silently, as Mosquitto
        ":$7$101$abc$def",                 # 5: empty username
        "plain:secret",                    # 6: plaintext
        "weird:$5$abc$def",                # 7: unknown hash type
        "iter:$7$x$abc$def",               # 8: bad iterations
        "salt:$6$a!b$def",                 # 9: salt not base64
        "empty:",                          # 10: no hash
        "  spaced  :" + Path(good).read_text().split(":", 1)[1].strip(),  # 11: trimmed, as Mosquitto
    ]) + "\n"
    path = tmp_path / "junk"
    path.write_text(text)
    pw = auth.load_password_file(str(path))
    assert sorted(pw.entries) == ["alice", "spaced"]
    assert pw.entries["spaced"].verify(b"s3cret")
    notes = [message for _, message in pw.notes]
    where = {line: [n for n in notes if f"{path}:{line}:" in n or f"{path}:{line})" in n] for line in range(1, 12)}
    assert [n for lines in where.values() for n in lines] == notes  # every note names file and line
    assert "empty username" in where[5][0]
    assert "Invalid password hash type for user plain" in where[6][0] and "edgebroker-passwd -U" in where[6][0]
    assert "Invalid password hash type for user weird" in where[7][0]
    assert "Invalid hash iterations for user iter" in where[8][0]
    assert "Unable to decode password salt for user salt" in where[9][0]
    assert "Invalid password hash for user empty" in where[10][0]
    assert not where[3] and not where[4] and not where[11]


def test_an_unreadable_password_file_is_a_config_error_naming_the_option(tmp_path):
    with pytest.raises(ConfigError) as info:
        auth.load_password_file(str(tmp_path / "missing"))
    assert info.value.option == "password_file" and "No such file" in str(info.value)


def test_hash_password_writes_what_mosquitto_passwd_reads(tmp_path):
    line = "carol:" + auth.hash_password(b"pw", "sha512-pbkdf2", 1000)
    entry = auth.parse_password_file(line + "\n", "x").entries["carol"]
    assert entry.verify(b"pw") and entry.iterations == 1000 and len(entry.salt) == auth.SALT_BYTES


# ---- ACL files ------------------------------------------------------------------------------------------

ACL = """\
# anonymous clients: everything before the first `user` line
topic read public/#

user alice
topic readwrite home/#
topic deny home/secret/#
topic write sensors/+/out
topic $SYS/broker/clients/#

user bob
topic read home/#

pattern readwrite devices/%c/#
pattern read users/%u/inbox
"""


def subject(username: Optional[str], client_id: str = "c1", text: str = ACL) -> auth.AclSubject:
    return auth.parse_acl_file(text, "acl").subject(username, client_id)


@pytest.mark.parametrize("username, client_id, topic, read, write", [
    (None, "c1", "public/news", True, False),
    (None, "c1", "home/x", False, False),
    (None, "c1", "devices/c1/t", True, True),          # patterns apply to anonymous clients too
    (None, "c1", "users/None/inbox", False, False),    # %u is skipped without a username
    ("alice", "c1", "home/kitchen", True, True),
    ("alice", "c1", "home", True, True),               # home/# matches its parent
    ("alice", "c1", "home/secret/key", False, False),  # deny wins over the earlier readwrite
    ("alice", "c1", "home/secret", False, False),
    ("alice", "c1", "sensors/t1/out", False, True),
    ("alice", "c1", "sensors/t1/in", False, False),
    ("alice", "c1", "public/news", False, False),      # the anonymous group is not alice's
    ("alice", "c1", "$SYS/broker/clients/total", True, True),
    ("alice", "c1", "users/alice/inbox", True, False),
    ("alice", "c1", "users/bob/inbox", False, False),
    ("alice", "dev7", "devices/dev7/status", True, True),
    ("alice", "dev7", "devices/dev8/status", False, False),
    ("bob", "c2", "home/secret/key", True, False),     # alice's deny is alice's
    ("carol", "c3", "home/x", False, False),           # no group of her own: patterns only
    ("carol", "c3", "devices/c3/x", True, True),
])
def test_acl_decisions_follow_mosquittos_rules(username, client_id, topic, read, write):
    s = subject(username, client_id)
    assert (s.may_read(topic), s.may_write(topic)) == (read, write)


def test_wildcard_acl_rules_never_match_dollar_topics():
    s = subject(None, text="topic readwrite #\ntopic readwrite +/broker/#\n")
    assert s.may_write("a/b") and not s.may_read("$SYS/broker/uptime") and not s.may_write("$SYS/x")


def test_an_empty_acl_file_denies_everything():
    s = subject("alice", text="# nothing\n")
    assert not s.may_read("a") and not s.may_write("a") and not s.may_subscribe("#")


def test_a_dangerous_client_id_gets_no_pattern_access():
    s = subject("alice", "evil/#")
    assert s.dangerous and not s.may_read("devices/evil/x") and s.may_read("home/x")


@pytest.mark.parametrize("username, topic_filter, granted", [
    ("alice", "home/#", True),
    ("alice", "#", True),                  # parts of it are readable: delivery filters the rest
    ("alice", "home/secret/#", False),     # covered by the deny
    ("alice", "home/secret/+", False),
    ("alice", "sensors/+/out", False),     # write only
    ("alice", "+/+/inbox", True),          # users/alice/inbox
    ("alice", "$SYS/#", True),
    ("bob", "$SYS/#", False),
    (None, "public/+", True),
    (None, "home/+", False),
    (None, "+/c1/#", True),                # devices/c1/#
])
def test_subscribe_is_refused_only_where_nothing_could_be_read(username, topic_filter, granted):
    assert subject(username).may_subscribe(topic_filter) is granted


@pytest.mark.parametrize("text, line, words", [
    ("topic\n", 1, "empty topic"),
    ("user alice\ntopic rw a/b\n", 2, "invalid access type 'rw'"),
    ("topic read a/#/b\n", 1, "invalid topic filter"),
    ("user\n", 1, "missing username"),
    ("# ok\nsubscribe a\n", 2, "invalid line"),
])
def test_acl_file_errors_name_file_and_line(text, line, words):
    with pytest.raises(ConfigError) as info:
        auth.parse_acl_file(text, "/etc/acl")
    assert (info.value.file, info.value.line, info.value.option) == ("/etc/acl", line, "acl_file")
    assert words in str(info.value)


# ---- the core: CONNECT ----------------------------------------------------------------------------------

def core_with(tmp_path: Path, acl: Optional[str] = None, users=(("alice", "s3cret"),), flags=("-H", "sha512"),
              **overrides) -> Core:
    files = {}
    if users:
        files["password_file"] = password_file(tmp_path, list(users), *flags)
    if acl is not None:
        (tmp_path / "acl").write_text(acl)
        files["acl_file"] = str(tmp_path / "acl")
    overrides.setdefault("listeners", [Listener(0, "127.0.0.1")])
    return Core(**files, **overrides)


def login(core: Core, client_id: str, username: Optional[str] = None, password: Optional[bytes] = None,
          code: int = 0, **kw) -> Client:
    c = core.open()
    c.send(w.connect(client_id, username=username, password=password, **kw))
    got = c.take()
    assert got[:1] == [Connack(False, code)], got
    assert c.closed == (code != 0)
    return c


@pytest.mark.parametrize("allow, username, password, code", [
    (None, None, None, 5),            # a listener is configured: Mosquitto 2.0 refuses anonymous clients
    (True, None, None, 0),
    (False, None, None, 5),
    (None, "alice", b"s3cret", 0),
    (None, "alice", b"wrong", 4),
    (None, "alice", None, 4),
    (None, "mallory", b"s3cret", 4),  # unknown user: the same answer as a wrong password
    (True, "mallory", b"x", 4),       # allow_anonymous does not let a wrong password in
])
def test_connack_codes(tmp_path, allow, username, password, code):
    core = core_with(tmp_path, allow_anonymous=allow)
    login(core, "c1", username, password, code)


def test_no_listener_is_local_only_mode_and_allows_anonymous(tmp_path):
    core = core_with(tmp_path, listeners=[])
    login(core, "c1")
    login(core, "c2", "alice", b"bad", 4)


def test_without_password_file_a_username_is_anonymous(tmp_path):
    login(core_with(tmp_path, users=(), allow_anonymous=True), "c1", "anyone", b"x", 0)
    login(core_with(tmp_path, users=()), "c1", "anyone", b"x", 5)  # Mosquitto 2.0 refuses it too


def test_refusals_are_logged_with_the_address(tmp_path):
    core = core_with(tmp_path)
    for _ in range(3):
        login(core, "guesser", "alice", b"guess", 4)
    lines = core.logged("not authorised, bad username or password (username 'alice')")
    assert len(lines) == 3 and all("from 127.0.0.1:" in line for line in lines)
    login(core, "anon", code=5)
    assert core.logged("anonymous clients are not allowed")


def test_a_tls_identity_is_the_username_and_no_password_is_checked(tmp_path):
    core = core_with(tmp_path, acl="user CN=dev1\ntopic readwrite d/#\n")
    c = core.open()
    c.conn.tls_username = "CN=dev1"
    c.send(w.connect("d1"))
    assert c.take() == [Connack(False, 0)]
    c.send(w.subscribe(1, [("d/#", 0), ("x/#", 0)]))
    assert c.take() == [Suback(1, (0, 0x80))]


def test_a_pbkdf2_hash_is_verified_off_the_loop_and_the_connection_waits(tmp_path):
    """With a verifier (the loop's hashing thread), CONNECT pauses that one connection: what it sent
    after CONNECT waits, other clients are served, and the answer resumes it in order."""
    core = core_with(tmp_path, flags=("-I", "1000"), allow_anonymous=True)
    jobs: List[Tuple[str, Callable[[], bool], object]] = []
    core.broker.verify_async = lambda key, job, token: jobs.append((key, job, token))
    c = core.open()
    c.send(w.connect("c1", username="alice", password=b"s3cret") + w.subscribe(1, [("t", 1)]) + w.pingreq())
    assert c.take() == [] and len(jobs) == 1 and c.conn.paused_by
    other = login(core, "other")
    other.ping()  # served while c1 waits
    key, job, token = jobs.pop()
    assert key == "127.0.0.1"
    core.broker.password_checked(token, job(), core.now)
    assert c.conn in core.broker.flow_changed  # the loop reads it again and resumes it
    core.broker.resume(c.conn, core.now)
    got = c.take()
    assert got[0] == Connack(False, 0) and got[1] == Suback(1, (1,)) and len(got) == 3
    # A success is remembered: the same password again costs no PBKDF2.
    login(core, "c2", "alice", b"s3cret")
    assert jobs == []
    # A wrong password always costs the full hash, and is refused.
    c3 = core.open()
    c3.send(w.connect("c3", username="alice", password=b"nope"))
    key, job, token = jobs.pop()
    core.broker.password_checked(token, job(), core.now)
    assert c3.take() == [Connack(False, 4)] and c3.closed


def test_a_cheap_hash_is_verified_at_once(tmp_path):
    """mosquitto_passwd's default 101 iterations cost less than the trip to the hashing thread."""
    core = core_with(tmp_path, flags=(), allow_anonymous=True)
    core.broker.verify_async = lambda key, job, token: pytest.fail("sent to the hashing thread")
    login(core, "c1", "alice", b"s3cret")
    login(core, "c2", "alice", b"wrong", 4)


def test_a_client_closed_while_its_hash_is_computed_is_forgotten(tmp_path):
    core = core_with(tmp_path, flags=("-I", "1000"))
    jobs: list = []
    core.broker.verify_async = lambda key, job, token: jobs.append((job, token))
    c = core.open()
    c.send(w.connect("c1", username="alice", password=b"s3cret"))
    c.lose()
    job, token = jobs.pop()
    core.broker.password_checked(token, job(), core.now)
    assert c.take() == [] and core.broker.stats.clients_connected == 0


# ---- the core: ACLs -------------------------------------------------------------------------------------

ACL_CORE = """\
topic read public/#
user alice
topic readwrite home/#
topic deny home/secret
topic write out/#
user bob
topic read home/#
topic read out/#
"""
USERS = (("alice", "a"), ("bob", "b"))


def test_denied_publish_is_acknowledged_and_dropped(tmp_path):
    core = core_with(tmp_path, ACL_CORE, USERS, allow_anonymous=True)
    core.broker.debug = True  # what a logger with log_type debug sets
    bob = login(core, "bob", "bob", b"b")
    bob.subscribe(1, ("home/#", 2))
    alice = login(core, "alice", "alice", b"a")
    alice.send(w.publish("public/x", b"no", qos=1, packet_id=5) + w.publish("home/secret", b"no", qos=2, packet_id=6)
               + w.publish("home/door", b"yes", qos=0))
    got = alice.take()
    assert [type(p).__name__ for p in got] == ["Puback", "Pubrec"]  # [MQTT-4.3.2-2] [MQTT-4.3.3-2]
    assert [p.topic for p in bob.publishes()] == ["home/door"]
    assert core.logged("Denied PUBLISH from alice (d0, q1, r0, m5, 'public/x'")


def test_subscribe_to_a_filter_it_cannot_read_gets_0x80(tmp_path):
    core = core_with(tmp_path, ACL_CORE, USERS, allow_anonymous=True)
    alice = login(core, "alice", "alice", b"a")
    alice.send(w.subscribe(1, [("home/#", 1), ("out/#", 1), ("home/secret", 0), ("public/#", 0)]))
    assert alice.take() == [Suback(1, (1, 0x80, 0x80, 0x80))]  # [MQTT-3.9.3-1] (Mosquitto 2.0 grants them)
    anon = login(core, "anon")
    anon.send(w.subscribe(2, [("public/#", 0), ("home/#", 0)]))
    assert anon.take() == [Suback(2, (0, 0x80))]


def test_read_is_checked_at_delivery_for_retained_and_queued_messages(tmp_path):
    core = core_with(tmp_path, ACL_CORE, USERS, allow_anonymous=True)
    alice = login(core, "alice", "alice", b"a")
    alice.send(w.publish("home/door", b"open", retain=True) + w.publish("home/secret", b"k", retain=True))
    # alice may not write home/secret: only home/door is retained
    bob = login(core, "bob", "bob", b"b")
    got = bob.subscribe(1, ("home/#", 0))
    assert [p.topic for p in got] == ["home/door"]
    # a wide subscription gets what it may read of the retained messages, no more
    assert [p.topic for p in alice.subscribe(2, ("#", 0))] == ["home/door"]


def test_queued_messages_are_checked_when_sent_after_a_reload(tmp_path):
    core = core_with(tmp_path, ACL_CORE, USERS, allow_anonymous=True)
    bob = login(core, "bob", "bob", b"b", clean=False)
    bob.subscribe(1, ("home/#", 1))
    bob.lose()
    alice = login(core, "alice", "alice", b"a")
    alice.send(w.publish("home/a", b"1", qos=1, packet_id=1) + w.publish("home/b", b"2", qos=1, packet_id=2))
    alice.take()
    # bob loses read access to home/b while away: the ACL is reloaded
    (tmp_path / "acl").write_text(ACL_CORE.replace("topic read home/#", "topic read home/a"))
    core.broker.set_security(*auth.load_security(core.config))
    c = core.open()
    c.send(w.connect("bob", clean=False, username="bob", password=b"b"))
    got = c.take()
    assert got[0] == Connack(True, 0) and [p.topic for p in got[1:]] == ["home/a"]


def test_a_reload_rechecks_connected_clients_at_their_next_publish(tmp_path):
    core = core_with(tmp_path, ACL_CORE, USERS, allow_anonymous=True)
    bob = login(core, "bob", "bob", b"b")
    bob.subscribe(1, ("home/#", 0))
    alice = login(core, "alice", "alice", b"a")
    alice.send(w.publish("home/x", b"1"))
    assert len(bob.publishes()) == 1
    (tmp_path / "acl").write_text(ACL_CORE.replace("topic readwrite home/#", "topic read home/#"))
    core.broker.set_security(*auth.load_security(core.config))
    alice.send(w.publish("home/x", b"2"))
    assert bob.publishes() == [] and not alice.closed


def test_a_reload_disconnects_a_user_removed_from_the_password_file(tmp_path):
    core = core_with(tmp_path, None, USERS)
    alice = login(core, "alice", "alice", b"a")
    bob = login(core, "bob", "bob", b"b")
    mosquitto_passwd("-D", core.config.password_file, "bob")
    core.broker.set_security(*auth.load_security(core.config))
    assert bob.closed and not alice.closed
    assert core.logged("not authorised by the reloaded password settings")


def test_a_will_is_published_only_where_the_client_may_write(tmp_path):
    core = core_with(tmp_path, ACL_CORE, USERS, allow_anonymous=True)
    bob = login(core, "bob", "bob", b"b")
    bob.subscribe(1, ("home/#", 0), ("out/#", 0))
    for topic in ("home/will", "public/will"):
        alice = login(core, "alice", "alice", b"a", will=w.Will(topic, b"gone", 0, False))
        alice.lose()
    assert [p.topic for p in bob.publishes()] == ["home/will"]


def test_no_acl_file_means_no_checks(tmp_path):
    core = core_with(tmp_path, None, USERS)
    assert not core.broker._acl_on
    bob = login(core, "bob", "bob", b"b")
    assert bob.subscribe(1, ("#", 0)) == []


# ---- per_listener_settings ------------------------------------------------------------------------------

def test_per_listener_settings_apply_each_listeners_own(tmp_path):
    pw = password_file(tmp_path, [("alice", "a")], "-H", "sha512")
    (tmp_path / "acl").write_text("user alice\ntopic read a/#\n")
    config = Config(per_listener_settings=True, listeners=[
        Listener(0, "127.0.0.1", allow_anonymous=True, auto_id_prefix="open-"),
        Listener(0, "127.0.0.2", password_file=pw, acl_file=str(tmp_path / "acl"))])
    default, per = auth.load_security(config)
    assert [s.index for s in per] == [0, 1]  # type: ignore[union-attr]
    assert per[0].allow_anonymous and not per[1].allow_anonymous  # type: ignore[union-attr]
    assert per[0].connect("alice", b"wrong")[0] == auth.ALLOW  # no password file there
    code, entry = per[1].connect("alice", b"wrong")  # type: ignore[union-attr]
    assert code == auth.ALLOW and entry is not None and not entry.verify(b"wrong") and entry.verify(b"a")
    assert per[1].connect("mallory", b"a")[0] == auth.BAD_CREDENTIALS  # type: ignore[union-attr]
    assert per[0].auto_id_prefix == "open-" and per[1].auto_id_prefix == "auto-"  # type: ignore[union-attr]
    lines = [m for _, m in auth.security_lines(default, per, config)]
    assert lines[0].startswith("Listener on port 0, address 127.0.0.1: Anonymous clients are allowed")
    assert "refused" in lines[1] and pw in lines[1]


# ---- the loop: a real server --------------------------------------------------------------------------

def test_a_slow_hash_does_not_stop_other_clients(tmp_path, make_broker, monkeypatch):
    """While the loop's hashing thread verifies a $7$ password (held here until the test lets it go,
    as a hash with millions of iterations would be), another client is connected and served; then the
    first client gets its CONNACK, and what it sent after CONNECT is handled in order."""
    release = threading.Event()
    started = threading.Event()
    verify = auth.PasswordEntry.verify

    def slow_verify(entry: auth.PasswordEntry, password: bytes) -> bool:
        assert threading.current_thread().name == "edgebroker-hashing"  # never the loop's thread
        started.set()
        assert release.wait(30)
        return verify(entry, password)

    monkeypatch.setattr(auth.PasswordEntry, "verify", slow_verify)
    pw = password_file(tmp_path, [("alice", "s3cret")], "-I", "1000")
    rb = make_broker(password_file=pw, allow_anonymous=True)
    slow = RawClient(rb.host, rb.port)
    slow.send(w.connect("slow", username="alice", password=b"s3cret") + w.pingreq())
    assert started.wait(10)
    with RawClient(rb.host, rb.port) as fast:
        assert fast.connect("fast") == w.connack(False, 0)
        fast.ping()
    release.set()
    assert slow.read_raw_packet() == w.connack(False, 0)
    assert slow.read_raw_packet() == w.pingresp()
    slow.close()


def test_guesses_are_each_refused_and_logged_with_the_address(tmp_path):
    pw = password_file(tmp_path, [("alice", "s3cret")], "-I", "1000")
    logs: List[Tuple[int, str]] = []
    config = Config(listeners=[Listener(0, "127.0.0.1")], password_file=pw, persistence=False, sys_interval=0)
    server = Server(config, log=lambda level, msg: logs.append((level, msg)))
    port = server.ports[0]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def refused() -> List[Tuple[int, str]]:
        return [(level, m) for level, m in logs if "bad username or password" in m]

    try:
        for i in range(5):
            with RawClient("127.0.0.1", port) as c:
                assert c.connect(f"g{i}", username="alice", password=b"guess%d" % i) == w.connack(False, 4)
                c.expect_closed()
        with RawClient("127.0.0.1", port) as c:
            assert c.connect("ok", username="alice", password=b"s3cret") == w.connack(False, 0)
        wait_for(lambda: len(refused()) == 5, what="five refusals logged")
        assert all(level == L.NOTICE and "from 127.0.0.1:" in m for level, m in refused())
        assert any(m.startswith("Anonymous clients are refused") for _, m in logs)
    finally:
        server.shutdown()
        thread.join(10)


# ---- the command line: -t, start-up errors, SIGHUP --------------------------------------------------------

def _edgebroker(*args: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "edgebroker", *args], capture_output=True, text=True, timeout=60)


def test_check_config_reads_the_password_and_acl_files(tmp_path):
    pw = password_file(tmp_path, [("alice", "a")])
    with open(pw, "a") as f:
        f.write("plain:secret\n")
    (tmp_path / "acl").write_text("user alice\ntopic readwrite a/#\n")
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener 1883\npassword_file {pw}\nacl_file {tmp_path / 'acl'}\n")
    r = _edgebroker("-t", "-c", str(conf))
    assert r.returncode == 0 and r.stdout == f"{conf}: OK\n"
    assert f"Invalid password hash type for user plain ({pw}:2)" in r.stderr
    conf.write_text(f"listener 1883\n\npassword_file {tmp_path / 'missing'}\n")
    r = _edgebroker("-t", "-c", str(conf))
    assert r.returncode == 1 and f"Error: {conf}:3: password_file: cannot read {tmp_path / 'missing'}" in r.stderr
    (tmp_path / "acl").write_text("user alice\ntopic rw a/#\n")
    conf.write_text(f"listener 1883\nacl_file {tmp_path / 'acl'}\n")
    r = _edgebroker("-t", "-c", str(conf))
    assert r.returncode == 1 and f"{tmp_path / 'acl'}:2: acl_file: invalid access type 'rw'" in r.stderr
    assert f"(the acl_file of {conf}:2)" in r.stderr
    toml = tmp_path / "e.toml"
    toml.write_text(f'per_listener_settings = true\n[[listener]]\nport = 1883\nacl_file = "{tmp_path / "nope"}"\n')
    r = _edgebroker("-t", "-c", str(toml))
    assert r.returncode == 1 and f"{toml}:4: acl_file: cannot read" in r.stderr


def test_sighup_rereads_the_files_and_a_broken_one_keeps_the_running_ones(tmp_path):
    import signal
    import sys

    pw = password_file(tmp_path, [("alice", "a"), ("bob", "b")], "-H", "sha512")
    acl = tmp_path / "acl"
    acl.write_text("user alice\ntopic readwrite t/#\nuser bob\ntopic read t/#\n")
    sock = tmp_path / "s.sock"
    conf = tmp_path / "m.conf"
    conf.write_text(f"listener 0 {sock}\npassword_file {pw}\nacl_file {acl}\n")
    log = tmp_path / "log"
    with open(log, "wb") as out:
        p = subprocess.Popen([sys.executable, "-m", "edgebroker", "-c", str(conf)], stdout=out, stderr=out)
    try:
        def listening() -> bool:  # the socket's file exists from bind(), before listen(): try to connect
            import socket as s
            with s.socket(s.AF_UNIX, s.SOCK_STREAM) as probe:
                return probe.connect_ex(str(sock)) == 0

        wait_for(listening, 10, what="the broker to listen on its Unix socket")

        def client(cid: str, user: str, password: bytes) -> RawClient:
            c = RawClient.__new__(RawClient)
            import socket as s
            c.sock = s.socket(s.AF_UNIX, s.SOCK_STREAM)
            c.sock.connect(str(sock))
            c.timeout = 10.0
            assert c.connect(cid, username=user, password=password) == w.connack(False, 0)
            return c

        bob = client("bob", "bob", b"b")
        bob.send(w.subscribe(1, [("t/#", 0)]))
        assert bob.read_raw_packet() == w.suback(1, [0])
        alice = client("alice", "alice", b"a")
        alice.send(w.publish("t/1", b"one"))
        assert bob.read_raw_packet() == w.publish("t/1", b"one")
        # alice may no longer write t/#: after the reload her next publish is dropped
        acl.write_text("user alice\ntopic read t/#\nuser bob\ntopic read t/#\n")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "Reloaded configuration." in log.read_text(), 10, what="the reload")
        alice.send(w.publish("t/2", b"two"))
        bob.ping()  # nothing came before the PINGRESP
        # a broken ACL file: the running one stays, and the log says why
        acl.write_text("user alice\ntopic readwrite t/#\nbogus line\n")
        p.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the running one" in log.read_text(), 10, what="the failed reload")
        assert f"{acl}:3: acl_file: invalid line" in log.read_text()
        alice.send(w.publish("t/3", b"three"))
        bob.ping()
        alice.close()
        bob.close()
    finally:
        p.terminate()
        p.wait(10)


# ---- per_listener_settings in files, and on a real server -------------------------------------------------

def test_mosquitto_conf_per_listener_settings_go_to_the_listener_they_follow(tmp_path):
    from edgebroker.configfile import load_config

    conf = tmp_path / "m.conf"
    conf.write_text("per_listener_settings true\nlistener 1883 127.0.0.1\nallow_anonymous true\n"
                    "auto_id_prefix open-\nlistener 1884\npassword_file /etc/pw\nacl_file /etc/acl\n")
    loaded = load_config(str(conf))
    first, second = loaded.config.listeners
    assert (first.allow_anonymous, first.auto_id_prefix, first.password_file) == (True, "open-", None)
    assert (second.allow_anonymous, second.password_file, second.acl_file) == (None, "/etc/pw", "/etc/acl")
    assert loaded.config.password_file is None and loaded.config.auto_id_prefix == "auto-"
    # per_listener_settings false (the default): the same lines are global, wherever they are
    conf.write_text("listener 1883\npassword_file /etc/pw\nlistener 1884\nallow_anonymous true\n")
    config = load_config(str(conf)).config
    assert config.password_file == "/etc/pw" and config.allow_anonymous is True
    assert all(not ls.security_fields() for ls in config.listeners)
    # Mosquitto's rule: it must come first
    conf.write_text("password_file /etc/pw\nper_listener_settings true\nlistener 1883\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(conf))
    assert (info.value.line, info.value.option) == (2, "per_listener_settings")
    assert "before every other security option" in str(info.value)
    # before any listener: the default listener's (port), else a warning that it applies to none
    conf.write_text("per_listener_settings true\nallow_anonymous true\nport 1885\n")
    (default,) = load_config(str(conf)).config.listeners
    assert default.port == 1885 and default.allow_anonymous is True
    conf.write_text("per_listener_settings true\nallow_anonymous true\nlistener 1883\n")
    loaded = load_config(str(conf))
    assert loaded.config.listeners[0].allow_anonymous is None
    assert [(w_.line, w_.option) for w_ in loaded.warnings] == [(2, "allow_anonymous")]


def test_two_listeners_with_their_own_settings(tmp_path):
    pw = password_file(tmp_path, [("alice", "a")], "-H", "sha512")
    config = Config(per_listener_settings=True, persistence=False, sys_interval=0, listeners=[
        Listener(0, "127.0.0.1", allow_anonymous=True, auto_id_prefix="open-"),
        Listener(0, "127.0.0.1", password_file=pw, allow_zero_length_clientid=False)])
    logs: List[str] = []
    server = Server(config, log=lambda level, msg: logs.append(msg))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        open_port, closed_port = server.ports
        with RawClient("127.0.0.1", open_port) as c:
            assert c.connect("") == w.connack(False, 0)
            wait_for(lambda: any(s.startswith("open-") for s in server.broker.sessions), what="open- client")
        with RawClient("127.0.0.1", closed_port) as c:
            assert c.connect("x") == w.connack(False, 5)
        with RawClient("127.0.0.1", closed_port) as c:
            assert c.connect("", username="alice", password=b"a") == w.connack(False, 2)  # no empty ids here
        with RawClient("127.0.0.1", closed_port) as c:
            assert c.connect("y", username="alice", password=b"a") == w.connack(False, 0)
        assert any(m.startswith("Listener on port") and "Anonymous clients are allowed" in m for m in logs)
        assert any("Anonymous clients are refused" in m and pw in m for m in logs)
    finally:
        server.shutdown()
        thread.join(10)


def test_local_clients_are_checked_by_their_username_and_client_id(tmp_path):
    acl = ("user bridge\ntopic write up/#\ntopic read down/#\n"
           "user bob\ntopic readwrite down/#\ntopic read up/#\ntopic write own/#\n"
           "pattern read own/%c\n")
    core = core_with(tmp_path, acl, USERS, allow_anonymous=True)
    got: List[Tuple[str, bytes]] = []
    local = core.broker.attach_local("bridge1", lambda t, p, q, r: got.append((t, p)), username="bridge")
    assert local.subscribe("down/#", 0) == 0 and local.subscribe("up/#", 0) == 0x80
    assert local.subscribe("own/+", 0) == 0  # own/bridge1 through the %c pattern
    bob = login(core, "bob", "bob", b"b")
    bob.subscribe(1, ("up/#", 0), ("down/#", 0))
    local.publish("up/x", b"1")    # the bridge may write up/#: bob gets it
    local.publish("down/x", b"2")  # it may not write down/#: dropped
    assert [(p.topic, p.payload) for p in bob.publishes()] == [("up/x", b"1")]
    bob.send(w.publish("down/y", b"3") + w.publish("own/bridge1", b"4") + w.publish("own/other", b"5"))
    assert got == [("down/y", b"3"), ("own/bridge1", b"4")]  # own/other: not the bridge's to read
