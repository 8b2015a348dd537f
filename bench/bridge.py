"""Bridge scenarios: edgebroker and Mosquitto as the gateway, each bridging to the same kind of upstream
Mosquitto, in one run.

    .venv/bin/python -m bench.bridge [--quick] [--rounds N]

B1  throughput: one publisher on the gateway sends N QoS 1 messages (window 64) on bench/..., the bridge
    (`topic bench/# out 1`) forwards them, a QoS 1 subscriber on the upstream counts them. Messages
    delivered per second, from the first publish to the last arrival (higher is better), and how many
    were delivered (Mosquitto's bridge queue, max_queued_messages 1000, can overflow in a burst).
B2  outage drain: the upstream is down while N QoS 1 messages are published on the gateway (each one
    acknowledged); then it comes back. Reports how many reach the upstream subscriber (a persistent
    session registered before the outage), the seconds from the upstream's start to the last one, and
    the gateway's bytes written to disk (/proc/PID/io write_bytes) per message queued.
B3  B2 with the gateway killed with SIGKILL after the messages were acknowledged and restarted before
    the upstream comes back: what a crash or power cut during an outage costs.

Both gateways run with their defaults, as a user would: edgebroker's queue on disk (durability crash),
Mosquitto's bridge queue in memory under max_queued_messages 1000 (its default) and persistence off.
The only settings given are the bridge block (identical text: connection, address, topic, cleansession
false, restart_timeout 1) and the listener. Everything on 127.0.0.1, ports found by binding port 0;
every process started is killed at the end.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from . import wire
from .brokers import data_root, free_port, mosquitto_binary, read_io, repo_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STARTED: List[subprocess.Popen] = []


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Proc:
    def __init__(self, cmd: List[str], log: str) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.log = log
        self.p = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)
        STARTED.append(self.p)

    def stop(self, sig: int = signal.SIGTERM) -> Dict[str, int]:
        """Stop; returns /proc/PID/io read at the zombie state (the whole life's writes)."""
        p = self.p
        if p.poll() is None:
            p.send_signal(sig)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    with open(f"/proc/{p.pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            break
                except OSError:
                    break
                time.sleep(0.005)
        io = read_io(p.pid)
        p.wait(15)
        return io


class Upstream:
    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.port = free_port()
        self.proc: Optional[Proc] = None

    def start(self) -> None:
        conf = os.path.join(self.dir, "upstream.conf")
        user = "user root\n" if os.getuid() == 0 else ""
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\n{user}allow_anonymous true\npersistence true\n"
                    f"persistence_location {self.dir}/\nmax_queued_messages 0\nmax_inflight_messages 0\n")
        self.proc = Proc([mosquitto_binary() or "mosquitto", "-c", conf], os.path.join(self.dir, "upstream.log"))
        _wait(lambda: _accepts(self.port), 15, "the upstream")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


class Gateway:
    def __init__(self, kind: str, directory: str, upstream_port: int) -> None:
        self.kind = kind
        self.dir = directory
        self.port = free_port()
        block = (f"connection cloud\naddress 127.0.0.1:{upstream_port}\ntopic bench/# out 1\n"
                 "cleansession false\nrestart_timeout 1\nremote_clientid gw.cloud\n")
        if kind == "mosquitto":
            user = "user root\n" if os.getuid() == 0 else ""
            self.conf = os.path.join(directory, "gateway.conf")
            text = f"listener {self.port} 127.0.0.1\n{user}allow_anonymous true\n{block}"
        else:
            os.makedirs(os.path.join(directory, "db"), exist_ok=True)
            self.conf = os.path.join(directory, "gateway.conf")
            text = (f"persistence true\npersistence_location {directory}/db\nlistener {self.port} 127.0.0.1\n"
                    f"allow_anonymous true\n{block}")
        with open(self.conf, "w") as f:
            f.write(text)
        self.proc: Optional[Proc] = None

    def start(self) -> None:
        if self.kind == "mosquitto":
            cmd = [mosquitto_binary() or "mosquitto", "-c", self.conf]
        else:
            cmd = [repo_python(), "-m", "edgebroker", "-c", self.conf]
        self.proc = Proc(cmd, os.path.join(self.dir, "gateway.log"))
        _wait(lambda: _accepts(self.port), 15, f"the {self.kind} gateway")


def _read_packets(sock: socket.socket, buf: bytearray) -> List[Tuple[int, int, int]]:
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("connection closed")
    buf += data
    packets, rest = wire.split(bytes(buf))
    out = [(f, b, e) for f, b, e in packets]
    view = bytes(buf)
    del buf[:rest]
    return [(f, b, e, view) for f, b, e in out]  # type: ignore[misc]


class Subscriber:
    """A QoS 1 subscriber on the upstream that acknowledges and records each payload's sequence number."""

    def __init__(self, port: int, client_id: str, clean: bool) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.buf = bytearray()
        self.seqs: List[int] = []
        self.last = 0.0
        self.sock.sendall(wire.connect(client_id, clean))
        self._until(lambda f: f >> 4 == 2)
        self.sock.sendall(wire.subscribe(1, [("bench/#", 1)]))
        self._until(lambda f: f >> 4 == 9)

    def _until(self, want) -> None:
        while True:
            for f, b, e, view in _read_packets(self.sock, self.buf):
                if want(f):
                    return

    def collect(self, n: int, timeout: float) -> None:
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        quiet_until = time.monotonic() + timeout
        while len(self.seqs) < n and time.monotonic() < min(deadline, quiet_until):
            try:
                packets = _read_packets(self.sock, self.buf)
            except socket.timeout:
                continue
            acks = []
            for f, b, e, view in packets:
                if f >> 4 == 3:
                    _, qos, pid, p = wire.publish_fields(view, f, b, e)
                    self.seqs.append(wire.PAYLOAD_HEADER.unpack_from(view, p)[1])
                    if pid is not None:
                        acks.append(wire.puback(pid))
            if acks:
                self.sock.sendall(b"".join(acks))
                self.last = time.monotonic()
                quiet_until = self.last + 5.0  # nothing more for 5 s: the rest is lost

    def close(self) -> None:
        self.sock.close()


def publish(port: int, n: int, size: int = 64, window: int = 64) -> float:
    """N QoS 1 messages with at most `window` unacknowledged; returns when all are acknowledged."""
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray()
    sock.sendall(wire.connect("bench-pub", True))
    while not any(f >> 4 == 2 for f, *_ in _read_packets(sock, buf)):
        pass
    t0 = time.monotonic()
    sent = acked = 0
    while acked < n:
        batch = []
        while sent < n and sent - acked < window:
            batch.append(wire.publish(f"bench/{sent % 8}", wire.payload(0, sent, size), 1, wire.packet_id_for(sent)))
            sent += 1
        if batch:
            sock.sendall(b"".join(batch))
        acked += sum(1 for f, *_ in _read_packets(sock, buf) if f >> 4 == 4)
    sock.close()
    return t0


def throughput(kind: str, n: int) -> Dict[str, object]:
    d = tempfile.mkdtemp(prefix=f"bench-bridge-{kind}-", dir=data_root())
    up = Upstream(d)
    up.start()
    gw = Gateway(kind, d, up.port)
    try:
        sub = Subscriber(up.port, "bench-sub", True)
        gw.start()
        _wait(lambda: "gw.cloud" in open(up.proc.log, errors="replace").read(), 15, "the bridge")  # type: ignore
        t0 = publish(gw.port, n)
        sub.collect(n, 120)
        elapsed = sub.last - t0
        sub.close()
        # Delivered messages per second: a gateway that drops some is not credited for them.
        return {"msg/s": len(set(sub.seqs)) / elapsed if sub.seqs else 0.0, "delivered": len(set(sub.seqs))}
    finally:
        if gw.proc:
            gw.proc.stop()
        up.stop()
        shutil.rmtree(d, ignore_errors=True)


def outage(kind: str, n: int, kill: bool) -> Dict[str, object]:
    d = tempfile.mkdtemp(prefix=f"bench-bridge-{kind}-", dir=data_root())
    up = Upstream(d)
    up.start()
    Subscriber(up.port, "bench-sub", False).close()  # a persistent session: the upstream queues for it
    up.stop()
    gw = Gateway(kind, d, up.port)
    try:
        gw.start()
        publish(gw.port, n)
        written = 0
        assert gw.proc is not None
        if kill:
            written += read_io(gw.proc.p.pid).get("write_bytes", 0)
            gw.proc.stop(signal.SIGKILL)
            gw.start()
        pid = gw.proc.p.pid
        io0 = read_io(pid).get("write_bytes", 0)
        up.start()
        t0 = time.monotonic()
        sub = Subscriber(up.port, "bench-sub", False)
        sub.collect(n, 120)
        drain = (sub.last - t0) if sub.seqs else float("nan")
        got = sorted(set(sub.seqs))
        sub.close()
        final = gw.proc.stop()
        gw.proc = None
        # Disk bytes of the whole gateway life (before the drain for the queueing cost).
        queued_bytes = written + io0
        return {"delivered": len(got), "lost": n - len(got), "drain s": drain,
                "disk B/msg": queued_bytes / n, "in order": sub.seqs == sorted(sub.seqs),
                "total disk B": final.get("write_bytes", 0) + written}
    finally:
        if gw.proc:
            gw.proc.stop()
        up.stop()
        shutil.rmtree(d, ignore_errors=True)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="bench.bridge")
    p.add_argument("--quick", action="store_true", help="1 round, smaller sizes")
    p.add_argument("--rounds", type=int, default=None)
    args = p.parse_args(argv)
    if mosquitto_binary() is None:
        sys.exit("mosquitto not found: apt-get install -y mosquitto")
    rounds = args.rounds or (1 if args.quick else 3)
    n_tp, n_out = (5_000, 5_000) if args.quick else (20_000, 10_000)
    rows: List[Tuple[str, str, Dict[str, List[object]]]] = []
    try:
        for sid, what, fn in (("B1", f"throughput, {n_tp} QoS 1", lambda k: throughput(k, n_tp)),
                              ("B2", f"outage, {n_out} QoS 1 queued", lambda k: outage(k, n_out, False)),
                              ("B3", f"outage + kill -9, {n_out} QoS 1", lambda k: outage(k, n_out, True))):
            for kind in ("mosquitto", "edgebroker"):
                results: Dict[str, List[object]] = {}
                for r in range(rounds):
                    print(f"{sid} {kind} round {r + 1}", file=sys.stderr, flush=True)
                    for key, value in fn(kind).items():
                        results.setdefault(key, []).append(value)
                rows.append((sid, f"{what}: {kind}", results))
    finally:
        for proc in STARTED:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    print("| scenario | " + " | ".join(["metric (median over rounds)"]) + " |")
    print("|---|---|")
    for sid, what, results in rows:
        parts = []
        for key, values in results.items():
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                med = statistics.median(values)  # type: ignore[type-var]
                parts.append(f"{key} {med:,.1f}" if isinstance(med, float) else f"{key} {med:,}")
            else:
                parts.append(f"{key} {values}")
        print(f"| {sid} {what} | {'; '.join(parts)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
