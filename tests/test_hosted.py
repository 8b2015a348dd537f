"""Hosted concerns: in-process clients of the core (edgebroker.local) and the loop's hooks for extra
file descriptors, timers, wake-ups from other threads and services (edgebroker.server).

The core tests run in memory with test_core's harness; the loop tests run a real Server in a thread
with real sockets (socketpairs for the hosted descriptors, a raw MQTT client on loopback)."""
from __future__ import annotations

import queue
import socket
import threading
from typing import List, Tuple

import pytest

from edgebroker.codec import Parser
from edgebroker.config import Config, Listener
from edgebroker.packets import Publish
from edgebroker.server import Server

import mqttwire as w
from test_core import Core, fields, publish_qos1
from util import wait_for


class Inbox:
    """A local client's on_message, recording what it is given."""

    def __init__(self) -> None:
        self.got: List[Tuple[str, bytes, int, bool]] = []

    def __call__(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.got.append((topic, payload, qos, retain))


# ---- the core --------------------------------------------------------------------------------------

def test_local_publish_reaches_network_subscribers_at_their_qos_and_retains():
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("sensors/#", 2))
    serial = core.broker.attach_local("serial-uart0", Inbox())
    serial.publish("sensors/uart0/temp", b"21.5", qos=1, retain=True)
    got = sub.publishes()
    assert [fields(p) for p in got] == [("sensors/uart0/temp", b"21.5", 1, False, False)]
    sub.send(w.puback(got[0].packet_id))
    late = core.connect("late")
    assert [fields(p) for p in late.subscribe(1, ("sensors/+/temp", 0))] == [
        ("sensors/uart0/temp", b"21.5", 0, True, False)]  # retained, sent on subscribe [MQTT-3.3.1-6]
    assert core.broker.stats.publish_received == 1


def test_local_client_receives_matching_messages_once_at_min_qos():
    core = Core()
    inbox = Inbox()
    bridge = core.broker.attach_local("bridge-cloud", inbox)
    assert bridge.subscribe("fan/#", 1) == 1
    assert bridge.subscribe("fan/+/speed", 0) == 0
    pub = core.connect("pub")
    publish_qos1(pub, "fan/3/speed", b"1200")
    pub.send(w.publish("fan/3/speed", b"900", qos=0))
    pub.send(w.publish("door", b"open", qos=0))
    # Once per message at the highest QoS of its matching filters [MQTT-3.3.5-1], capped by the
    # published QoS [MQTT-3.8.4-6]; retain clear on live delivery [MQTT-3.3.1-9].
    assert inbox.got == [("fan/3/speed", b"1200", 1, False), ("fan/3/speed", b"900", 0, False)]


def test_local_client_gets_retained_on_subscribe_with_retain_set():
    core = Core()
    pub = core.connect("pub")
    pub.send(w.publish("cfg/a", b"1", qos=1, retain=True, packet_id=1))
    pub.send(w.publish("cfg/b", b"2", qos=0, retain=True))
    inbox = Inbox()
    core.broker.attach_local("local", inbox).subscribe("cfg/#", 2)
    assert sorted(inbox.got) == [("cfg/a", b"1", 1, True), ("cfg/b", b"2", 0, True)]


def test_local_client_never_gets_its_own_messages_but_others_do():
    """No-local: what a bridge forwards into the tree cannot come back out over it."""
    core = Core()
    mine, other = Inbox(), Inbox()
    bridge = core.broker.attach_local("bridge", mine)
    bridge.subscribe("#", 1)
    core.broker.attach_local("serial", other).subscribe("#", 1)
    bridge.publish("cloud/cmd", b"go", qos=1)
    assert mine.got == []
    assert other.got == [("cloud/cmd", b"go", 1, False)]


def test_local_publish_from_inside_a_delivery_keeps_no_local_for_the_outer_message():
    """A sink that publishes in turn (a serial port echoing a command) must not undo the outer
    message's no-local."""
    core = Core()
    echoed = Inbox()

    class Echo(Inbox):
        def __call__(self, topic, payload, qos, retain):
            super().__call__(topic, payload, qos, retain)
            if topic == "cmd":
                echo.publish("ack", payload, 0)

    echo_inbox = Echo()
    echo = core.broker.attach_local("echo", echo_inbox)
    echo.subscribe("#", 0)
    source = core.broker.attach_local("source", echoed)
    source.subscribe("#", 0)
    late = core.broker.attach_local("late", Inbox())  # subscribed after both: routed last
    late.subscribe("#", 0)
    source.publish("cmd", b"x", 0)
    assert echo_inbox.got == [("cmd", b"x", 0, False)]
    assert echoed.got == [("ack", b"x", 0, False)], "the source got its own message back, or not the echo"


def test_local_publish_queues_for_an_offline_persistent_session():
    core = Core()
    dev = core.connect("dev", clean=False)
    dev.subscribe(1, ("cmd/#", 1))
    dev.disconnect()
    core.broker.attach_local("gpio", Inbox()).publish("cmd/led", b"on", qos=1)
    back = core.connect("dev", clean=False, present=True)
    got = back.publishes()
    assert [fields(p) for p in got] == [("cmd/led", b"on", 1, False, False)]


def test_detach_local_removes_its_subscriptions_and_frees_the_id():
    core = Core()
    inbox = Inbox()
    broker = core.broker
    client = broker.attach_local("x", inbox)
    client.subscribe("a/#", 0)
    with pytest.raises(ValueError):
        broker.attach_local("x", Inbox())
    count = broker.tree.count
    broker.detach_local(client)
    assert broker.tree.count == count - 1
    core.connect("pub").send(w.publish("a/b", b"1"))
    assert inbox.got == []
    broker.attach_local("x", Inbox())  # the id is free again


def test_local_client_id_is_not_a_network_session():
    """A network client with the same id is another client: it neither takes over nor discards the
    local one, and no-local does not hide its messages from it."""
    core = Core()
    inbox = Inbox()
    local = core.broker.attach_local("same", inbox)
    local.subscribe("t", 0)
    net = core.connect("same")
    net.send(w.publish("t", b"1"))
    net.disconnect()
    assert inbox.got == [("t", b"1", 0, False)]
    assert core.broker.local_clients["same"] is local and "same" not in core.broker.sessions
    core.connect("other").send(w.publish("t", b"2"))
    assert inbox.got[-1] == ("t", b"2", 0, False)


def test_local_client_rejects_wildcard_topics_and_bad_filters():
    core = Core()
    client = core.broker.attach_local("c", Inbox())
    with pytest.raises(ValueError):
        client.publish("a/+", b"")
    with pytest.raises(ValueError):
        client.publish("", b"")
    with pytest.raises(ValueError):
        client.subscribe("a/#/b", 0)
    with pytest.raises(ValueError):
        client.publish("a", b"", qos=3)


def test_local_publish_obeys_message_size_limit():
    core = Core(message_size_limit=4)
    sub = core.connect("sub")
    sub.subscribe(1, ("#", 0))
    core.broker.attach_local("c", Inbox()).publish("big", b"12345")
    assert sub.take() == []
    assert core.broker.stats.publish_dropped == 1


# ---- the loop ---------------------------------------------------------------------------------------

class Loop:
    """A real Server on an ephemeral loopback port; hooks are added before its thread starts (the
    hooks are the loop thread's to call)."""

    def __init__(self, **overrides: object) -> None:
        overrides.setdefault("listeners", [Listener(port=0, address="127.0.0.1")])
        overrides.setdefault("persistence", False)
        overrides.setdefault("allow_anonymous", True)
        self.logs: List[Tuple[int, str]] = []
        self.server = Server(Config(**overrides), log=lambda level, msg: self.logs.append((level, msg)))
        self.port = self.server.ports[0]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Loop":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        assert not self.thread.is_alive()


def subscribe(c: w.RawClient, topic_filter: str, qos: int) -> None:
    c.send(w.subscribe(1, [(topic_filter, qos)]))
    assert c.read_raw_packet() == w.suback(1, [qos])


def next_publish(c: w.RawClient) -> Publish:
    packet = Parser().feed(c.read_raw_packet())[0]
    assert isinstance(packet, Publish), packet
    return packet


@pytest.fixture
def loops():
    made: List[Loop] = []

    def make(**overrides: object) -> Loop:
        made.append(Loop(**overrides))
        return made[-1]

    yield make
    for loop in made:
        if loop.thread.is_alive():
            loop.stop()
        else:
            loop.server.close()


def test_a_readable_hosted_descriptor_publishes_into_the_tree_on_the_loop_thread(loops):
    """A serial port's shape: bytes on a descriptor in the selector become a local client's publish,
    which a network subscriber receives."""
    loop = loops()
    device, port = socket.socketpair()
    port.setblocking(False)
    client = loop.server.broker.attach_local("uart0", Inbox())
    threads = []

    def readable(now: float) -> None:
        threads.append(threading.get_ident())
        data = port.recv(4096)
        for line in data.decode().splitlines():
            topic, payload = line.split(" ", 1)
            client.publish("sensors/uart0/" + topic, payload.encode(), 1)

    loop.server.add_reader(port, readable)
    loop.start()
    with w.RawClient("127.0.0.1", loop.port) as sub:
        sub.connect("sub")
        subscribe(sub, "sensors/#", 1)
        device.sendall(b"temp 21.5\n")
        got = next_publish(sub)
        assert (got.topic, got.payload, got.qos) == ("sensors/uart0/temp", b"21.5", 1)
    assert set(threads) == {loop.thread.ident}
    loop.server.remove_reader(port)
    device.close()
    port.close()


def test_writer_is_called_while_registered_and_not_after_removal(loops):
    loop = loops()
    a, b = socket.socketpair()
    calls = []
    done = threading.Event()

    def writable(now: float) -> None:
        calls.append(now)
        if len(calls) == 3:
            loop.server.remove_writer(a)
            done.set()

    loop.server.add_writer(a, writable)
    loop.server.add_reader(a, lambda now: None)  # a reader on the same descriptor stays
    loop.start()
    assert done.wait(10)
    # The loop is still serving: a full turn through a PINGREQ, after which writable ran no more.
    with w.RawClient("127.0.0.1", loop.port) as c:
        c.connect("c")
        c.ping()
    assert len(calls) == 3
    a.close()
    b.close()


def test_timers_run_when_they_ask(loops):
    loop = loops()
    runs: List[float] = []
    done = threading.Event()

    def timer(now: float) -> float:
        runs.append(now)
        if len(runs) >= 5:
            done.set()
            return float("inf")
        return now + 0.001  # far sooner than the core's own timers (0.5 s)

    loop.server.add_timer(timer)
    loop.start()
    assert done.wait(10), f"timer ran {len(runs)} times"
    assert runs == sorted(runs)


def test_wake_runs_handlers_on_the_loop_thread_from_another_thread(loops):
    """gpiozero's shape: a callback on a foreign thread hands an event over; the loop publishes it."""
    loop = loops()
    events: "queue.SimpleQueue[Tuple[str, bytes]]" = queue.SimpleQueue()
    client = loop.server.broker.attach_local("gpio", Inbox())
    handled_on = []

    def drain(now: float) -> None:
        handled_on.append(threading.get_ident())
        while True:
            try:
                topic, payload = events.get_nowait()
            except queue.Empty:
                return
            client.publish(topic, payload, 1, True)

    loop.server.add_wake_handler(drain)
    loop.start()
    with w.RawClient("127.0.0.1", loop.port) as sub:
        sub.connect("sub")
        subscribe(sub, "gpio/#", 1)

        def pin_thread() -> None:
            events.put(("gpio/17/state", b"1"))
            loop.server.wake()

        t = threading.Thread(target=pin_thread)
        t.start()
        t.join()
        got = next_publish(sub)
        assert (got.topic, got.payload) == ("gpio/17/state", b"1")
        sub.send(w.puback(got.packet_id))
    assert handled_on and set(handled_on) == {loop.thread.ident}


def test_a_failing_callback_is_logged_and_the_loop_goes_on(loops):
    loop = loops()
    a, b = socket.socketpair()

    def broken(now: float) -> None:
        a.recv(100)
        raise RuntimeError("device exploded")

    loop.server.add_reader(a, broken)
    loop.start()
    b.sendall(b"x")
    wait_for(lambda: any("device exploded" in m for _, m in loop.logs), what="the error logged")
    with w.RawClient("127.0.0.1", loop.port) as c:
        c.connect("c")
        c.ping()
    a.close()
    b.close()


def test_services_are_reloaded_and_stopped_before_the_core_closes(loops):
    order: List[str] = []
    loop = loops()

    class Service:
        def reload(self, config: Config) -> None:
            order.append(f"reload {config.max_inflight_messages}")

        def stop(self) -> None:
            order.append(f"stop with {loop.server.broker.stats.clients_connected} clients connected")

    loop.server.reloader = lambda: Config(allow_anonymous=True, listeners=loop.server.config.listeners,
                                          persistence=False,
                                          max_inflight_messages=7)
    loop.server.add_service(Service())
    loop.start()
    with w.RawClient("127.0.0.1", loop.port) as c:
        c.connect("c")
        loop.server.request_reload()
        wait_for(lambda: order, what="the reload")
        loop.stop()
    assert order == ["reload 7", "stop with 1 clients connected"]


def test_close_without_serving_stops_services():
    server = Server(Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")],
                           persistence=False))
    stopped = []
    server.add_service(type("S", (), {"stop": lambda self: stopped.append(1)})())
    server.close()
    server.close()
    assert stopped == [1]
