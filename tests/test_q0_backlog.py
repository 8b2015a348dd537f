"""Live QoS 0 output to a client that stops reading is bounded by count, as in Mosquitto 2.0: once the
client's socket refuses part of what it is sent, a QoS 0 message joins its output only while fewer than
max_queued_messages packets wait to be written (and below max_queued_bytes, when set); the others are
dropped and counted in $SYS. While the socket takes everything, a loop turn's output is not counted.
QoS 0 is "at most once" [MQTT-4.3.1-1]: dropping is allowed; what is delivered keeps its order
[MQTT-4.6.0-6]."""
from __future__ import annotations

import socket
import threading
import time
from typing import List, Optional, Tuple

import pytest

import mqttwire as w
from edgebroker.broker import Broker
from edgebroker.codec import Parser
from edgebroker.config import Config, Listener
from edgebroker.connection import EARLY_FLUSH, OUT_BUFFER_LIMIT, Q0_BACKED_UP, Q0_REPLAY
from edgebroker.packets import Publish
from edgebroker.server import SEND_SLICE, Server
from test_auth_interop import MOSQUITTO, BrokerProc, brokers  # noqa: F401  (brokers: the fixture)

TIMEOUT = 20.0


def _connect(b: Broker, client_id: str, extra: bytes = b""):
    conn = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(conn, w.connect(client_id) + extra, 0.0)
    conn.out.clear()
    conn.out_size = 0
    return conn


def _flood(b: Broker, pub, count: int, start: int = 0) -> None:
    b.data_received(pub, b"".join(w.publish("t/x", b"%06d" % i) for i in range(start, start + count)), 1.0)


def _payloads(conn) -> List[bytes]:
    return [p.payload for p in Parser().feed(b"".join(conn.out)) if isinstance(p, Publish)]


# ---- the core: what the loop tells it, and what it then sends -------------------------------------------

def test_a_turn_to_a_socket_that_takes_everything_is_not_counted():
    """A fast subscriber's turn can hold thousands of packets (bench S1): none of them is dropped while
    the socket has refused nothing."""
    b = Broker(Config(persistence=False, max_queued_messages=10), now=0.0)
    sub = _connect(b, "sub", w.subscribe(1, [("t/#", 0)]))
    pub = _connect(b, "pub")
    _flood(b, pub, 500)
    assert _payloads(sub) == [b"%06d" % i for i in range(500)]
    assert b.stats.publish_dropped == 0 and sub.q0_limit == EARLY_FLUSH and not b.early


def test_a_turn_past_early_flush_asks_the_loop_to_send_it_early():
    """Past connection.EARLY_FLUSH bytes of output, a QoS 0 delivery lists the connection once in
    `early` (the loop sends its output after the read being handled) and takes the fast path again:
    nothing is dropped, nothing reordered."""
    b = Broker(Config(persistence=False, max_queued_messages=10), now=0.0)
    sub = _connect(b, "sub", w.subscribe(1, [("t/#", 0)]))
    pub = _connect(b, "pub")
    count = EARLY_FLUSH // len(w.publish("t/x", b"000000")) + 100
    _flood(b, pub, count)
    assert b.early == [sub] and sub.q0_limit == OUT_BUFFER_LIMIT and sub.out_size > EARLY_FLUSH
    assert _payloads(sub) == [b"%06d" % i for i in range(count)] and b.stats.publish_dropped == 0
    # Listed once at most: backed up and flowing again while listed, it is not listed twice.
    b.output_backed_up(sub)
    b.output_flowing(sub)
    _flood(b, pub, count, start=count)
    assert b.early == [sub] and sub.q0_limit == OUT_BUFFER_LIMIT
    b.connection_lost(sub, 2.0)  # a closed connection is not kept for the loop
    assert b.early == []


def test_a_backed_up_connection_gets_qos0_only_below_max_queued_messages():
    logs: List[str] = []
    b = Broker(Config(persistence=False, max_queued_messages=10), now=0.0,
               log=lambda level, text: logs.append(text))
    sub = _connect(b, "sub", w.subscribe(1, [("t/#", 0)]))
    other = _connect(b, "other", w.subscribe(1, [("t/#", 0)]))
    pub = _connect(b, "pub")
    sub.write(b"\xd0\x00")  # what the socket left: one chunk waits
    b.output_backed_up(sub)
    assert sub.q0_limit == Q0_BACKED_UP
    _flood(b, pub, 50)
    assert len(sub.out) == 10, "packets waiting, the rest left by the socket included"
    assert _payloads(sub) == [b"%06d" % i for i in range(9)]  # the first ones, in order
    assert _payloads(other) == [b"%06d" % i for i in range(50)]  # another subscriber is not held back
    assert b.stats.publish_dropped == 41
    # Once all of it has left, the next messages go again, and the next episode is logged again.
    sub.out.clear()
    sub.out_size = 0
    b.output_flowing(sub)
    assert sub.q0_limit == EARLY_FLUSH and not sub.session.drop_logged
    _flood(b, pub, 20, start=50)
    assert _payloads(sub) == [b"%06d" % i for i in range(50, 70)]
    drops = [t for t in logs if "dropped" in t]
    assert drops == ["Outgoing messages are being dropped for client sub (max_queued_messages 10 reached)."]
    b.output_backed_up(sub)  # a second episode (20 packets wait already: all dropped), logged once more
    _flood(b, pub, 20, start=70)
    assert len([t for t in logs if "dropped" in t]) == 2 and b.stats.publish_dropped == 41 + 20


def test_max_queued_messages_0_leaves_only_the_output_buffer_limit():
    b = Broker(Config(persistence=False, max_queued_messages=0), now=0.0)
    sub = _connect(b, "sub", w.subscribe(1, [("t/#", 0)]))
    pub = _connect(b, "pub")
    b.output_backed_up(sub)
    _flood(b, pub, 3000)
    assert len(_payloads(sub)) == 3000 and b.stats.publish_dropped == 0


def test_max_queued_bytes_bounds_the_bytes_waiting():
    b = Broker(Config(persistence=False, max_queued_messages=0, max_queued_bytes=1000), now=0.0)
    sub = _connect(b, "sub", w.subscribe(1, [("t/#", 0)]))
    pub = _connect(b, "pub")
    b.output_backed_up(sub)
    _flood(b, pub, 100)
    size = len(w.publish("t/x", b"000000"))
    assert sub.out_size <= 1000 and len(_payloads(sub)) == 1000 // size
    assert b.stats.publish_dropped == 100 - 1000 // size


def test_backed_up_during_a_retained_replay_keeps_the_replay_order():
    """Live messages wait behind a retained replay (the replay's own slow path); backing up and
    flowing again in the middle of it does not end that early."""
    b = Broker(Config(persistence=False, max_queued_messages=10), now=0.0)
    pub = _connect(b, "pub")
    b.data_received(pub, b"".join(w.publish("t/r%d" % i, b"r" * 2000, retain=True) for i in range(100)), 0.0)
    sub = _connect(b, "sub")
    b.data_received(sub, w.subscribe(1, [("t/#", 0)]), 0.0)
    assert sub.replay is not None and sub.q0_limit == Q0_REPLAY
    b.output_backed_up(sub)
    _flood(b, pub, 5)
    assert list(sub.replay)[-5:][0].payload == b"000000", "queued behind the replay, not dropped"
    b.output_flowing(sub)
    assert sub.q0_limit == Q0_REPLAY
    assert b.stats.publish_dropped == 0


# ---- the loop: it tells the core when a send leaves a remainder, and sends in bounded slices --------------

def test_the_loop_reports_a_backlog_and_its_end_and_sends_in_slices():
    server = Server(Config(listeners=[Listener(0, "127.0.0.1")], allow_anonymous=True, persistence=False))
    a, peer = socket.socketpair()
    try:
        a.setblocking(False)
        conn = server.broker.connection_made("test", 0, time.monotonic())
        conn.handle = a
        server._sel.register(a, 1, conn)
        chunk = b"\x30" + bytes([98]) + b"\x00\x03t/x" + b"p" * 93  # a 100-byte PUBLISH
        total = 4 * 1024 * 1024
        for _ in range(total // len(chunk)):
            conn.write(chunk)
        server._flush(conn, time.monotonic())
        assert conn.q0_limit == Q0_BACKED_UP and conn in server._writing
        # What the socket refused is at most one slice, joined; the rest waits as it was written.
        assert len(conn.out[0]) < SEND_SLICE + len(chunk) and all(c is chunk for c in conn.out[1:])
        got = 0
        while conn.out:
            peer.settimeout(TIMEOUT)
            got += len(peer.recv(1 << 20))
            server._flush(conn, time.monotonic())
        assert conn.q0_limit == EARLY_FLUSH and conn not in server._writing
        peer.setblocking(False)
        while True:
            try:
                data = peer.recv(1 << 20)
            except BlockingIOError:
                break
            got += len(data)
        assert got == total // len(chunk) * len(chunk)
    finally:
        a.close()
        peer.close()
        server.shutdown()


def test_the_loop_sends_a_turns_output_past_early_flush_after_the_read():
    """The subscriber of a QoS 0 flood whose turn passed EARLY_FLUSH gets its output after the read that
    passed it (`_flush_early`, which the loop calls after each read of a turn of several events), in
    order, and is watched from EARLY_FLUSH again."""
    server = Server(Config(listeners=[Listener(0, "127.0.0.1")], allow_anonymous=True, persistence=False))
    a, peer = socket.socketpair()
    try:
        a.setblocking(False)
        b = server.broker
        sub = b.connection_made("sub", 0, time.monotonic())
        sub.handle = a
        server._sel.register(a, 1, sub)
        b.data_received(sub, w.connect("sub") + w.subscribe(1, [("t/#", 0)]), 0.0)
        pub = _connect(b, "pub")
        count = EARLY_FLUSH // len(w.publish("t/x", b"000000")) + 100
        _flood(b, pub, count)
        assert b.early == [sub]
        server._flush_early(time.monotonic())
        assert not sub.out and not b.early and sub.q0_limit == EARLY_FLUSH
        peer.settimeout(TIMEOUT)
        got, parser = [], Parser()
        while len(got) < count + 2:
            got += parser.feed(peer.recv(1 << 20))
        assert _publishes(got) == [b"%06d" % i for i in range(count)]
    finally:
        a.close()
        peer.close()
        server.shutdown()


# ---- end to end, and the same observations from Mosquitto ------------------------------------------------

class _Stuck:
    """A QoS 0 subscriber with a small receive buffer that reads nothing until told to."""

    def __init__(self, port: int, client_id: str, topic_filter: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        self.parser = Parser()
        self.sock.sendall(w.connect(client_id) + w.subscribe(1, [(topic_filter, 0)]))
        self.packets: List[object] = []
        while len(self.packets) < 2:  # CONNACK, SUBACK
            self.read()

    def read(self) -> None:
        data = self.sock.recv(65536)
        assert data, "the broker closed the connection"
        self.packets += self.parser.feed(data)

    def close(self) -> None:
        self.sock.close()


def _publishes(packets, topic: Optional[str] = None) -> List[bytes]:
    return [p.payload for p in packets if isinstance(p, Publish) and (topic is None or p.topic == topic)]


def _is_subsequence(got: List[bytes], sent: List[bytes]) -> bool:
    it = iter(sent)
    return all(x in it for x in got)


def _stuck_subscriber_run(port: int, count: int, at_peak=lambda: None) -> Tuple[List[bytes], List[bytes], int]:
    """A stuck and a reading subscriber on t/#, `count` QoS 0 messages on t/flood; at_peak is called once
    the flood is handled, before the stuck one reads. Returns what the stuck one got once it read again,
    what the reading one got, and the $SYS dropped count that follows.

    Neither broker's output to a backed-up client can be waited for with a PINGREQ (Mosquitto 2.0.11 left
    one from the stuck client unanswered), nor with one marker message (it may be dropped too): a marker
    is published again until it arrives. For the stuck one, once before each of its reads, so that a
    dropped marker always has output behind it that wakes the next read."""
    sent = [b"%07d" % i + PAD for i in range(count)]
    sys_sub = w.RawClient("127.0.0.1", port, TIMEOUT)
    healthy = w.RawClient("127.0.0.1", port, TIMEOUT)
    pub = w.RawClient("127.0.0.1", port, TIMEOUT)
    stuck = _Stuck(port, "stuck", "t/#")
    try:
        for c, cid in ((sys_sub, "sys"), (healthy, "healthy"), (pub, "pub")):
            assert c.connect(cid) == w.connack(False, 0)
        healthy.send(w.subscribe(1, [("t/#", 0)]))
        assert healthy.read_raw_packet() == w.suback(1, [0])
        got: List[bytes] = []
        done = threading.Event()
        reader = threading.Thread(target=_read_until_marker, args=(healthy, got, done), daemon=True)
        reader.start()
        pub.send(b"".join(w.publish("t/flood", m) for m in sent))
        pub.ping()  # the broker has handled every PUBLISH before this
        deadline = time.monotonic() + TIMEOUT
        while not done.is_set():
            assert time.monotonic() < deadline, "the reading subscriber was not served"
            pub.send(w.publish("t/healthy", b"marker"))
            done.wait(0.05)
        reader.join(TIMEOUT)
        assert _is_subsequence(got, sent)  # [MQTT-4.6.0-6]
        at_peak()
        # The stuck one reads again: what waited for it, then a marker published after that.
        deadline = time.monotonic() + TIMEOUT
        while not _publishes(stuck.packets, "t/stuck"):
            assert time.monotonic() < deadline, "the stuck subscriber was not served again"
            pub.send(w.publish("t/stuck", b"marker"))
            stuck.read()
        before = _publishes(stuck.packets, "t/flood")
        assert before and _is_subsequence(before, sent)  # in order [MQTT-4.6.0-6]
        assert len(before) < count, "some were dropped"
        dropped_at_least = (count - len(before)) + (count - len(got))
        sys_sub.send(w.subscribe(1, [("$SYS/broker/publish/messages/dropped", 0)]))
        assert sys_sub.read_raw_packet() == w.suback(1, [0])
        while True:  # it follows within sys_interval (1 s)
            first, body = sys_sub.read_packet()
            value = int(body[2 + int.from_bytes(body[:2], "big"):])
            if value >= dropped_at_least:
                break
        return before, got, value
    finally:
        for c in (sys_sub, healthy, pub, stuck):
            c.close()


def _read_until_marker(c: w.RawClient, got: List[bytes], done: threading.Event) -> None:
    parser = Parser()
    c.sock.settimeout(TIMEOUT)
    try:
        while True:
            data = c.sock.recv(65536)
            assert data
            for p in parser.feed(data):
                if isinstance(p, Publish):
                    if p.topic != "t/flood":
                        return
                    got.append(p.payload)
    finally:
        done.set()


#: 60,000 packets of 214 bytes, 12.8 MB: past what the kernel's socket buffers hold for a stuck reader on
#: loopback (a sender's buffer grows up to net.ipv4.tcp_wmem's 4 MiB), and past OUT_BUFFER_LIMIT.
COUNT = 60_000
PAD = b"." * 193
PACKET = len(w.publish("t/flood", b"0000000" + PAD))


def test_a_subscriber_that_stops_reading_keeps_a_bounded_backlog(make_broker):
    """End to end: the broker's backlog for the stuck subscriber stays within max_queued_messages
    packets (plus the one slice the socket took in part), the other subscriber gets everything in
    order, $SYS counts the drops, and the stuck one, reading again, gets an in-order subsequence and
    then live messages."""
    rb = make_broker(max_queued_messages=50, sys_interval=1)
    seen = {}

    def look() -> None:
        # The flood is handled and the stuck client has read nothing, so no writable event touches
        # its output now: what the broker holds for it, read from this thread.
        conn = rb.server.broker.sessions["stuck"].conn
        seen.update(packets=len(conn.out), size=conn.out_size, limit=conn.q0_limit)

    before, got, dropped = _stuck_subscriber_run(rb.port, COUNT, look)
    assert seen["limit"] == Q0_BACKED_UP
    assert seen["packets"] <= 50
    assert seen["size"] <= SEND_SLICE + 64 * 1024 + 50 * PACKET, seen
    assert dropped >= COUNT - len(before)
    assert rb.server.broker.stats.publish_dropped >= COUNT - len(before)


@pytest.mark.skipif(not __import__("os").path.exists(MOSQUITTO), reason="mosquitto not installed")
@pytest.mark.parametrize("kind", ["edgebroker", "mosquitto"])
def test_the_same_observations_from_mosquitto(brokers, kind):  # noqa: F811
    """Differential: Mosquitto 2.0 with the same max_queued_messages shows the same behaviour from
    outside: drops for the stuck subscriber, counted in $SYS, an in-order subsequence once it reads, live
    messages after that, and the reading subscriber served."""
    b = brokers(kind, "allow_anonymous true\nmax_queued_messages 50\nsys_interval 1\n")
    before, got, dropped = _stuck_subscriber_run(b.port, COUNT)
    assert dropped >= COUNT - len(before)
