"""firmware_bridge on its own: one serial port bridged to any MQTT broker (Mosquitto, a cloud broker).

    python -m firmware_bridge --host 127.0.0.1 --port 1883 --serial /dev/serial/by-id/... \\
        --format line --topic-prefix sensors/uart0/ [--command-topic 'sensors/uart0/cmd/#'] [...]

The same `Port` that edgebroker hosts in its loop runs here in a small loop of this module's (`Loop`:
a selector, timers, a wake-up socketpair), and its "local client" is a paho-mqtt client (paho is needed
for this mode only: `pip install paho-mqtt`). paho delivers on its own thread: messages are queued and
the loop woken, so the port is only ever touched by the loop's thread. The broker's will publishes
"offline" on the status topic if this process dies.

Unlike inside edgebroker, an ACK to a board's QoS 1 frame here means the message was handed to paho,
not that the broker stored it.
"""
import argparse
import queue
import selectors
import signal
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from .ports import DeviceError, Log, Port


class Loop:
    """The host interface Port needs (add_reader, add_writer, add_timer, wake...), on a selector."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.timers: List[Callable[[float], float]] = []
        self.flushers: List[Callable[[float], None]] = []
        self.wake_handlers: List[Callable[[float], None]] = []
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.stopping = False

    def _watch(self, fd: int, which: int, callback: Optional[Callable]) -> None:
        try:
            key = self.sel.get_key(fd)
            callbacks = dict(key.data)
        except KeyError:
            callbacks = {}
        if callback is None:
            callbacks.pop(which, None)
        else:
            callbacks[which] = callback
        events = 0
        for event in callbacks:
            events |= event
        if fd in self.sel.get_map():
            if events:
                self.sel.modify(fd, events, callbacks)
            else:
                self.sel.unregister(fd)
        elif events:
            self.sel.register(fd, events, callbacks)

    def add_reader(self, fd: int, callback: Callable) -> None:
        self._watch(fd, selectors.EVENT_READ, callback)

    def remove_reader(self, fd: int) -> None:
        self._watch(fd, selectors.EVENT_READ, None)

    def add_writer(self, fd: int, callback: Callable) -> None:
        self._watch(fd, selectors.EVENT_WRITE, callback)

    def remove_writer(self, fd: int) -> None:
        self._watch(fd, selectors.EVENT_WRITE, None)

    def add_timer(self, callback: Callable[[float], float]) -> None:
        self.timers.append(callback)

    def add_flusher(self, callback: Callable[[float], None]) -> None:
        self.flushers.append(callback)

    def add_wake_handler(self, callback: Callable[[float], None]) -> None:
        self.wake_handlers.append(callback)

    def remove_wake_handler(self, callback: Callable[[float], None]) -> None:
        if callback in self.wake_handlers:
            self.wake_handlers.remove(callback)

    def wake(self) -> None:
        """Any thread (and signal handlers)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def stop(self) -> None:
        self.stopping = True
        self.wake()

    def run(self) -> None:
        next_due = 0.0
        while not self.stopping:
            timeout = max(0.0, min(next_due - time.monotonic(), 1.0))
            events = self.sel.select(timeout)
            now = time.monotonic()
            for key, mask in events:
                if key.data is None:
                    try:
                        self._wake_r.recv(4096)
                    except OSError:
                        pass
                    for handler in self.wake_handlers[:]:
                        handler(now)
                    continue
                for event, callback in list(key.data.items()):
                    if mask & event:
                        callback(now)
            next_due = float("inf")
            for timer in self.timers:
                next_due = min(next_due, timer(now))
            for flusher in self.flushers:
                flusher(now)

    def close(self) -> None:
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()


class PahoClient:
    """A Port's client on a real broker: publish/subscribe through paho; deliveries handed to the loop."""

    def __init__(self, loop: Loop, host: str, port: int, client_id: str, on_message: Callable,
                 username: Optional[str], password: Optional[str], status_topic: str) -> None:
        import paho.mqtt.client as mqtt  # only this mode needs paho

        self.loop = loop
        self.on_message = on_message
        self._inbox: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._subscriptions: Dict[str, int] = {}
        self._last: Any = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.will_set(status_topic, b"offline", 1, True)
        self.client.on_message = self._paho_message
        self.client.on_connect = self._paho_connect
        loop.add_wake_handler(self._drain)
        self.client.connect(host, port)
        self.client.loop_start()

    def _paho_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        for topic_filter, qos in self._subscriptions.items():  # again after a reconnect
            client.subscribe(topic_filter, qos)

    def _paho_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self._inbox.put((msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain)))
        self.loop.wake()

    def _drain(self, now: float) -> None:
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            self.on_message(*item)

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid topic {topic!r}")
        self._last = self.client.publish(topic, payload, qos, retain)

    def subscribe(self, topic_filter: str, qos: int) -> int:
        self._subscriptions[topic_filter] = qos
        self.client.subscribe(topic_filter, qos)
        return qos

    def unsubscribe(self, topic_filter: str) -> None:
        self._subscriptions.pop(topic_filter, None)
        self.client.unsubscribe(topic_filter)

    def close(self) -> None:
        last = self._last
        if last is not None and last.rc == 0:
            try:
                last.wait_for_publish(2.0)  # the last status ("offline") leaves before DISCONNECT
            except (RuntimeError, ValueError):
                pass
        self.client.loop_stop()
        self.client.disconnect()


class Settings:
    """A SerialPort's attributes, as the command line gives them (edgebroker.devices has the schema)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.port = args.serial
        self.baudrate = args.baudrate
        self.format = args.format
        self.name = args.name
        self.label = args.name or args.serial.rstrip("/").rsplit("/", 1)[-1]
        self.prefix = args.topic_prefix if args.topic_prefix is not None else f"serial/{self.label}/"
        self.client = args.client_id or f"serial-{self.label}"
        self.username = args.username
        self.qos = args.qos
        self.retain = args.retain
        self.command_topics = tuple(args.command_topic)
        self.command_qos = args.command_qos
        self.max_length = args.max_length
        self.on_missing = args.on_missing
        self.status = args.status_topic or self.prefix + "status"
        self.reopen_delay = 1.0
        self.reopen_delay_max = 30.0
        self.ack_timeout = 2.0
        self.where = ""


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m firmware_bridge", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--serial", required=True, help="the device, e.g. /dev/serial/by-id/...")
    p.add_argument("--baudrate", type=int, default=115200)
    p.add_argument("--format", choices=("line", "kv", "json", "json-object", "frame"), default="line")
    p.add_argument("--topic-prefix")
    p.add_argument("--name")
    p.add_argument("--client-id")
    p.add_argument("--qos", type=int, choices=(0, 1, 2), default=0)
    p.add_argument("--retain", action="store_true")
    p.add_argument("--command-topic", action="append", default=[])
    p.add_argument("--command-qos", type=int, choices=(0, 1), default=0)
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--status-topic")
    p.add_argument("--on-missing", choices=("error", "retry"), default="error")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    settings = Settings(args)
    loop = Loop()
    log = Log(lambda level, message: print(message, file=sys.stderr, flush=True),
              {"error": 0, "warning": 1, "notice": 2, "info": 3, "debug": 4})
    clients: List[PahoClient] = []

    def attach(client_id: str, on_message: Callable, username: Optional[str]) -> PahoClient:
        client = PahoClient(loop, args.host, args.port, client_id, on_message, username, args.password,
                            settings.status)
        clients.append(client)
        return client

    try:
        port = Port(settings, loop, attach, lambda client: client.close(), log)
    except OSError as exc:
        print(f"Error: cannot connect to {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    try:
        port.start(time.monotonic(), settings.on_missing == "error")
    except DeviceError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        port.stop()
        return 1
    loop.add_timer(port.timer)
    loop.add_flusher(port.flush)
    signal.signal(signal.SIGTERM, lambda signum, frame: loop.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: loop.stop())
    print("firmware_bridge running", file=sys.stderr, flush=True)
    try:
        loop.run()
    finally:
        port.stop()  # "offline", then paho disconnects (the will is not sent on a clean disconnect)
        loop.close()
    return 0
