"""The $SYS/broker tree: Mosquitto's topics, retained, values checked against traffic the test makes.

[MQTT-4.7.2-1] keeps `$SYS` out of `#`, so the test subscribes to `$SYS/#` explicitly.
"""
from __future__ import annotations

import queue
import threading
from typing import Dict

import paho.mqtt.client as mqtt

from util import wait_for


class SysWatcher:
    """A paho client that keeps the latest value of every $SYS topic."""

    def __init__(self, port: int) -> None:
        self.values: Dict[str, str] = {}
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sys-watcher")
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("$SYS/#", 0)
        assert self.subscribed.wait(5)

    def _on_message(self, client, userdata, msg) -> None:
        with self.lock:
            self.values[msg.topic] = msg.payload.decode()

    def get(self, topic: str) -> str:
        with self.lock:
            return self.values.get(topic, "")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_sys_tree_reports_the_traffic_it_saw(make_broker):
    broker = make_broker(sys_interval=0.2)
    watcher = SysWatcher(broker.port)
    try:
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sys-pub")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sys-sub")
        got: "queue.Queue[bytes]" = queue.Queue()
        sub.on_message = lambda c, u, m: got.put(m.payload)
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        sub.subscribe([("data/#", 1), ("other", 0)])
        wait_for(lambda: broker.server.broker.tree.count == 3, what="three subscriptions")
        for i in range(50):
            pub.publish("data/x", b"%d" % i, qos=1).wait_for_publish(5)
        pub.publish("data/kept", b"r", qos=0, retain=True).wait_for_publish(5)
        for _ in range(51):
            got.get(timeout=5)

        # 51 publishes received (plus none from the watcher); 51 sent to sys-sub, plus $SYS to the watcher.
        wait_for(lambda: watcher.get("$SYS/broker/publish/messages/received") == "51", what="publish received")
        assert watcher.get("$SYS/broker/clients/connected") == "3"
        assert watcher.get("$SYS/broker/clients/maximum") == "3"
        assert watcher.get("$SYS/broker/subscriptions/count") == "3"
        assert int(watcher.get("$SYS/broker/retained messages/count")) >= 1
        assert int(watcher.get("$SYS/broker/publish/messages/sent")) >= 51
        assert int(watcher.get("$SYS/broker/messages/received")) >= 51 + 50  # publishes and PUBACKs
        assert int(watcher.get("$SYS/broker/bytes/received")) > 51 * len("data/x")
        assert int(watcher.get("$SYS/broker/bytes/sent")) > 51 * len("data/x")
        assert watcher.get("$SYS/broker/version").startswith("edgebroker version ")
        assert watcher.get("$SYS/broker/uptime").endswith(" seconds")
        assert float(watcher.get("$SYS/broker/load/publish/received/1min")) > 0
        assert float(watcher.get("$SYS/broker/load/connections/1min")) > 0
        assert int(watcher.get("$SYS/broker/heap/current")) > 1_000_000

        sub.disconnect()
        sub.loop_stop()
        wait_for(lambda: watcher.get("$SYS/broker/clients/connected") == "2", what="clients/connected drops")
        pub.disconnect()
        pub.loop_stop()
    finally:
        watcher.close()


def test_sys_values_are_published_only_when_they_change(make_broker):
    """Mosquitto publishes a $SYS topic when its value changes: the version is sent once, not every
    interval."""
    broker = make_broker(sys_interval=0.1)
    seen: "queue.Queue[str]" = queue.Queue()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sys-once")
    c.on_message = lambda cl, u, m: seen.put(m.topic)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.subscribe([("$SYS/broker/version", 0), ("$SYS/broker/uptime", 0)])
        topics = []
        # uptime changes every second: wait for three uptime updates, then count version copies.
        while topics.count("$SYS/broker/uptime") < 3:
            topics.append(seen.get(timeout=10))
        assert topics.count("$SYS/broker/version") == 1
    finally:
        c.disconnect()
        c.loop_stop()
