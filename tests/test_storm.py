"""A storm of malformed input over real loopback sockets: the broker survives and keeps serving.

Bad input ends only the connection that sent it [MQTT-4.8.0-1]. Here ~40 threads open a few hundred
connections that send random bytes, valid packets (built by tests/mqttwire.py, which does not import
edgebroker) with random bit flips, insertions, deletions and truncations, oversized remaining lengths,
garbage before CONNECT and garbage after a valid CONNECT, then half-close and read to EOF (so the
broker handles every byte sent; a reset or a failed send just means the broker closed on bad input,
the expected outcome). A valid CONNECT in a script waits for its CONNACK, and a PINGREQ marker for its
PINGRESP, so valid packets are also handled by connected clients before the bad ones arrive. The storm
is bounded in packets (MAX_PACKETS) and in time (STORM_SECONDS), and seeded so a failure reproduces
(the seed is in the assertion messages; EDGEBROKER_STORM_SEED=n runs another storm). Afterwards the broker thread is alive, a subscriber connected before the storm is
still connected and receives a QoS 1 message, a fresh client works end to end, and the connection count
returns to what it was. Two more tests send 20 MB of junk and a 200 MB declared length: the broker must
close those connections early instead of reading or buffering it all.
"""
from __future__ import annotations

import os
import queue
import random
import socket
import threading
import time
from typing import Any, List, Optional

import pytest

import mqttwire as w
from mqttwire import RawClient, hexs
from util import wait_for

mqtt = pytest.importorskip("paho.mqtt.client")

SEED = int(os.environ.get("EDGEBROKER_STORM_SEED", "20240611"))  # set it to explore other storms
WORKERS = 40
MAX_PACKETS = 3000
STORM_SECONDS = 20.0
TIMEOUT = 5.0
CHECK_TOPIC = "storm/check"


# ---------------------------------------------------------------------------------------------------------
# Clients that must survive the storm
# ---------------------------------------------------------------------------------------------------------

class Sentinel:
    """A paho-mqtt subscriber on CHECK_TOPIC connected before the storm. Paho reconnects on its own,
    so 'still connected' means: exactly one CONNACK and no disconnect callback ever."""

    def __init__(self, host: str, port: int, client_id: str = "sentinel") -> None:
        self.messages: "queue.Queue[Any]" = queue.Queue()
        self.connacks = 0
        self.disconnects = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect(host, port, keepalive=60)
        self.client.loop_start()
        assert self._connected.wait(TIMEOUT), "sentinel: no CONNACK"
        self.client.subscribe(CHECK_TOPIC, qos=1)
        assert self._subscribed.wait(TIMEOUT), "sentinel: no SUBACK"

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connacks += 1
        if not reason_code.is_failure:
            self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.disconnects += 1

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: Any, userdata: Any, m: Any) -> None:
        self.messages.put((m.topic, bytes(m.payload), m.qos))

    def get(self, timeout: float = TIMEOUT) -> Any:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"sentinel received nothing within {timeout}s") from None

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def expect(client: RawClient, want: bytes, what: str) -> None:
    got = client.read_raw_packet(TIMEOUT)
    assert got == want, f"{what}: expected {hexs(want)}, got {hexs(got)}"


def fresh_client_round_trip(broker: Any, client_id: str) -> None:
    """A new client connects, subscribes, publishes QoS 1 to itself and receives it, byte-exact."""
    with RawClient(broker.host, broker.port, timeout=TIMEOUT) as c:
        assert c.connect(client_id, keepalive=30) == w.connack(False, 0)
        c.send(w.subscribe(1, [(client_id + "/t", 1)]))
        expect(c, w.suback(1, [1]), "SUBACK")
        c.send(w.publish(client_id + "/t", b"round trip", qos=1, packet_id=9))
        # PUBACK and the delivery may come in either order; the delivery's packet id is the broker's.
        got = [c.read_raw_packet(TIMEOUT), c.read_raw_packet(TIMEOUT)]
        assert w.puback(9) in got, [hexs(p) for p in got]
        got.remove(w.puback(9))
        delivery = got[0]
        topic = client_id + "/t"
        pid = int.from_bytes(delivery[4 + len(topic):6 + len(topic)], "big")
        assert delivery == w.publish(topic, b"round trip", qos=1, packet_id=pid), hexs(delivery)
        c.send(w.puback(pid))
        c.ping()
        c.send(w.disconnect())
        c.expect_closed(TIMEOUT)


def publish_check(broker: Any, sentinel: Sentinel, payload: bytes) -> None:
    """A fresh client publishes QoS 1 to CHECK_TOPIC; the sentinel receives it at QoS 1."""
    with RawClient(broker.host, broker.port, timeout=TIMEOUT) as c:
        assert c.connect("checker") == w.connack(False, 0)
        c.send(w.publish(CHECK_TOPIC, payload, qos=1, packet_id=1))
        expect(c, w.puback(1), "PUBACK")
        c.send(w.disconnect())
        c.expect_closed(TIMEOUT)
    assert sentinel.get() == (CHECK_TOPIC, payload, 1)


# ---------------------------------------------------------------------------------------------------------
# The storm's scripts: each is the list of writes of one connection
# ---------------------------------------------------------------------------------------------------------

def _rand_bytes(rng: random.Random, lo: int, hi: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randint(lo, hi)))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """One to three random bit flips, byte insertions, deletions or a truncation."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[rng.randint(0, len(b)):rng.randint(0, len(b))] = _rand_bytes(rng, 1, 4)
        elif op == 2 and b:
            i = rng.randrange(len(b))
            del b[i:i + rng.randint(1, 4)]
        elif b:
            del b[rng.randrange(len(b)):]
    return bytes(b)


def _client_id(rng: random.Random, n: int) -> str:
    return "storm-%05d-%04d" % (n, rng.randrange(10000))


class Connect(bytes):
    """A valid CONNECT that opens a script: the storm thread waits for its CONNACK before sending the
    rest, so what follows is handled by a connected client (bytes arriving in the same read as a bad
    packet may be refused with it)."""


class Ping(bytes):
    """A PINGREQ inside a script: the storm thread reads until the PINGRESP, so the valid packets
    before it have been handled one read at a time before the bad ones that follow arrive."""


PING = Ping(w.pingreq())


def _valid_connect(rng: random.Random, n: int) -> bytes:
    will = w.Will("storm/will/%d" % n, b"gone", rng.randrange(3), rng.random() < 0.3) if rng.random() < 0.3 else None
    return Connect(w.connect(_client_id(rng, n), clean=rng.random() < 0.7, keepalive=rng.choice([0, 5, 60]),
                             will=will))


def _valid_packet(rng: random.Random) -> bytes:
    pid = rng.randint(1, 65535)
    topic = "storm/noise/%d" % rng.randrange(8)
    choice = rng.randrange(10)
    if choice < 4:
        return w.publish(topic, _rand_bytes(rng, 0, 64), qos=rng.randrange(3), retain=rng.random() < 0.1,
                         packet_id=pid if rng.random() < 0.9 else None)
    if choice == 4:
        return w.subscribe(pid, [(rng.choice(["storm/noise/+", "storm/#", "#", topic]), rng.randrange(3))])
    if choice == 5:
        return w.unsubscribe(pid, ["storm/noise/+"])
    return rng.choice([w.puback(pid), w.pubrec(pid), w.pubrel(pid), w.pubcomp(pid), w.pingreq()])


def _oversized(rng: random.Random, n: int) -> List[bytes]:
    kind = rng.randrange(4)
    if kind == 0:  # a fifth remaining-length byte (section 2.2.3)
        return [bytes([rng.choice([0x10, 0x30, 0x82, 0xC0])]) + b"\xff\xff\xff\xff\x7f" + _rand_bytes(rng, 0, 16)]
    if kind == 1:  # a CONNECT declaring the protocol maximum with little data
        return [w.fixed_header(w.CONNECT, 0, w.MAX_REMAINING_LENGTH) + _rand_bytes(rng, 0, 64)]
    if kind == 2:  # after CONNECT: a PUBLISH declaring ~256 MB, then close with most of it missing
        return [_valid_connect(rng, n), w.fixed_header(w.PUBLISH, 0, w.MAX_REMAINING_LENGTH) + w.utf8("storm/x")]
    return [_valid_connect(rng, n), bytes([0x30]) + b"\x80\x80\x80\x80\x01"]


def storm_scripts(seed: int) -> List[List[bytes]]:
    """Connection scripts until MAX_PACKETS writes in all (a write is one packet or one garbage blob)."""
    rng = random.Random(seed)
    scripts: List[List[bytes]] = []
    total = 0
    n = 0
    while total < MAX_PACKETS:
        n += 1
        kind = rng.randrange(7)
        if kind == 0:    # random bytes
            script = [_rand_bytes(rng, 1, 512) for _ in range(rng.randint(1, 3))]
        elif kind == 1:  # a mutated CONNECT, then packets
            script = [_mutate(rng, _valid_connect(rng, n))] + [_valid_packet(rng) for _ in range(rng.randint(0, 4))]
        elif kind == 2:  # a valid CONNECT, then a mix of valid and mutated packets
            script = [_valid_connect(rng, n)] + [_valid_packet(rng) for _ in range(rng.randint(0, 4))] + [PING] + [
                _mutate(rng, _valid_packet(rng)) if rng.random() < 0.4 else _valid_packet(rng)
                for _ in range(rng.randint(2, 12))]
        elif kind == 3:  # oversized remaining lengths
            script = _oversized(rng, n)
        elif kind == 4:  # garbage before CONNECT
            script = [_rand_bytes(rng, 1, 64), bytes(_valid_connect(rng, n)), _valid_packet(rng)]
        elif kind == 5:  # a valid CONNECT followed by garbage
            script = [_valid_connect(rng, n), _rand_bytes(rng, 1, 256)]
        else:            # mostly valid traffic, ending with a bad packet from the malformed table
            script = [_valid_connect(rng, n)] + [_valid_packet(rng) for _ in range(rng.randint(1, 6))] + [PING]
            script.append(rng.choice([m.data for m in w.MALFORMED if not m.is_connect]))
        script = script[:MAX_PACKETS - total]
        total += len(script)
        scripts.append(script)
    return scripts


class StormResult:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.connections = 0
        self.writes = 0
        self.closed_by_broker = 0
        self.connect_errors: List[str] = []
        self.unexpected: List[str] = []


def _run_script(host: str, port: int, script: List[bytes], deadline: float, result: StormResult) -> None:
    try:
        c = RawClient(host, port, timeout=TIMEOUT)
    except OSError as exc:
        with result.lock:
            result.connect_errors.append(repr(exc))
        return
    writes = 0
    closed = False
    problem = ""
    try:
        for data in script:
            if time.monotonic() > deadline:
                break
            try:
                c.send(data)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                closed = True  # the broker closed on bad input: the expected outcome
                break
            except socket.timeout:
                problem = "send timed out: the broker stopped reading without closing"
                break
            writes += 1
            try:
                if isinstance(data, Connect):
                    got = c.read_raw_packet(TIMEOUT)
                    if got != w.connack(False, 0):
                        problem = f"a valid CONNECT got {hexs(got)}, not CONNACK 20 02 00 00"
                        break
                elif isinstance(data, Ping):
                    # Acknowledgements and deliveries from other storm clients may come first.
                    while c.read_packet(TIMEOUT)[0] != 0xD0:
                        pass
            except AssertionError as exc:
                problem = f"valid packets from a connected client went unanswered: {exc}"
                break
        if not closed and not problem:
            # Half-close and read to EOF: the broker then handles every byte sent (a plain close
            # with a CONNACK unread would send RST, and the broker could lose the tail of the input).
            try:
                c.sock.shutdown(socket.SHUT_WR)
                c.expect_closed(TIMEOUT, allow_data=True)
            except AssertionError:
                problem = "the broker did not close a connection after its EOF"
            except OSError:
                pass  # reset: the broker had closed on bad input
    finally:
        c.close()
    with result.lock:
        result.connections += 1
        result.writes += writes
        result.closed_by_broker += closed
        if problem:
            result.unexpected.append(problem)


def run_storm(host: str, port: int, seed: int) -> StormResult:
    scripts = storm_scripts(seed)
    result = StormResult()
    deadline = time.monotonic() + STORM_SECONDS
    shares = [scripts[i::WORKERS] for i in range(WORKERS)]

    def worker(share: List[List[bytes]]) -> None:
        for script in share:
            if time.monotonic() > deadline:
                return
            _run_script(host, port, script, deadline, result)

    threads = [threading.Thread(target=worker, args=(share,), name=f"storm-{i}", daemon=True)
               for i, share in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline + TIMEOUT - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"seed {seed}: storm threads still running past the deadline: {stuck}"
    assert result.writes <= MAX_PACKETS
    return result


# ---------------------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_4_8_0_1_malformed_storm_leaves_the_broker_serving(broker):
    core = broker.server.broker
    sentinel = Sentinel(broker.host, broker.port)
    try:
        wait_for(lambda: core.stats.clients_connected == 1, TIMEOUT, what="sentinel counted")
        started = time.monotonic()
        result = run_storm(broker.host, broker.port, SEED)
        elapsed = time.monotonic() - started
        summary = (f"seed {SEED}: {result.connections} connections, {result.writes} writes, "
                   f"{result.closed_by_broker} closed by the broker mid-script, {elapsed:.1f}s")
        assert elapsed < STORM_SECONDS + TIMEOUT, summary
        assert not result.connect_errors, f"{summary}; connections refused: {result.connect_errors[:5]}"
        assert not result.unexpected, f"{summary}; {result.unexpected[:5]}"
        assert result.connections >= 200, f"the storm did not run: {summary}"

        assert broker.thread.is_alive(), f"broker loop died: {summary}"
        # Every storm connection ends: the counts return to the sentinel alone.
        wait_for(lambda: core.stats.clients_connected == 1 and len(core.connections) == 1, 10.0,
                 what=f"connections back to 1 after the storm ({summary}); "
                      f"now {core.stats.clients_connected} connected, {len(core.connections)} open")

        assert sentinel.disconnects == 0 and sentinel.connacks == 1, \
            f"the sentinel was disconnected during the storm ({summary})"
        assert sentinel.client.is_connected()
        publish_check(broker, sentinel, b"after the storm")
        fresh_client_round_trip(broker, "fresh-after-storm")
        wait_for(lambda: core.stats.clients_connected == 1 and len(core.connections) == 1, TIMEOUT,
                 what="fresh clients gone again")
        assert sentinel.disconnects == 0
        assert broker.thread.is_alive()
    finally:
        sentinel.stop()


def _send_until_refused(sock: socket.socket, data: bytes, chunk: int = 64 * 1024) -> Optional[int]:
    """Send data in chunks; return how many bytes were accepted before the connection failed, or None
    when everything was accepted. A send that blocks past TIMEOUT (the broker stopped reading without
    closing) is a failure."""
    view = memoryview(data)
    sent = 0
    try:
        while sent < len(data):
            sock.sendall(view[sent:sent + chunk])
            sent += len(view[sent:sent + chunk])
    except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
        return sent
    except socket.timeout:
        raise AssertionError(f"send blocked after {sent} bytes: the broker stopped reading but did not "
                             f"close the connection") from None
    return None


def _assert_peer_closed(sock: socket.socket) -> None:
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "connection still open"
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return
        except (ConnectionResetError, ConnectionAbortedError, BrokenPipeError):
            return
        except socket.timeout:
            raise AssertionError("connection still open") from None


JUNK_MB = 20


def _junk(kind: str) -> bytes:
    rng = random.Random(SEED)
    size = JUNK_MB * 1024 * 1024
    if kind == "random bytes":
        return rng.getrandbits(8 * size).to_bytes(size, "little")
    if kind == "CONNECT header declaring 20 MB":
        header = w.fixed_header(w.CONNECT, 0, size - 5)
    else:  # a CONNECT small enough for the pre-CONNECT bound, whose body is junk
        header = w.fixed_header(w.CONNECT, 0, 400 * 1024)
    return header + rng.getrandbits(8 * (size - len(header))).to_bytes(size - len(header), "little")


@pytest.mark.parametrize("kind", ["random bytes", "CONNECT header declaring 20 MB", "CONNECT of 400 KiB junk"])
def test_20_mb_of_junk_is_refused_early(broker, kind):
    """Mosquitto's test sends 100 MB of junk and checks the broker's memory; here the broker must
    close the connection long before 20 MB are accepted, and other clients keep working."""
    core = broker.server.broker
    with RawClient(broker.host, broker.port, timeout=TIMEOUT) as bystander:
        assert bystander.connect("bystander", keepalive=60) == w.connack(False, 0)
        junk = _junk(kind)
        sock = socket.create_connection((broker.host, broker.port), timeout=TIMEOUT)
        try:
            accepted = _send_until_refused(sock, junk)
            assert accepted is not None, f"all {JUNK_MB} MB of junk were accepted: the broker kept reading"
            assert accepted < len(junk)
            _assert_peer_closed(sock)
        finally:
            sock.close()
        assert broker.thread.is_alive()
        bystander.ping()
        fresh_client_round_trip(broker, "fresh-after-junk")
        wait_for(lambda: core.stats.clients_connected == 1 and len(core.connections) == 1, TIMEOUT,
                 what="only the bystander left")


DECLARED = 200 * 1024 * 1024


@pytest.mark.parametrize("case", ["CONNECT first", "second CONNECT after CONNECT", "PUBLISH after CONNECT"])
def test_200_mb_declared_remaining_length_closes_with_max_packet_size(make_broker, case):
    """With max_packet_size 1024 a packet declaring 200 MB is refused on its fixed header alone: the
    connection is closed without the broker waiting for (or buffering) the body."""
    broker = make_broker(max_packet_size=1024)
    core = broker.server.broker
    with RawClient(broker.host, broker.port, timeout=TIMEOUT) as bystander, \
            RawClient(broker.host, broker.port, timeout=TIMEOUT) as c:
        assert bystander.connect("bystander") == w.connack(False, 0)
        if case == "CONNECT first":
            c.send(w.fixed_header(w.CONNECT, 0, DECLARED) + w.connect("big")[2:])
        else:
            assert c.connect("big") == w.connack(False, 0)
            if case == "PUBLISH after CONNECT":
                c.send(w.fixed_header(w.PUBLISH, 0, DECLARED) + w.utf8("big/t") + b"x" * 100)
            else:
                c.send(w.fixed_header(w.CONNECT, 0, DECLARED) + w.connect("big")[2:])
        c.expect_closed(TIMEOUT)
        assert broker.thread.is_alive()
        bystander.ping()
        wait_for(lambda: core.stats.clients_connected == 1 and len(core.connections) == 1, TIMEOUT,
                 what="only the bystander left")
    fresh_client_round_trip(broker, "fresh-after-200mb")
