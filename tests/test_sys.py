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

        # 51 publishes received; 51 sent to sys-sub (plus $SYS to the watcher); the subscriber's 50 PUBACKs
        # may reach the broker a $SYS interval later than the publishes, so wait for the figures together.
        def mismatches():
            g = watcher.get
            checks = {
                "publish/messages/received == 51": g("$SYS/broker/publish/messages/received") == "51",
                "clients/connected == 3": g("$SYS/broker/clients/connected") == "3",
                "clients/maximum == 3": g("$SYS/broker/clients/maximum") == "3",
                "subscriptions/count == 3": g("$SYS/broker/subscriptions/count") == "3",
                "retained >= 1": int(g("$SYS/broker/retained messages/count") or 0) >= 1,
                "publish sent >= 51": int(g("$SYS/broker/publish/messages/sent") or 0) >= 51,
                "messages received >= 101": int(g("$SYS/broker/messages/received") or 0) >= 51 + 50,
                "bytes received": int(g("$SYS/broker/bytes/received") or 0) > 51 * len("data/x"),
                "bytes sent": int(g("$SYS/broker/bytes/sent") or 0) > 51 * len("data/x"),
                "version": g("$SYS/broker/version").startswith("edgebroker version "),
                "uptime": g("$SYS/broker/uptime").endswith(" seconds"),
                "load publish": float(g("$SYS/broker/load/publish/received/1min") or 0) > 0,
                "load connections": float(g("$SYS/broker/load/connections/1min") or 0) > 0,
                "heap": int(g("$SYS/broker/heap/current") or 0) > 1_000_000,
            }
            return [name for name, ok in checks.items() if not ok]
        try:
            wait_for(lambda: not mismatches(), timeout=10, what="the $SYS figures")
        except AssertionError:
            raise AssertionError(f"$SYS figures not as expected: {mismatches()}") from None

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
