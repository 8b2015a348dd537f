"""Broker options with Mosquitto's semantics, end to end over real sockets (and one in memory with a
fake clock): message_size_limit, clientid_prefixes, persistent_client_expiration, a Unix socket
listener, log_dest topic, connection_messages, and a reload that keeps the old config on error."""
from __future__ import annotations

import io
import os
import socket
import threading
import time

import mqttwire as w
import pytest

from edgebroker import log as L
from edgebroker.broker import Broker
from edgebroker.config import Config, Listener
from edgebroker.errors import ConfigError
from edgebroker.server import Server, configure_logger
from util import wait_for


def _subscribed(port: int, topic: str, qos: int = 0) -> w.RawClient:
    c = w.RawClient("127.0.0.1", port)
    c.send(w.connect("watch-" + topic.replace("/", "_").replace("#", "all").replace("$", "")))
    assert c.read_packet(5)[0] == 0x20
    c.send(w.subscribe(1, [(topic, qos)]))
    assert c.read_packet(5)[0] == 0x90
    return c


def test_message_size_limit_acknowledges_and_drops_larger_payloads(make_broker):
    broker = make_broker(message_size_limit=10)
    sub = _subscribed(broker.port, "big/#")
    pub = w.RawClient("127.0.0.1", broker.port)
    pub.send(w.connect("pub"))
    pub.read_packet(5)
    pub.send(w.publish("big/a", b"x" * 11, qos=1, packet_id=3))
    assert pub.read_packet(5) == (0x40, b"\x00\x03")  # the flow completes (Mosquitto)
    pub.send(w.publish("big/a", b"y" * 10, qos=0))
    assert sub.read_packet(5) == (0x30, b"\x00\x05big/a" + b"y" * 10)  # only the one within the limit
    assert broker.server.broker.stats.publish_dropped == 1


def test_clientid_prefixes_refuses_other_ids_with_identifier_rejected(make_broker):
    broker = make_broker(clientid_prefixes="sensor-")
    ok = w.RawClient("127.0.0.1", broker.port)
    ok.send(w.connect("sensor-17"))
    assert ok.read_packet(5) == (0x20, b"\x00\x00")
    bad = w.RawClient("127.0.0.1", broker.port)
    bad.send(w.connect("laptop"))
    assert bad.read_packet(5) == (0x20, b"\x00\x02")
    bad.expect_closed(5)


def test_persistent_client_expiration_discards_offline_sessions():
    """In memory with a fake clock: an offline persistent session older than the expiration is
    discarded and counted; one reconnected in time is kept."""
    b = Broker(Config(persistence=False, persistent_client_expiration=3600.0), now=0.0)
    for cid in ("old", "back"):
        c = b.connection_made("127.0.0.1:1", 1883, 0.0)
        b.data_received(c, w.connect(cid, clean=False) + w.subscribe(1, [("t", 1)]) + w.disconnect(), 0.0)
    c = b.connection_made("127.0.0.1:2", 1883, 3000.0)
    b.data_received(c, w.connect("back", clean=False), 3000.0)
    b.tick(3601.0)
    assert "old" not in b.sessions and "back" in b.sessions
    assert b.stats.clients_expired == 1
    assert b.tree.count == 1  # the expired session's subscription is gone


def test_persistent_client_expiration_counts_time_offline_before_a_restart(tmp_path):
    config = Config(persistence=True, persistence_location=str(tmp_path), persistent_client_expiration=60.0)
    from edgebroker.store import SqliteStore
    store = SqliteStore(config.database_path())
    b = Broker(config, now=0.0, store=store)
    c = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(c, w.connect("dev", clean=False) + w.disconnect(), 0.0)
    b.end_turn(0.0)
    store._conn.execute("UPDATE sessions SET disconnected_at = disconnected_at - 3600")  # offline an hour
    store.close()
    store = SqliteStore(config.database_path())
    b = Broker(config, now=10.0, store=store)
    assert "dev" in b.sessions
    b.tick(11.0)
    assert "dev" not in b.sessions
    store.close()


def test_unix_socket_listener_serves_mqtt(tmp_path):
    path = str(tmp_path / "edgebroker.sock")
    server = Server(Config(allow_anonymous=True, persistence=False, listeners=[Listener(port=0, unix_socket=path)]))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        s.sendall(w.connect("over-unix") + w.subscribe(1, [("u", 0)]) + w.publish("u", b"hi"))
        data = b""
        want = w.connack(False, 0) + w.suback(1, [0]) + w.publish("u", b"hi")
        while len(data) < len(want):
            chunk = s.recv(4096)
            assert chunk
            data += chunk
        assert data == want
        s.close()
    finally:
        server.shutdown()
        thread.join(10)
    assert not os.path.exists(path)  # removed at exit


def test_log_dest_topic_publishes_log_lines_to_sys_broker_log(make_broker):
    logger = L.Logger(stream=io.StringIO())
    config = Config(allow_anonymous=True, persistence=False, listeners=[Listener(0, "127.0.0.1")],
                    log_dest=("topic",))
    configure_logger(logger, config)
    server = Server(config, log=logger)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        watch = _subscribed(server.ports[0], "$SYS/broker/log/#")
        probe = w.RawClient("127.0.0.1", server.ports[0])
        probe.send(w.connect("noisy-client"))
        probe.read_packet(5)

        def notice_about_probe():
            first, body = watch.read_packet(5)
            return b"$SYS/broker/log/N" in body and b"noisy-client" in body
        wait_for(notice_about_probe, timeout=10, what="a notice on $SYS/broker/log/N")
    finally:
        server.shutdown()
        thread.join(10)


class _FlushCounting(io.StringIO):
    """A log stream that remembers what had been flushed, and how often."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0
        self.flushed = ""

    def flush(self) -> None:
        self.flushes += 1
        self.flushed = self.getvalue()


def test_logger_held_by_the_loop_flushes_once_when_asked_and_each_line_otherwise():
    out = _FlushCounting()
    logger = L.Logger(stream=out, timestamp=False)
    logger.hold_lines(True)
    before = out.flushes
    logger(L.NOTICE, "one")
    logger(L.NOTICE, "two")
    assert out.getvalue() == "" and out.flushes == before and logger.pending
    logger.flush()
    assert out.flushed == "one\ntwo\n" and out.flushes == before + 1 and not logger.pending
    logger.hold_lines(False)
    logger(L.NOTICE, "three")
    assert out.flushed == "one\ntwo\nthree\n" and not logger.pending


def test_lines_held_before_a_reconfigure_go_to_the_destination_they_were_logged_for(tmp_path):
    first = _FlushCounting()
    logger = L.Logger(stream=first, timestamp=False)
    logger.hold_lines(True)
    logger(L.NOTICE, "before the reload")
    logger.configure(L.DEFAULT_TYPES, ("file",), str(tmp_path / "new.log"), timestamp=False)
    logger(L.NOTICE, "after the reload")
    logger.hold_lines(False)
    logger.close()
    assert first.flushed == "before the reload\n"
    assert (tmp_path / "new.log").read_text() == "after the reload\n"


def test_lines_of_other_threads_are_not_held():
    out = _FlushCounting()
    logger = L.Logger(stream=out, timestamp=False)
    logger.hold_lines(True)
    thread = threading.Thread(target=logger, args=(L.NOTICE, "from another thread"))
    thread.start()
    thread.join()
    assert out.flushed == "from another thread\n" and not logger.pending
    logger.hold_lines(False)


def test_running_loop_flushes_its_log_lines_by_the_end_of_their_turn():
    """While the loop runs it holds its lines (one write per turn, not one per line): a connection's
    lines are written once it is served, nothing is left held after the loop stops, and lines are
    written at once again then."""
    out = _FlushCounting()
    logger = L.Logger(stream=out)
    server = Server(Config(allow_anonymous=True, persistence=False, listeners=[Listener(0, "127.0.0.1")]),
                    log=logger)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        probe = w.RawClient("127.0.0.1", server.ports[0])
        probe.send(w.connect("held-lines"))
        probe.read_packet(5)
        wait_for(lambda: "New client connected from" in out.flushed and "as held-lines" in out.flushed,
                 what="the connect line, flushed")
        probe.close()
        wait_for(lambda: "Client held-lines" in out.flushed, what="its disconnect line, flushed")
    finally:
        server.shutdown()
        thread.join(10)
    assert not logger.pending and out.flushed == out.getvalue()
    logger(L.NOTICE, "after the loop")
    assert out.flushed.endswith("after the loop\n")  # the loop has stopped: written at once


def test_log_timestamps_follow_the_clock_and_a_new_format_at_once(monkeypatch):
    """The timestamp is made once per second (lines come in bursts: two per connecting client), so
    each line has its own second's stamp, and log_timestamp_format set by a reload applies to the very
    next line, in the same second."""
    clock = [1_700_000_000.2]
    monkeypatch.setattr(L.time, "time", lambda: clock[0])
    out = io.StringIO()
    logger = L.Logger(stream=out)
    logger(L.NOTICE, "a")
    clock[0] += 0.5
    logger(L.NOTICE, "b")
    clock[0] += 0.5  # the next second
    logger(L.NOTICE, "c")
    logger.configure(L.DEFAULT_TYPES, ["stderr"], timestamp_format="%Y")
    logger.streams = [out]
    logger(L.NOTICE, "d")
    assert out.getvalue().splitlines() == ["1700000000: a", "1700000000: b", "1700000001: c",
                                           time.strftime("%Y", time.localtime(1_700_000_001)) + ": d"]


def test_connection_messages_false_silences_connect_lines():
    out = io.StringIO()
    logger = L.Logger(stream=out)
    b = Broker(Config(persistence=False, connection_messages=False), now=0.0, log=logger)
    c = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(c, w.connect("quiet") + w.disconnect(), 0.0)
    assert "quiet" not in out.getvalue()
    b2 = Broker(Config(persistence=False), now=0.0, log=logger)
    c = b2.connection_made("127.0.0.1:1", 1883, 0.0)
    b2.data_received(c, w.connect("loud") + w.disconnect(), 0.0)
    assert "New client connected from 127.0.0.1:1 as loud" in out.getvalue()


def test_reload_applies_new_limits_and_keeps_the_old_config_when_the_new_one_is_bad(capsys):
    """The reloaded config's logging applies too (log_dest stderr by default), so read stderr."""
    configs = [Config(allow_anonymous=True, persistence=False, listeners=[Listener(0, "127.0.0.1")],
                      max_queued_messages=7)]
    logger = L.Logger()
    err = []

    def logged() -> str:
        err.append(capsys.readouterr().err)
        return "".join(err)

    def reloader() -> Config:
        if isinstance(configs[-1], Exception):
            raise configs[-1]
        return configs[-1]
    server = Server(configs[0], log=logger, reloader=reloader)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        configs.append(Config(allow_anonymous=True, persistence=False, listeners=[Listener(0, "127.0.0.1")],
                              max_queued_messages=3))
        server.request_reload()
        wait_for(lambda: server.broker.config.max_queued_messages == 3, what="reloaded limit")
        configs.append(ConfigError("bad value", file="edgebroker.toml", line=4, option="max_queued_messages"))
        server.request_reload()
        wait_for(lambda: "keeping the running one" in logged(), what="reload error logged")
        assert server.broker.config.max_queued_messages == 3
        assert "edgebroker.toml:4: max_queued_messages: bad value" in logged()
    finally:
        server.shutdown()
        thread.join(10)


@pytest.mark.parametrize("bad", [{"durability": "fast"}, {"autosave_interval": 0}])
def test_persistence_option_validators_fire(bad):
    with pytest.raises(ConfigError) as info:
        Config(**bad)
    assert next(iter(bad)) in str(info.value)


def _cli_env(tmp_path) -> dict:
    env = dict(os.environ)
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return env


def _wait_for_line(lines, proc, needle: str, timeout: float = 10.0) -> str:
    import queue as q
    deadline = __import__("time").monotonic() + timeout
    while True:
        remaining = deadline - __import__("time").monotonic()
        assert remaining > 0, f"no line with {needle!r}"
        line = lines.get(timeout=remaining)
        assert line is not None, f"process ended before a line with {needle!r} (exit {proc.poll()})"
        if needle in line:
            return line


def test_sighup_reloads_the_file_and_a_bad_file_keeps_the_running_config(tmp_path):
    import queue as q
    import re
    import signal
    import subprocess
    import sys

    conf = tmp_path / "edgebroker.toml"
    conf.write_text('persistence = false\nallow_anonymous = true\n[[listener]]\nport = 0\naddress = "127.0.0.1"\n')
    proc = subprocess.Popen([sys.executable, "-m", "edgebroker", "-c", str(conf)], env=_cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: "q.Queue" = q.Queue()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.put(line)
        lines.put(None)
    threading.Thread(target=pump, daemon=True).start()
    try:
        port = int(re.search(r"port (\d+)\.", _wait_for_line(lines, proc, "listen socket")).group(1))
        _wait_for_line(lines, proc, "running")
        c = w.RawClient("127.0.0.1", port)
        c.send(w.connect("before-reload"))
        c.read_packet(5)
        _wait_for_line(lines, proc, "as before-reload")

        conf.write_text('persistence = false\nconnection_messages = false\nallow_anonymous = true\n'
                        '[[listener]]\nport = 0\naddress = "127.0.0.1"\n')
        proc.send_signal(signal.SIGHUP)
        _wait_for_line(lines, proc, "Reloaded configuration.")
        conf.write_text('persistence = false\nmax_inflight_messages = -3\n')
        proc.send_signal(signal.SIGHUP)
        error = _wait_for_line(lines, proc, "keeping the running one")
        assert "max_inflight_messages" in error and str(conf) in error
        # The reloaded connection_messages = false is still in force, and the broker still serves.
        c2 = w.RawClient("127.0.0.1", port)
        c2.send(w.connect("after-reload") + w.pingreq())
        assert c2.read_packet(5)[0] == 0x20 and c2.read_packet(5)[0] == 0xD0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        rest = []
        while True:
            line = lines.get(timeout=10)
            if line is None:
                break
            rest.append(line)
        assert not any("after-reload" in line for line in rest), rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_daemon_flag_detaches_writes_the_pid_file_and_serves(tmp_path):
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "edgebroker.pid"
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    conf = tmp_path / "edgebroker.toml"
    conf.write_text(f'persistence = false\nallow_anonymous = true\npid_file = "{pid_file}"\n[[listener]]\nport = {port}\n'
                    f'address = "127.0.0.1"\n')
    started = subprocess.run([sys.executable, "-m", "edgebroker", "-c", str(conf), "-d"],
                             env=_cli_env(tmp_path), capture_output=True, timeout=30)
    assert started.returncode == 0, started.stderr  # the foreground process exits once detached
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(), what="pid file"))
    try:
        assert pid != os.getpid()
        c = w.RawClient("127.0.0.1", port)
        c.send(w.connect("to-daemon") + w.pingreq())
        assert c.read_packet(5)[0] == 0x20 and c.read_packet(5)[0] == 0xD0
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_file.exists(), what="pid file removed at exit")


def test_store_errors_are_counted_in_sys(tmp_path):
    """A full disk (SQLite's max_page_count reached) shows in $SYS/broker/store/errors, and the broker
    keeps serving."""
    server = Server(Config(allow_anonymous=True, listeners=[Listener(0, "127.0.0.1")],
                           persistence_location=str(tmp_path),
                           sys_interval=0.1))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        pages = server.store._conn.execute("PRAGMA page_count").fetchone()[0]
        server.store._conn.execute(f"PRAGMA max_page_count = {pages}")
        watch = _subscribed(server.ports[0], "$SYS/broker/store/errors")
        pub = w.RawClient("127.0.0.1", server.ports[0])
        pub.send(w.connect("filler"))
        pub.read_packet(5)
        pub.send(w.publish("keep/a", b"z" * 20000, qos=1, retain=True, packet_id=1))
        assert pub.read_packet(5) == (0x40, b"\x00\x01")  # still served

        def errors_reported() -> bool:
            first, body = watch.read_packet(5)
            topic = b"$SYS/broker/store/errors"
            prefix = len(topic).to_bytes(2, "big") + topic
            return body.startswith(prefix) and body[len(prefix):] not in (b"", b"0")
        wait_for(errors_reported, what="store errors in $SYS")
    finally:
        server.shutdown()
        thread.join(10)


def test_listener_max_connections_refuses_the_extra_connection(make_broker):
    broker = make_broker(listeners=[Listener(0, "127.0.0.1", max_connections=2)])
    clients = []
    for i in range(2):
        c = w.RawClient("127.0.0.1", broker.port)
        c.send(w.connect(f"c{i}"))
        assert c.read_packet(5)[0] == 0x20
        clients.append(c)
    extra = w.RawClient("127.0.0.1", broker.port)
    extra.expect_closed(5)
    clients[0].close()
    wait_for(lambda: broker.server.broker.stats.clients_connected == 1, what="one client left")
    again = w.RawClient("127.0.0.1", broker.port)
    again.send(w.connect("again"))
    assert again.read_packet(5)[0] == 0x20


def test_new_database_has_small_pages_and_migration_3_drops_the_delivery_index(tmp_path):
    import sqlite3

    import sqlite_utils

    from edgebroker.store import MIGRATIONS, SCHEMA_VERSION, SqliteStore

    def indexes(path: str):
        c = sqlite3.connect(path)
        try:
            return [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                            "AND tbl_name = 'deliveries' AND sql IS NOT NULL")]
        finally:
            c.close()

    fresh = str(tmp_path / "fresh.db")
    SqliteStore(fresh).close()
    c = sqlite3.connect(fresh)
    assert c.execute("PRAGMA page_size").fetchone()[0] == 512  # SQLite's smallest: see store.PAGE_SIZE
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    c.close()
    assert indexes(fresh) == []

    old = str(tmp_path / "v2.db")
    db = sqlite_utils.Database(old)
    for migration in MIGRATIONS[:2]:
        migration(db)
    db.execute("PRAGMA user_version = 2")
    db["deliveries"].insert({"seq": 7, "client_id": "dev", "topic": "t", "payload": b"x", "qos": 1,
                             "retain": 0, "packet_id": None, "state": 0})
    db["sessions"].insert({"client_id": "dev", "disconnected_at": None})
    db.conn.commit()
    db.close()
    assert indexes(old) == ["idx_deliveries_client_id_seq"]
    store = SqliteStore(old)
    assert store.load().deliveries[0][0] == 7
    store.close()
    assert indexes(old) == []


# ---- scheduling_policy: the loop thread's CPU scheduling policy ------------------------------------------

def _serve_in_thread(config: Config, before=None):
    """Run a Server's loop in a thread that first runs `before()` (e.g. pin itself to one CPU); return
    (server, thread, log lines)."""
    lines = []
    server = Server(config, log=lambda level, msg: lines.append(msg))

    def run() -> None:
        if before is not None:
            before()
        server.serve_forever()
    thread = threading.Thread(target=run, name="edgebroker-sched", daemon=True)
    thread.start()
    return server, thread, lines


def _policy_of(server: Server, thread: threading.Thread) -> int:
    """The loop thread's policy once the loop runs (a PINGREQ answered proves it does)."""
    with w.RawClient("127.0.0.1", server.ports[0]) as c:
        c.connect("sched")
        c.ping()
    return os.sched_getscheduler(thread.native_id)


def _stop(server: Server, thread: threading.Thread) -> None:
    server.shutdown()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("policy, expected", [("batch", "SCHED_BATCH"), ("other", "SCHED_OTHER")])
def test_scheduling_policy_sets_the_loop_threads_policy(policy, expected):
    config = Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")], persistence=False,
                    scheduling_policy=policy)
    start = os.SCHED_BATCH if policy == "other" else os.SCHED_OTHER  # so that the option changes it
    server, thread, lines = _serve_in_thread(
        config, before=lambda: os.sched_setscheduler(0, start, os.sched_param(0)))
    try:
        assert _policy_of(server, thread) == getattr(os, expected)
        assert any(expected in line for line in lines), lines
    finally:
        _stop(server, thread)


def test_scheduling_policy_auto_is_batch_on_one_cpu_only():
    config = Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")], persistence=False)
    assert config.scheduling_policy == "auto"
    one_cpu = min(os.sched_getaffinity(0))
    server, thread, lines = _serve_in_thread(config, before=lambda: os.sched_setaffinity(0, {one_cpu}))
    try:
        assert _policy_of(server, thread) == os.SCHED_BATCH
    finally:
        _stop(server, thread)
    config = Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")], persistence=False)
    server, thread, lines = _serve_in_thread(config)
    try:
        several = len(os.sched_getaffinity(0)) > 1
        assert _policy_of(server, thread) == (os.SCHED_OTHER if several else os.SCHED_BATCH)
        assert not several or not any("SCHED_" in line for line in lines), lines
    finally:
        _stop(server, thread)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to take one away")
def test_scheduling_policy_auto_follows_the_cpus_while_the_broker_runs():
    """The CPUs the broker may use can change while it runs (taskset -p): auto
    looks again when a client connects, so a broker pinned to one CPU after its start runs as one
    started there (SCHED_BATCH), and goes back to the normal policy when it gets more CPUs again."""
    config = Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")], persistence=False)
    cpus = os.sched_getaffinity(0)
    server, thread, lines = _serve_in_thread(config)
    try:
        assert _policy_of(server, thread) == os.SCHED_OTHER
        os.sched_setaffinity(thread.native_id, {min(cpus)})
        assert os.sched_getscheduler(thread.native_id) == os.SCHED_OTHER  # nothing changes until a client comes
        assert _policy_of(server, thread) == os.SCHED_BATCH
        assert any("SCHED_BATCH" in line for line in lines), lines
        os.sched_setaffinity(thread.native_id, cpus)
        assert _policy_of(server, thread) == os.SCHED_OTHER
        assert any("SCHED_OTHER" in line for line in lines), lines
    finally:
        _stop(server, thread)


def test_scheduling_policy_named_does_not_follow_the_cpus():
    """A policy named in the configuration stands whatever the CPUs: other stays other on one CPU."""
    config = Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")], persistence=False,
                    scheduling_policy="other")
    server, thread, lines = _serve_in_thread(config)
    try:
        assert _policy_of(server, thread) == os.SCHED_OTHER
        os.sched_setaffinity(thread.native_id, {min(os.sched_getaffinity(0))})
        assert _policy_of(server, thread) == os.SCHED_OTHER
    finally:
        _stop(server, thread)


def test_scheduling_policy_auto_keeps_a_policy_set_before_start():
    """A service manager's choice (systemd CPUSchedulingPolicy=) stands, even on one CPU."""
    config = Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")], persistence=False)
    one_cpu = min(os.sched_getaffinity(0))

    def idle_on_one_cpu() -> None:
        os.sched_setaffinity(0, {one_cpu})
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    server, thread, lines = _serve_in_thread(config, before=idle_on_one_cpu)
    try:
        assert _policy_of(server, thread) == os.SCHED_IDLE
        assert not any("SCHED_" in line for line in lines), lines
    finally:
        _stop(server, thread)
