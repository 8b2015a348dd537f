"""Flow control: a publisher cannot outrun an online subscriber that acknowledges, so QoS 1/2 messages
the broker accepted are not dropped by the subscriber's bounded queue; a subscriber that stops
acknowledging holds no one back (its queue drops, counted, as Mosquitto's does)."""
from __future__ import annotations

import socket
import threading

import mqttwire as w

from edgebroker.broker import FLOW_STALL, REFILL_BYTES, Broker
from edgebroker.codec import Parser
from edgebroker.config import Config
from edgebroker.packets import Publish


def test_fast_qos1_publisher_and_acking_subscriber_lose_nothing_with_a_small_queue(make_broker):
    """5,000 QoS 1 messages written as fast as TCP takes them (no publisher window at all) to a
    subscriber that acknowledges what it reads; max_queued_messages 100 would overflow without flow
    control. Every message arrives, in order, and nothing is counted as dropped."""
    broker = make_broker(max_queued_messages=100)
    count = 5000
    sub = socket.create_connection(("127.0.0.1", broker.port), timeout=20)
    sub.sendall(w.connect("flow-sub") + w.subscribe(1, [("flow/#", 1)]))
    parser = Parser()
    got = []
    while len(got) < 2:  # CONNACK, SUBACK
        got += parser.feed(sub.recv(65536))
    pub = socket.create_connection(("127.0.0.1", broker.port), timeout=20)
    pub.sendall(w.connect("flow-pub"))
    burst = b"".join(w.publish("flow/t", b"%06d" % i, qos=1, packet_id=(i % 65000) + 1) for i in range(count))
    sender = threading.Thread(target=pub.sendall, args=(burst,))
    sender.start()

    def drain_pub() -> None:  # read the publisher's PUBACKs so its socket never blocks on them
        try:
            while pub.recv(65536):
                pass
        except OSError:
            pass
    threading.Thread(target=drain_pub, daemon=True).start()

    payloads = []
    while len(payloads) < count:
        data = sub.recv(65536)
        assert data, f"subscriber closed after {len(payloads)} messages"
        acks = []
        for packet in parser.feed(data):
            if isinstance(packet, Publish):
                payloads.append(packet.payload)
                acks.append(w.puback(packet.packet_id))
        sub.sendall(b"".join(acks))
    sender.join(20)
    assert payloads == [b"%06d" % i for i in range(count)]
    assert broker.server.broker.stats.publish_dropped == 0
    sub.close()
    pub.close()


def _connect(b: Broker, client_id: str, now: float, extra: bytes = b""):
    conn = b.connection_made("127.0.0.1:1", 1883, now)
    b.data_received(conn, w.connect(client_id) + extra, now)
    conn.out.clear()
    conn.out_size = 0
    return conn


def test_stalled_subscriber_stops_holding_the_publisher_back():
    b = Broker(Config(persistence=False, max_queued_messages=40), now=0.0)
    stuck = _connect(b, "stuck", 0.0, w.subscribe(1, [("t", 1)]))
    other = _connect(b, "other", 0.0, w.subscribe(1, [("t", 0)]))
    pub = _connect(b, "pub", 0.0)
    burst = b"".join(w.publish("t", b"%d" % i, qos=1, packet_id=i + 1) for i in range(100))
    b.data_received(pub, burst, 1.0)
    # 20 in flight + 20 queued (the high-water mark, half of 40): the publisher is paused mid-read.
    assert pub.paused_by and pub.stash
    assert b.flow_changed == [pub]
    b.tick(1.0 + FLOW_STALL / 2)
    assert pub.paused_by  # still waiting: the subscriber might just be slow
    b.tick(1.0 + FLOW_STALL + 1.0)
    assert not pub.paused_by  # stalled: released
    b.resume(pub, 4.0)
    assert not pub.stash
    assert b.stats.publish_dropped > 0  # past the stall, its bounded queue drops (counted)
    # The QoS 0 subscriber got every message; the stuck one got its window and a bounded queue.
    delivered = [p for p in Parser().feed(b"".join(other.out)) if isinstance(p, Publish)]
    assert [p.payload for p in delivered] == [b"%d" % i for i in range(100)]
    assert len(stuck.session.inflight) == 20 and len(stuck.session.queue) == 40


def test_paused_publisher_resumes_with_its_stashed_packets_in_order():
    b = Broker(Config(persistence=False, max_queued_messages=40, max_inflight_messages=5), now=0.0)
    sub = _connect(b, "sub", 0.0, w.subscribe(1, [("t", 1)]))
    pub = _connect(b, "pub", 0.0)
    b.data_received(pub, b"".join(w.publish("t", b"%d" % i, qos=1, packet_id=i + 1) for i in range(60)), 0.0)
    assert pub.paused_by
    received = []
    parser = Parser()
    for step in range(200):
        out = b"".join(sub.out)
        sub.out.clear()
        sub.out_size = 0
        for p in parser.feed(out):
            if isinstance(p, Publish):
                received.append(p.payload)
                b.data_received(sub, w.puback(p.packet_id), step * 0.01)
        for conn in list(dict.fromkeys(b.flow_changed)):
            b.flow_changed.clear()
            b.resume(conn, step * 0.01)
        if len(received) == 60:
            break
    assert received == [b"%d" % i for i in range(60)]
    assert b.stats.publish_dropped == 0


def test_a_paused_publisher_is_not_timed_out_by_keepalive():
    """While flow control stops reading a publisher, its PINGREQs cannot arrive; keepalive must not
    close it for that [MQTT-3.1.2-24], and its clock restarts when it is resumed."""
    b = Broker(Config(persistence=False, max_queued_messages=40), now=0.0)
    _connect(b, "slow", 0.0, w.subscribe(1, [("t", 1)]))
    pub = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(pub, w.connect("pub", keepalive=1) + b"".join(
        w.publish("t", b"x", qos=1, packet_id=i + 1) for i in range(100)), 0.0)
    assert pub.paused_by
    b.tick(1.9)  # past 1.5 x keepalive, but paused (and the subscriber is not yet stalled)
    assert not pub.closed
    b.tick(3.5)  # the subscriber stalled: the publisher is released and resumed
    b.resume(pub, 3.5)
    assert not pub.closed and not pub.paused_by
    b.tick(4.9)  # 1.4 s after resuming: within 1.5 x keepalive of the restarted clock
    assert not pub.closed
    b.tick(5.6)
    assert pub.closed  # and then keepalive applies as usual


def test_a_large_window_is_refilled_in_slices_one_per_flush():
    """max_inflight_messages 0 (no limit) and 3,000 queued messages: a reconnect does not encode them
    all at once. Each refill stops at REFILL_BYTES of output and goes on only after the loop reports
    that output sent (output_drained) and ends a turn; every message leaves once, in order, and one
    published meanwhile comes after the queue, not in the middle of it."""
    b = Broker(Config(persistence=False, max_inflight_messages=0, max_queued_messages=10000), now=0.0)
    sub = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(sub, w.connect("sub", clean=False) + w.subscribe(1, [("t", 1)]), 0.0)
    b.connection_lost(sub, 0.0)
    pub = _connect(b, "pub", 0.0)
    count = 3000
    b.data_received(pub, b"".join(w.publish("t", b"%099d" % i, qos=1, packet_id=i + 1) for i in range(count)), 0.0)
    one = len(w.publish("t", b"%099d" % 0, qos=1, packet_id=1))

    sub = b.connection_made("127.0.0.1:2", 1883, 1.0)
    b.data_received(sub, w.connect("sub", clean=False), 1.0)
    parser = Parser()
    received = []
    slices = 0
    while True:
        assert sub.out_size <= REFILL_BYTES + one
        received += [p.payload for p in parser.feed(b"".join(sub.out)) if isinstance(p, Publish)]
        sub.out.clear()
        sub.out_size = 0
        if not sub.refill_held:
            break
        slices += 1
        b.end_turn(1.0)
        assert not sub.out, "a held refill went on before its output was sent"
        if slices == 2:
            b.data_received(pub, w.publish("t", b"late", qos=1, packet_id=count + 1), 1.0)
        b.output_drained(sub)  # what the loop calls once the socket took all of it
        b.end_turn(1.0)
    assert received == [b"%099d" % i for i in range(count)] + [b"late"]
    assert slices >= count * one // REFILL_BYTES
    assert len(sub.session.inflight) == count + 1 and not sub.session.queue


def test_an_unlimited_window_drains_a_large_queue_to_a_client_that_never_acknowledges(make_broker):
    """End to end: with max_inflight_messages 0 the whole queue (5,000 messages, several refill
    slices) reaches a reconnecting client that sends nothing after its CONNECT, so the loop carries
    each held refill on by itself, not on the client's next packet."""
    broker = make_broker(max_inflight_messages=0, max_queued_messages=10000)
    count = 5000
    sub = w.RawClient("127.0.0.1", broker.port, timeout=20)
    sub.connect("drain-sub", clean=False)
    sub.send(w.subscribe(1, [("drain/#", 1)]))
    sub.read_raw_packet()
    sub.send(w.disconnect())
    sub.sock.close()
    pub = w.RawClient("127.0.0.1", broker.port, timeout=20)
    pub.connect("drain-pub")
    pub.send(b"".join(w.publish("drain/t", b"%060d" % i, qos=1, packet_id=i + 1) for i in range(count)))
    acks = b""
    while len(acks) < 4 * count:
        data = pub.sock.recv(65536)
        assert data, "publisher closed"
        acks += data
    pub.sock.close()

    sub = socket.create_connection(("127.0.0.1", broker.port), timeout=20)
    sub.sendall(w.connect("drain-sub", clean=False))
    parser = Parser()
    payloads = []
    while len(payloads) < count:
        data = sub.recv(65536)
        assert data, f"closed after {len(payloads)} messages"
        payloads += [p.payload for p in parser.feed(data) if isinstance(p, Publish)]
    assert payloads == [b"%060d" % i for i in range(count)]
    sub.close()


def test_a_large_resend_on_reconnect_goes_in_slices_in_order_and_skips_what_was_acknowledged():
    """[MQTT-4.4.0-1] with 3,000 messages in flight (max_inflight_messages 0): on reconnect the
    unacknowledged PUBLISH packets are resent with DUP set in their original order, in slices of
    REFILL_BYTES like a refill. A PUBACK for one not yet resent removes it from the rest; a message
    published during the resend comes after it."""
    b = Broker(Config(persistence=False, max_inflight_messages=0, max_queued_messages=10000), now=0.0)
    sub = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(sub, w.connect("sub", clean=False) + w.subscribe(1, [("t", 1)]), 0.0)
    pub = _connect(b, "pub", 0.0)
    count = 3000
    b.data_received(pub, b"".join(w.publish("t", b"%099d" % i, qos=1, packet_id=i + 1) for i in range(count)), 0.0)
    one = len(w.publish("t", b"%099d" % 0, qos=1, packet_id=1))
    first = []
    parser = Parser()
    while True:  # the live window: everything goes out, in slices, and nothing is acknowledged
        first += [p for p in parser.feed(b"".join(sub.out)) if isinstance(p, Publish)]
        sub.out.clear()
        sub.out_size = 0
        if not sub.refill_held:
            break
        b.output_drained(sub)
        b.end_turn(0.0)
    assert [p.payload for p in first] == [b"%099d" % i for i in range(count)]
    b.connection_lost(sub, 0.0)

    sub = b.connection_made("127.0.0.1:2", 1883, 1.0)
    b.data_received(sub, w.connect("sub", clean=False), 1.0)
    parser = Parser()
    again = []
    slices = 0
    skipped = first[-1].packet_id
    while True:
        assert sub.out_size <= REFILL_BYTES + one
        again += [p for p in parser.feed(b"".join(sub.out)) if isinstance(p, Publish)]
        sub.out.clear()
        sub.out_size = 0
        if not sub.refill_held:
            break
        slices += 1
        if slices == 1:
            b.data_received(sub, w.puback(skipped), 1.0)  # the client had it from before
            b.data_received(pub, w.publish("t", b"late", qos=1, packet_id=count + 1), 1.0)
            assert not sub.out, "a message overtook the resend"
        b.output_drained(sub)
        b.end_turn(1.0)
    assert slices >= count * one // REFILL_BYTES
    assert [(p.packet_id, p.payload, p.dup) for p in again[:-1]] == \
        [(p.packet_id, p.payload, True) for p in first if p.packet_id != skipped]
    assert (again[-1].payload, again[-1].dup) == (b"late", False)
