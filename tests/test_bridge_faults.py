"""Bridges over a bad network, end to end: a loopback TCP proxy in the test sits between the gateway
(edgebroker, its own process) and Debian's Mosquitto, and misbehaves on command.

Theory of operation: `Proxy` accepts on an ephemeral loopback port and relays each connection to the
upstream's port from one thread of its own (a selector). On command it cuts every relayed connection
with a RST (SO_LINGER 0), optionally once a given number of bytes went up (mid-stream, mid-packet); it
stops relaying existing connections while keeping their sockets open (a remote gone without a FIN); or
it holds what the upstream answers until released (a remote that answers slowly). It counts the
connections it accepted: the bridge's connect attempts. The gateway, upstream and clients are the
fixtures of tests/test_bridge.py. Waits are on conditions with deadlines, never sleeps.
"""
from __future__ import annotations

import os
import re
import selectors
import socket
import struct
import threading
import time
from typing import Callable, Dict, List, Optional

import pytest

from test_bridge import (TIMEOUT, Gateway, Upstream, bridge_block, bridge_up, collect, procs,  # noqa: F401
                         publish_all, subscribe, sys_snapshot)
from util import wait_for


class Proxy:
    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self.cuts = 0                       # connections cut by reset_after
        self.up_bytes = 0                   # bytes relayed towards the upstream, all connections
        self.held: List[bytes] = []         # upstream answers held while `holding`
        self.holding = False
        self._cut_at: Optional[int] = None  # cut when up_bytes reaches this
        self._peer: Dict[socket.socket, socket.socket] = {}
        self._frozen: List[socket.socket] = []
        self._commands: List[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self.listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    # ---- commands from the test (run on the proxy's thread) ----

    def _do(self, command: Callable[[], None]) -> None:
        done = threading.Event()

        def run() -> None:
            command()
            done.set()

        with self._lock:
            self._commands.append(run)
        self._wake_w.send(b"x")
        assert done.wait(TIMEOUT)

    def reset(self) -> None:
        """Cut every relayed connection now, with a RST to the gateway."""
        self._do(self._reset_all)

    def reset_after(self, up_bytes: int) -> None:
        """Cut every relayed connection once `up_bytes` more bytes went towards the upstream."""
        def arm() -> None:
            self._cut_at = self.up_bytes + up_bytes
        self._do(arm)

    def freeze(self) -> None:
        """Stop relaying the existing connections; keep their sockets open (no FIN, no RST)."""
        def run() -> None:
            for s in list(self._peer):
                self._sel.unregister(s)
                self._frozen.append(s)
                del self._peer[s]
        self._do(run)

    def hold(self) -> None:
        """Keep what the upstream sends until `release`."""
        def run() -> None:
            self.holding = True
        self._do(run)

    def release(self) -> None:
        def run() -> None:
            self.holding = False
            for s, data in self.held:  # type: ignore[misc]
                if s.fileno() != -1:
                    s.sendall(data)
            self.held = []
        self._do(run)

    def close(self) -> None:
        def run() -> None:
            self._running = False
            self._reset_all()
            for s in self._frozen:
                s.close()
            self._frozen = []
        self._do(run)
        self._thread.join(TIMEOUT)
        self._sel.close()
        for s in (self.listener, self._wake_r, self._wake_w):
            s.close()

    # ---- the relay ----

    def _reset_all(self) -> None:
        for s in list(self._peer):
            self._sel.unregister(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        self._peer.clear()
        self._cut_at = None

    def _drop(self, s: socket.socket) -> None:
        other = self._peer.pop(s, None)
        self._sel.unregister(s)
        s.close()
        if other is not None:
            self._peer.pop(other, None)
            self._sel.unregister(other)
            other.close()

    def _run(self) -> None:
        while self._running:
            for key, _ in self._sel.select():
                if key.data == "wake":
                    self._wake_r.recv(4096)
                    with self._lock:
                        commands, self._commands = self._commands, []
                    for command in commands:
                        command()
                elif key.data == "accept":
                    try:
                        gw, _ = self.listener.accept()
                    except BlockingIOError:
                        continue
                    self.accepted += 1
                    up = socket.create_connection(("127.0.0.1", self.target), timeout=TIMEOUT)
                    self._peer[gw] = up
                    self._peer[up] = gw
                    self._sel.register(gw, selectors.EVENT_READ, "up")     # gateway -> upstream
                    self._sel.register(up, selectors.EVENT_READ, "down")   # upstream -> gateway
                else:
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    if s not in self._peer:
                        continue  # cut or frozen earlier in this round
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        self._drop(s)
                        continue
                    try:
                        self._relay(s, key.data, data)
                    except OSError:
                        # The other side went away while we relayed to it (a gateway that stopped
                        # with the remote's answers unread resets its socket): drop the pair, as the
                        # network would, rather than end the proxy's thread.
                        if s in self._peer:
                            self._drop(s)

    def _relay(self, s: socket.socket, direction: str, data: bytes) -> None:
        dst = self._peer[s]
        if direction == "down":
            if self.holding:
                self.held.append((dst, data))  # type: ignore[arg-type]
            else:
                dst.sendall(data)
            return
        if self._cut_at is not None and self.up_bytes + len(data) >= self._cut_at:
            part = data[:self._cut_at - self.up_bytes]  # up to the cut, mid-packet
            dst.sendall(part)
            self.up_bytes += len(part)
            self.cuts += 1
            self._reset_all()
            return
        dst.sendall(data)
        self.up_bytes += len(data)


@pytest.fixture
def proxies() -> List[Proxy]:
    made: List[Proxy] = []
    yield made  # type: ignore[misc]
    for p in made:
        p.close()


def upstream(tmp_path, procs, name: str = "up") -> Upstream:  # noqa: F811
    # A subscriber that is slow or away gets everything (no queue limit), in order (one in flight).
    up = Upstream(tmp_path / name, "allow_anonymous true\nmax_queued_messages 0\nmax_inflight_messages 0").start()
    procs.append(up)
    return up


def first_occurrences(payloads: List[int]) -> List[int]:
    seen = set()
    out = []
    for p in payloads:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


# ---- 1. a reset in the middle of a QoS 1 stream ------------------------------------------------------

def test_reset_mid_stream_reconnects_and_loses_nothing(tmp_path, procs, proxies):  # noqa: F811
    """The proxy cuts the bridge's connection with a RST after 10 KB went up, in the middle of 2,000 QoS 1
    messages (mid-packet): the bridge backs off, reconnects, resends what was in flight, and every message
    reaches the upstream subscriber; duplicates are allowed (QoS 1), the order of first arrivals is kept."""
    n = 2000
    up = upstream(tmp_path, procs)
    cloud = up.client("cloud")
    subscribe(cloud, ("s/#", 1))
    proxy = Proxy(up.port)
    proxies.append(proxy)
    gw = Gateway(tmp_path / "gw", bridge_block(proxy, "s/# out 1", extra="notifications = false\n")).start()
    procs.append(gw)
    bridge_up(gw)
    assert proxy.accepted == 1
    proxy.reset_after(10_000)  # a message is ~13 bytes on the wire: cut near message 750
    sensor = gw.client("sensor")
    publish_all(sensor, [("s/n", str(i).encode(), 1, False) for i in range(n)])
    wait_for(lambda: proxy.cuts, TIMEOUT, what="the cut")
    got = collect(cloud, n, timeout=60.0)
    more = collect(cloud, 10 ** 6, timeout=0.5)  # duplicates still on their way, if any
    payloads = [int(m.payload) for m in got + more]
    wait_for(lambda: gw.log().count("Bridge cloud connected") >= 2, TIMEOUT, what="the reconnect in the log")
    assert proxy.accepted >= 2
    assert "next attempt in" in gw.log(), gw.log()
    assert "Connection reset by peer" in gw.log() or "Broken pipe" in gw.log(), gw.log()
    assert first_occurrences(payloads) == list(range(n)), payloads[:50]
    sensor.close()
    cloud.close()
    gw.stop()


# ---- 2. a remote gone without a FIN -------------------------------------------------------------------

def test_remote_gone_silent_is_noticed_by_keepalive(tmp_path, procs, proxies):  # noqa: F811
    """The proxy stops relaying but keeps the sockets open: no FIN, no RST. The bridge's keepalive (5 s)
    notices no answer to its PINGREQ, reconnects, and the message published meanwhile arrives."""
    up = upstream(tmp_path, procs)
    cloud = up.client("cloud")
    subscribe(cloud, ("k/#", 1))
    proxy = Proxy(up.port)
    proxies.append(proxy)
    gw = Gateway(tmp_path / "gw", bridge_block(proxy, "k/# out 1", extra="notifications = false\n"
                                               "keepalive_interval = 5\n")).start()
    procs.append(gw)
    bridge_up(gw)
    sensor = gw.client("sensor")
    publish_all(sensor, [("k/1", b"before", 1, False)])
    assert [m.payload for m in collect(cloud, 1)] == [b"before"]
    proxy.freeze()
    publish_all(sensor, [("k/2", b"during", 1, False)])  # sent into the silent link, never acknowledged
    wait_for(lambda: "no answer to PINGREQ" in gw.log(), 4 * TIMEOUT, what="the keepalive to notice")
    wait_for(lambda: gw.log().count("Bridge cloud connected") >= 2, TIMEOUT, what="the reconnect")
    assert proxy.accepted == 2
    assert [m.payload for m in collect(cloud, 1)] == [b"during"]
    sensor.close()
    cloud.close()
    gw.stop()


# ---- 3. start_type once, round_robin, notifications_local_only -------------------------------------------

def sys_values(probe, until: Callable[[Dict[str, bytes]], bool], what: str) -> Dict[str, bytes]:
    """$SYS values by topic (the probe subscribed to them) once `until` holds for all seen so far."""
    values: Dict[str, bytes] = {}

    def seen() -> bool:
        for m in collect(probe, 1, 0.3):
            values[m.topic] = m.payload
        return until(values)

    wait_for(seen, TIMEOUT, what=what)
    return values


def uptime(values: Dict[str, bytes]) -> int:
    return int(values.get("$SYS/broker/uptime", b"0 seconds").split()[0])


def test_start_type_once_does_not_reconnect(tmp_path, procs, proxies):  # noqa: F811
    up = upstream(tmp_path, procs)
    proxy = Proxy(up.port)
    proxies.append(proxy)
    gw = Gateway(tmp_path / "gw", bridge_block(proxy, "o/# out 1", extra='start_type = "once"\n')).start()
    procs.append(gw)
    bridge_up(gw)
    probe = gw.client("probe")
    subscribe(probe, ("$SYS/broker/connection/gw1.cloud/#", 0), ("$SYS/broker/uptime", 0))
    start = uptime(sys_values(probe, lambda v: "$SYS/broker/uptime" in v, "$SYS uptime"))
    proxy.reset()
    wait_for(lambda: "start_type once: not reconnecting" in gw.log(), TIMEOUT, what="the bridge to give up")
    publish_all(gw.client("sensor"), [("o/1", b"kept", 1, False)])
    # restart_timeout is 1 s: by an uptime 4 s later, a bridge that reconnects would have tried.
    base = "$SYS/broker/connection/gw1.cloud/"
    values = sys_values(probe, lambda v: uptime(v) >= start + 4 and v.get(base + "queue/messages") == b"1",
                        "4 s of uptime and the queued message")
    assert proxy.accepted == 1
    assert values[base + "connects"] == b"1" and values[base + "state"] == b"0", values
    assert gw.log().count("Bridge cloud connected") == 1
    gw.stop()


def test_round_robin_takes_the_next_address_even_when_the_first_is_up(tmp_path, procs, proxies):  # noqa: F811
    """round_robin true: after a connection ends the next attempt goes to the next address, even though
    the first one still answers (round_robin false would go back to the primary)."""
    a, b = upstream(tmp_path, procs, "a"), upstream(tmp_path, procs, "b")
    pa, pb = Proxy(a.port), Proxy(b.port)
    proxies.extend([pa, pb])
    block = bridge_block(pa, "r/# out 1", extra="round_robin = true\n").replace(
        f'address = "127.0.0.1:{pa.port}"', f'address = ["127.0.0.1:{pa.port}", "127.0.0.1:{pb.port}"]')
    on_a, on_b = a.client("on-a"), b.client("on-b")
    subscribe(on_a, ("r/#", 1))
    subscribe(on_b, ("r/#", 1))
    gw = Gateway(tmp_path / "gw", block).start()
    procs.append(gw)
    wait_for(lambda: f"connected to 127.0.0.1:{pa.port}" in gw.log(), TIMEOUT, what="the first address")
    sensor = gw.client("sensor")
    # Each cut waits until the gateway has the remote's PUBACK (its messages/sent counts it): cut before
    # that, the bridge rightly sends the message again, to the next address (at least once).
    sent = gw.client("sys")
    subscribe(sent, ("$SYS/broker/connection/gw1.cloud/messages/sent", 0))
    publish_all(sensor, [("r/1", b"to-a", 1, False)])
    assert [m.payload for m in collect(on_a, 1)] == [b"to-a"]
    sys_snapshot(sent, {"messages/sent": b"1"})
    pa.reset()
    wait_for(lambda: f"connected to 127.0.0.1:{pb.port}" in gw.log(), TIMEOUT, what="the second address")
    assert pa.accepted == 1 and pb.accepted == 1
    publish_all(sensor, [("r/2", b"to-b", 1, False)])
    assert [m.payload for m in collect(on_b, 1)] == [b"to-b"]
    sys_snapshot(sent, {"messages/sent": b"2"})
    pb.reset()
    wait_for(lambda: gw.log().count(f"connected to 127.0.0.1:{pa.port}") == 2, TIMEOUT, what="the first again")
    assert pa.accepted == 2 and pb.accepted == 1
    publish_all(sensor, [("r/3", b"to-a-again", 1, False)])
    assert [m.payload for m in collect(on_a, 1)] == [b"to-a-again"]
    gw.stop()


def test_notifications_local_only_publishes_the_state_here_only(tmp_path, procs):  # noqa: F811
    """No state publish on the remote and no will there (kill -9 leaves nothing); the local state topic
    says 1 while connected."""
    up = upstream(tmp_path, procs)
    cloud = up.client("cloud")
    subscribe(cloud, ("$SYS/broker/connection/#", 1), ("n/#", 1))
    gw = Gateway(tmp_path / "gw", bridge_block(up, "n/# out 1", extra="notifications_local_only = true\n")).start()
    procs.append(gw)
    bridge_up(gw)
    local = gw.client("local")
    subscribe(local, ("$SYS/broker/connection/gw1.cloud/state", 1))
    assert [(m.payload, m.retain) for m in collect(local, 1)] == [(b"1", True)]
    # Had the bridge published its state on the remote, it would have come first (sent on connect).
    publish_all(gw.client("sensor"), [("n/1", b"first", 1, False)])
    assert [(m.topic, m.payload) for m in collect(cloud, 1)] == [("n/1", b"first")]
    gw.kill9()
    wait_for(lambda: re.search(r"[Cc]lient gw1\.cloud .*(closed its connection|disconnecting)", up.log()),
             TIMEOUT, what="Mosquitto to notice the gateway is gone")
    # A will would be published as Mosquitto handles the disconnect: before this marker.
    pub = up.client("marker")
    pub.publish("n/marker", b"m", 1)
    assert [(m.topic, m.payload) for m in collect(cloud, 1)] == [("n/marker", b"m")]
    pub.close()
    cloud.close()


# ---- 4. a remote that answers slowly ---------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_ping(port: int) -> bytes:
    """CONNECT, PINGREQ on a plain socket: returns the PINGRESP."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as s:
        s.sendall(b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04ping")
        assert s.recv(4) == b"\x20\x02\x00\x00"
        s.sendall(b"\xc0\x00")
        return s.recv(2)


def test_slow_remote_is_waited_for_without_a_tight_loop(tmp_path, procs, proxies):  # noqa: F811
    """The proxy holds the remote's CONNACK (and all it says) until the test releases it: the bridge makes
    one connect attempt and waits; meanwhile the loop serves local clients (CONNECT, PINGREQ, QoS 1
    publishes) and burns little CPU; once released, the queued messages go up in order."""
    up = upstream(tmp_path, procs)
    cloud = up.client("cloud")
    subscribe(cloud, ("w/#", 1))
    proxy = Proxy(up.port)
    proxies.append(proxy)
    proxy.hold()
    gw = Gateway(tmp_path / "gw", bridge_block(proxy, "w/# out 1", extra="notifications = false\n")).start()
    procs.append(gw)
    assert gw.proc is not None
    wait_for(lambda: proxy.held, TIMEOUT, what="the CONNACK, held by the proxy")
    cpu0, wall0 = cpu_seconds(gw.proc.pid), time.monotonic()
    assert raw_ping(gw.port) == b"\xd0\x00"
    publish_all(gw.client("sensor"), [("w/n", str(i).encode(), 1, False) for i in range(50)])
    probe = gw.client("probe")
    subscribe(probe, ("$SYS/broker/uptime", 0))
    start = uptime(sys_values(probe, lambda v: "$SYS/broker/uptime" in v, "$SYS uptime"))
    sys_values(probe, lambda v: uptime(v) >= start + 3, "3 s of uptime")
    used, wall = cpu_seconds(gw.proc.pid) - cpu0, time.monotonic() - wall0
    assert used < wall / 2, (used, wall)  # a loop spinning while it waits would use about all of it
    assert proxy.accepted == 1
    assert "Bridge cloud connected" not in gw.log()
    proxy.release()
    bridge_up(gw)
    assert [int(m.payload) for m in collect(cloud, 50)] == list(range(50))
    assert proxy.accepted == 1
    gw.stop()


def test_reset_mid_qos2_stream_delivers_exactly_once(tmp_path, procs, proxies):  # noqa: F811
    """The same cut in a QoS 2 stream: the remote keeps the bridge's session (cleansession false), the
    bridge resends PUBLISH (DUP) or PUBREL for what was in flight, and each message arrives once, in order."""
    n = 1000
    up = upstream(tmp_path, procs)
    cloud = up.client("cloud")
    subscribe(cloud, ("s/#", 2))
    proxy = Proxy(up.port)
    proxies.append(proxy)
    gw = Gateway(tmp_path / "gw", bridge_block(proxy, "s/# out 2", extra="notifications = false\n")).start()
    procs.append(gw)
    bridge_up(gw)
    proxy.reset_after(6_000)
    sensor = gw.client("sensor")
    publish_all(sensor, [("s/n", str(i).encode(), 2, False) for i in range(n)])
    wait_for(lambda: proxy.cuts, TIMEOUT, what="the cut")
    wait_for(lambda: gw.log().count("Bridge cloud connected") >= 2, TIMEOUT, what="the reconnect")
    got = collect(cloud, n, timeout=60.0)
    got += collect(cloud, 1, timeout=1.0)  # a duplicate, if one were on its way
    assert [int(m.payload) for m in got] == list(range(n))
    sensor.close()
    cloud.close()
    gw.stop()


def test_a_connack_that_never_comes_ends_the_attempt_after_the_keepalive(tmp_path, procs, proxies):  # noqa: F811
    """The proxy holds the CONNACK for good: the attempt ends after keepalive_interval (5 s), is logged,
    and the next one comes after restart_timeout, through a new connection (the old one closed)."""
    up = upstream(tmp_path, procs)
    proxy = Proxy(up.port)
    proxies.append(proxy)
    proxy.hold()
    gw = Gateway(tmp_path / "gw", bridge_block(proxy, "x/# out 1", extra="keepalive_interval = 5\n")).start()
    procs.append(gw)
    wait_for(lambda: "no CONNACK within the keepalive period" in gw.log(), 3 * TIMEOUT, what="the attempt to end")
    wait_for(lambda: proxy.accepted >= 2, TIMEOUT, what="the next attempt")
    assert "Bridge cloud connected" not in gw.log()
    proxy.release()  # the current attempt's CONNACK goes through: connected at last
    bridge_up(gw)
    gw.stop()


def test_reconnect_backoff_draws_uniformly_between_its_bounds():
    """restart_timeout BASE CAP: each wait is drawn uniformly from [BASE, 3 x the last wait) (bridge.py's
    _uniform, os.urandom's bits instead of the random module)."""
    from edgebroker.bridge import _uniform
    draws = [_uniform(2.0, 6.0) for _ in range(2000)]
    assert all(2.0 <= d < 6.0 for d in draws)
    assert 3.8 < sum(draws) / len(draws) < 4.2  # the mean is 4.0, its standard error 0.026
    assert min(draws) < 2.2 and max(draws) > 5.8
    assert len(set(draws)) > 1990
