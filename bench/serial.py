"""Serial ports beside Mosquitto: lines and frames decoded and published per CPU-second, with and without
the S1 load, and the latency from the last byte on the UART to a subscriber.

    .venv/bin/python -m bench --scenarios SER [--quick]    # SER-lines, SER-S1, SER-latency in the main table
    .venv/bin/python -m bench.serial [--quick]             # all three phases per receiver, frames included

The UART is a pseudo-terminal (no line speed: the broker reads as fast as it can) behind a symlink, as a
/dev/serial/by-id path. edgebroker reads it in its loop (a `[[serial]]` table). Mosquitto has no serial
input: its users run a script (pyserial reads lines, paho publishes them), so the Mosquitto row is that
script's CPU plus Mosquitto's, the status quo the issue describes. The script is the plain version of
it (blocking readline, paho's network thread), written here for the comparison.

- SER-lines / SER-frames: N lines `t 21.5` (or N QoS 0 frames) written at once; the subscriber counts
  them; CPU of the receiving side (edgebroker; Mosquitto + script) per message, as messages per
  CPU-second. 115200 baud carries 11,520 bytes/s: 1,646 of these 7-byte lines (720 of the 16-byte
  frames) per second; the target is at least 100x that per CPU-second, so that a UART at full speed
  costs the broker under 1% of a CPU.
- SER-S1: the same lines while 4 publishers flood QoS 0 messages to 1 subscriber (S1's shape, smaller):
  serial lines/s and load messages/s over the same seconds.
- SER-latency: one line at a time (the next once the previous arrived); from the write of its last byte
  to its arrival at the subscriber: p50, p99, max in ms.
Every process is killed at the end; loopback only; bounded counts.

In the main runner (`scenarios()` below) each of SER-lines, SER-S1 and SER-latency is a run of its own
(a fresh broker, one phase), edgebroker reading lines beside the script + Mosquitto; its broker columns
are the receiving side's: CPU seconds over the scenario and peak RSS of edgebroker, of Mosquitto plus
the script for the other (the two processes a Mosquitto user runs). Frames have no Mosquitto
equivalent: only this module's own table (`python -m bench.serial`) has them.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import select
import socket
import statistics
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from . import wire
from .brokers import Broker, cpu_seconds, kill_all, repo_python, status_kib
from .scenarios import Metric, Outcome, Scenario, Sizes

LINE = b"t 21.5\n"
UART_BYTES_PER_S = 115200 // 10  # 8N1: 10 bits per byte

# The status quo on Mosquitto: pyserial reads lines, paho publishes each.
SCRIPT = r"""
import sys, serial, paho.mqtt.client as mqtt
port, mqtt_port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="serial-script")
c.connect("127.0.0.1", mqtt_port)
c.loop_start()
s = serial.Serial(port, 115200, timeout=None)
print("ready", flush=True)
while True:
    line = s.readline().rstrip(b"\r\n")
    topic, _, payload = line.partition(b" ")
    if payload:
        c.publish(prefix + topic.decode(), payload)
"""


class Pty:
    def __init__(self, directory: str) -> None:
        self.master, slave = os.openpty()
        self.link = os.path.join(directory, "usb-Bench-if00-port0")
        os.symlink(os.ttyname(slave), self.link)
        os.close(slave)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            select.select([], [self.master], [], 1.0)
            view = view[os.write(self.master, view):]

    def close(self) -> None:
        os.close(self.master)
        os.unlink(self.link)


class Subscriber:
    """A raw MQTT subscriber in this process (bench/wire.py): counts PUBLISHes on a filter."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.sendall(wire.connect("bench-serial-sub") + wire.subscribe(1, [(topic_filter, 0)]))
        self.buf = b""
        self.count = 0
        self._wait(lambda first: first == 0x90)

    def _take(self, want=lambda first: False) -> Optional[int]:
        """Count the PUBLISHes buffered; the time of the first packet `want` accepts, if any."""
        packets, used = wire.split(self.buf)
        hit = None
        for first, body, end in packets:
            if first >> 4 == 3:
                self.count += 1
            if want(first) and hit is None:
                hit = time.perf_counter_ns()
        self.buf = self.buf[used:]
        return hit

    def poll(self) -> None:
        """Read and count what has arrived, without waiting: a subscriber that keeps reading while the
        lines are written, as a real one does (one that does not fills its socket, and a broker bounding
        a backed-up client's QoS 0 output drops what does not fit)."""
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(262144)
                if not data:
                    raise ConnectionError("broker closed the subscriber")
                self.buf += data
                self._take()
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def _wait(self, want, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            hit = self._take(want)
            if hit is not None:
                return hit
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("subscriber waited too long")
            self.sock.settimeout(left)
            data = self.sock.recv(262144)
            if not data:
                raise ConnectionError("broker closed the subscriber")
            self.buf += data

    def wait_count(self, n: int, timeout: float = 60.0) -> None:
        while self.count < n:
            self._wait(lambda first: first >> 4 == 3, timeout)

    def next_publish(self) -> int:
        return self._wait(lambda first: first >> 4 == 3)

    def close(self) -> None:
        self.sock.close()


def _load(port: int, role: str, seconds: float, counter) -> None:
    """S1's shape: a publisher floods 64 B QoS 0 messages; the subscriber counts them."""
    sock = socket.create_connection(("127.0.0.1", port))
    if role == "pub":
        sock.sendall(wire.connect(f"load-{os.getpid()}"))
        batch = wire.publish("bench/load", bytes(64)) * 200
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sock.sendall(batch)
        sock.close()
        return
    sock.sendall(wire.connect("load-sub") + wire.subscribe(1, [("bench/#", 0)]))
    buf = b""
    sock.settimeout(seconds + 5)
    try:
        while True:
            data = sock.recv(262144)
            if not data:
                break
            buf += data
            packets, used = wire.split(buf)
            counter.value += sum(1 for first, _, _ in packets if first >> 4 == 3)
            buf = buf[used:]
    except OSError:
        pass


def run_one(kind: str, fmt: str, n: int, latency_n: int, load_s: float, tmp: str) -> Dict[str, float]:
    """One receiver (edgebroker, or the script + Mosquitto) through the phases whose size is not 0:
    throughput (n lines at once), latency (latency_n one at a time), under load (load_s seconds).
    Also `cpu` (the receiving side's CPU seconds from its start to the end of the phases) and `hwm_kib`
    (its peak RSS: the broker's, plus the script's)."""
    pty = Pty(tmp)
    result: Dict[str, float] = {}
    script = None
    if kind == "edgebroker":
        options = {"persistence": False,
                   "serial": [{"port": pty.link, "format": fmt, "topic_prefix": "ser/"}]}
        broker = Broker("edgebroker", options=options)
    else:
        broker = Broker("mosquitto")
    try:
        broker.start()
        cpu_start = broker.cpu_seconds()
        if kind == "mosquitto":
            script = __import__("subprocess").Popen([repo_python(), "-c", SCRIPT, pty.link, str(broker.port), "ser/"],
                                                     stdout=__import__("subprocess").PIPE)
            assert script.stdout is not None
            script.stdout.readline()  # "ready": the port is open
        sub = Subscriber(broker.port, "ser/#")
        if fmt == "frame":
            from firmware_bridge.firmware import frames

            unit = frames.encode_publish("t", b"21.5")
        else:
            unit = LINE
        # Warm up (and, for edgebroker, wait for the port to be open: its status message arrives first).
        pty.write(unit * 100)
        sub.wait_count(100 + (1 if kind == "edgebroker" else 0))
        base = sub.count
        # Throughput per CPU-second.
        if n:
            broker.mark_cpu()
            cpu_script0 = cpu_seconds(script.pid) if script else 0.0
            t0 = time.perf_counter()
            pty.write(unit * n)
            sub.wait_count(base + n)
            wall = time.perf_counter() - t0
            cpu = broker.cpu_since_mark() + ((cpu_seconds(script.pid) - cpu_script0) if script else 0.0)
            result["per_cpu_s"] = n / cpu if cpu > 0 else float("inf")
            result["per_wall_s"] = n / wall
            result["uart_bytes_per_cpu_s"] = n * len(unit) / cpu if cpu > 0 else float("inf")
        # Latency, one at a time.
        if latency_n:
            lat: List[float] = []
            for _ in range(latency_n):
                pty.write(unit)
                t_written = time.perf_counter_ns()
                t_arrived = sub.next_publish()
                lat.append((t_arrived - t_written) / 1e6)
            lat.sort()
            result["lat_p50_ms"] = statistics.median(lat)
            result["lat_p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            result["lat_max_ms"] = lat[-1]
        # Under S1-shaped load.
        if load_s > 0:
            counter = multiprocessing.Value("q", 0)
            loaders = [multiprocessing.Process(target=_load, args=(broker.port, "sub", load_s, counter))]
            loaders += [multiprocessing.Process(target=_load, args=(broker.port, "pub", load_s, counter))
                        for _ in range(4)]
            for p in loaders:
                p.start()
            time.sleep(0.3)  # the load is running (a benchmark, not a test: a fixed ramp-up is fine)
            base = sub.count
            c0 = counter.value
            t0 = time.perf_counter()
            sent = 0
            while time.perf_counter() - t0 < load_s - 0.6:
                pty.write(unit * 500)
                sent += 500
                sub.poll()
            sub.wait_count(base + sent)
            wall = time.perf_counter() - t0
            result["S1_serial_per_s"] = sent / wall
            result["S1_load_msg_per_s"] = (counter.value - c0) / wall
            for p in loaders:
                p.join(load_s + 10)
                if p.is_alive():
                    p.kill()
        sub.close()
        result["cpu"] = broker.cpu_seconds() - cpu_start + (cpu_seconds(script.pid) if script else 0.0)
        result["hwm_kib"] = broker.hwm_kib() + (status_kib(script.pid, "VmHWM") if script else 0)
    finally:
        if script is not None:
            script.kill()
            script.wait(10)
        broker.stop()
        pty.close()
    return result


# ---- as scenarios of the main runner (bench/run.py) -----------------------------------------------

def _run_phase(kind: str, sz: Sizes, n: int, latency_n: int, load_s: float) -> Outcome:
    t0, cpu0 = time.monotonic(), time.process_time()
    tmp = tempfile.mkdtemp(prefix="bench-serial-")
    try:
        r = run_one(kind, "line", n, latency_n, load_s, tmp)
    finally:
        os.rmdir(tmp)
    o = Outcome(metrics={k: v for k, v in r.items() if k not in ("cpu", "hwm_kib", "uart_bytes_per_cpu_s")},
                wall=time.monotonic() - t0, broker_cpu=r["cpu"], hwm_kib=int(r["hwm_kib"]))
    # The generator here: this process (pseudo-terminal writer, subscriber); the load's processes are
    # not counted (they are the load, not the measuring side).
    o.gen_cpu = time.process_time() - cpu0
    if "per_cpu_s" in r:
        o.notes.append(f"{r['per_cpu_s'] / (UART_BYTES_PER_S / len(LINE)):,.0f}x the lines a 115200-baud UART "
                       f"carries, per CPU-second; {r['uart_bytes_per_cpu_s']:,.0f} UART bytes per CPU-second")
    return o


def run_lines(kind: str, sz: Sizes, timeout: float) -> Outcome:
    return _run_phase(kind, sz, sz.ser_lines, 0, 0.0)


def run_under_s1(kind: str, sz: Sizes, timeout: float) -> Outcome:
    return _run_phase(kind, sz, 0, 0, sz.ser_load_s)


def run_latency(kind: str, sz: Sizes, timeout: float) -> Outcome:
    return _run_phase(kind, sz, 0, sz.ser_latency_n, 0.0)


def scenarios(sz: Sizes) -> List[Scenario]:
    who = "edgebroker reading a pseudo-terminal in its loop ([[serial]]) vs a pyserial+paho script publishing to Mosquitto"
    return [
        Scenario("SER-lines", f"{sz.ser_lines:,} lines `t 21.5` written at once to a serial port: {who}",
                 (Metric("per_cpu_s", "lines per CPU-second of the receiving side", "higher"),
                  Metric("per_wall_s", "lines/s", "higher")), run_lines, family="SER", hosted=True,
                 max_rounds=sz.bridge_rounds),
        Scenario("SER-S1", f"serial lines while 4 processes flood QoS 0 messages to a subscriber for "
                           f"{sz.ser_load_s:g} s (S1's shape): {who}",
                 (Metric("S1_serial_per_s", "serial lines/s under load", "higher"),
                  Metric("S1_load_msg_per_s", "load msgs/s meanwhile", "higher")), run_under_s1, family="SER",
                 hosted=True, max_rounds=sz.bridge_rounds),
        Scenario("SER-latency", f"{sz.ser_latency_n:,} lines one at a time, from the write of the last byte "
                                f"to the subscriber: {who}",
                 (Metric("lat_p50_ms", "p50 ms", "lower", "{:,.3f}"), Metric("lat_p99_ms", "p99 ms", "lower", "{:,.3f}"),
                  Metric("lat_max_ms", "max ms", "lower", "{:,.2f}")), run_latency, family="SER", hosted=True,
                 max_rounds=sz.bridge_rounds),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    n, latency_n, load_s = (20_000, 200, 3.0) if args.quick else (100_000, 1000, 6.0)
    rows: List[Tuple[str, str, Dict[str, float]]] = []
    tmp = tempfile.mkdtemp(prefix="bench-serial-")
    try:
        for kind, fmt in (("edgebroker", "line"), ("edgebroker", "frame"), ("mosquitto", "line")):
            print(f"bench.serial: {kind} {fmt} ...", file=sys.stderr)
            rows.append((kind, fmt, run_one(kind, fmt, n, latency_n, load_s, tmp)))
    finally:
        kill_all()
        os.rmdir(tmp)
    line_rate = UART_BYTES_PER_S / len(LINE)
    print(f"| receiver | format | msgs per CPU-s | x of a 115200-baud UART ({line_rate:.0f} lines/s) | "
          "msgs/s wall | latency p50 / p99 / max ms | under S1: serial msgs/s, load msgs/s |")
    print("|---|---|---|---|---|---|---|")
    for kind, fmt, r in rows:
        who = "edgebroker" if kind == "edgebroker" else "pyserial+paho script + Mosquitto"
        uart_rate = UART_BYTES_PER_S / (len(LINE) if fmt == "line" else 16)
        print(f"| {who} | {fmt} | {r['per_cpu_s']:,.0f} | {r['per_cpu_s'] / uart_rate:,.0f}x | "
              f"{r['per_wall_s']:,.0f} | {r['lat_p50_ms']:.2f} / {r['lat_p99_ms']:.2f} / {r['lat_max_ms']:.2f} | "
              f"{r.get('S1_serial_per_s', 0):,.0f}, {r.get('S1_load_msg_per_s', 0):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
