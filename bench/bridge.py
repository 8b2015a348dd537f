"""Bridge scenarios: edgebroker and Mosquitto as the gateway, each bridging to the same kind of upstream
Mosquitto, in one run. They are scenarios B1, B2, B3 of the main runner (`python -m bench --scenarios B`,
`scenarios()` below); `python -m bench.bridge [--quick] [--rounds N]` is a thin entry point that runs
just them and prints the main runner's table.

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

In the main runner's table the broker columns (peak RSS, CPU) are the gateway's: its VmHWM (the highest
over its processes in B3) and its CPU time over the scenario (both processes in B3); the generator CPU
is this process's (the publisher and the subscriber run in it). A gateway that loses acknowledged
messages (Mosquitto's bridge queue is bounded and in memory) is marked LOSSY, its figures counting only
what arrived; messages out of order make a FAIL.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

from . import wire
from .brokers import (
    broker_command, compile_bytecode, cpu_seconds, data_root, edgebroker_seed_dir, free_port, mosquitto_binary, read_io, status_kib,
)
from .scenarios import Metric, Outcome, Scenario, Sizes

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
        env.pop("PYTHONDEVMODE", None)
        self.log = log
        self.p = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)
        STARTED.append(self.p)

    def cpu_s(self) -> float:
        """utime + stime of the process (all its threads); readable until it is reaped."""
        return cpu_seconds(self.p.pid)

    def rss_kib(self) -> int:
        return status_kib(self.p.pid, "VmRSS")

    def hwm_kib(self) -> int:
        """VmHWM, the peak RSS (gone once the process has exited)."""
        return status_kib(self.p.pid, "VmHWM")

    def stop(self, sig: int = signal.SIGTERM) -> Dict[str, int]:
        """Stop; returns /proc/PID/io read at the zombie state (the whole life's writes). Sets `hwm`
        (read just before the signal) and `cpu` (the whole life's, read at the zombie state)."""
        p = self.p
        self.hwm = self.hwm_kib()
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
        self.cpu = self.cpu_s()
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
            # Seeded with the database a first start creates (brokers.edgebroker_seed_dir), as every
            # other edgebroker run of the benchmark: it measures a broker in service, not its first migration.
            seed = edgebroker_seed_dir()
            if seed is not None:
                shutil.copytree(seed, os.path.join(directory, "db"))
            os.makedirs(os.path.join(directory, "db"), exist_ok=True)
            self.conf = os.path.join(directory, "gateway.conf")
            text = (f"persistence true\npersistence_location {directory}/db\nlistener {self.port} 127.0.0.1\n"
                    f"allow_anonymous true\n{block}")
        with open(self.conf, "w") as f:
            f.write(text)
        self.proc: Optional[Proc] = None
        #: Over every process of this gateway so far: CPU seconds since `mark()`, the highest VmHWM.
        self.cpu = 0.0
        self.hwm = 0
        #: VmRSS of its first process once started and idle (its bridge connected, in B1), KiB.
        self.start_rss = 0
        self._cpu0 = 0.0

    def start(self) -> None:
        if self.kind == "mosquitto":
            cmd = [mosquitto_binary() or "mosquitto", "-c", self.conf]
        else:
            compile_bytecode()  # as every edgebroker run of the benchmark (brokers.compile_bytecode)
            cmd = broker_command() + ["-c", self.conf]
        self.proc = Proc(cmd, os.path.join(self.dir, "gateway.log"))
        self._cpu0 = 0.0
        _wait(lambda: _accepts(self.port), 15, f"the {self.kind} gateway")

    def mark(self) -> None:
        """Start counting CPU time here (the start-up before it is not the scenario's), and read the
        start's RSS after 0.2 s of idling (what `python -m bench.growth` calls the start)."""
        assert self.proc is not None
        time.sleep(0.2)
        self.start_rss = self.proc.rss_kib()
        self.cpu = 0.0
        self._cpu0 = self.proc.cpu_s()

    def stop(self, sig: int = signal.SIGTERM) -> Dict[str, int]:
        assert self.proc is not None
        io = self.proc.stop(sig)
        self.cpu += self.proc.cpu - self._cpu0
        self.hwm = max(self.hwm, self.proc.hwm)
        self.proc = None
        return io


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

    def collect(self, n: int, timeout: float, quiet: float = 5.0, quiet_from: Optional[float] = None) -> None:
        """Until n messages arrived, or `quiet` seconds passed without one (from the last one, or from
        `quiet_from` before the first: the rest is lost), or the timeout."""
        self.sock.settimeout(0.2)
        deadline = time.monotonic() + timeout
        quiet_until = time.monotonic() + timeout if quiet_from is None else quiet_from + quiet
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
                quiet_until = self.last + quiet  # nothing more for so long: the rest is lost

    def close(self) -> None:
        self.sock.close()


def _acks(sock: socket.socket, buf: bytearray) -> int:
    """PUBACKs in the next read (the gateway sends the publisher nothing else after CONNACK)."""
    data = sock.recv(65536)
    if not data:
        raise RuntimeError("connection closed")
    k = len(data) >> 2
    if not buf and not len(data) & 3 and data[0::4].count(0x40) == k and data[1::4].count(2) == k:
        return k  # whole PUBACKs only: the commonest read, counted without a Python step per packet
    buf += data
    packets, rest = wire.split(bytes(buf))
    del buf[:rest]
    return sum(1 for f, _, _ in packets if f >> 4 == 4)


def publish(port: int, n: int, size: int = 64, window: int = 64) -> float:
    """N QoS 1 messages with at most `window` unacknowledged; returns when all are acknowledged (and the
    time the first went out). The packets are encoded before that, as every other scenario's generator
    does (bench/README.md, "Bridges"): the publisher's own Python per message is not on B1's clock."""
    packets = [wire.publish(f"bench/{i % 8}", wire.payload(0, i, size), 1, wire.packet_id_for(i)) for i in range(n)]
    sock = socket.create_connection(("127.0.0.1", port))
    buf = bytearray()
    sock.sendall(wire.connect("bench-pub", True))
    while not any(f >> 4 == 2 for f, *_ in _read_packets(sock, buf)):
        pass
    t0 = time.monotonic()
    sent = acked = 0
    while acked < n:
        if sent < n and sent - acked < window:
            upto = min(n, acked + window)
            sock.sendall(b"".join(packets[sent:upto]))
            sent = upto
        acked += _acks(sock, buf)
    sock.close()
    return t0


def _bridge_up(up: Upstream, timeout: float = 15.0) -> float:
    """Wait until the gateway's bridge (client id gw.cloud) has connected to the upstream; when it did."""
    assert up.proc is not None
    log = up.proc.log
    _wait(lambda: "gw.cloud" in open(log, errors="replace").read(), timeout, "the bridge")
    return time.monotonic()


def _delivery(seqs: List[int]) -> Dict[str, object]:
    """Unique messages that arrived, duplicates, and whether their first arrivals kept the order."""
    firsts = list(dict.fromkeys(seqs))
    return {"delivered": len(firsts), "dups": len(seqs) - len(firsts), "in order": firsts == sorted(firsts)}


def throughput(kind: str, n: int, timeout: float = 120.0, quiet: float = 5.0) -> Dict[str, object]:
    d = tempfile.mkdtemp(prefix=f"bench-bridge-{kind}-", dir=data_root())
    up = Upstream(d)
    up.start()
    gw = Gateway(kind, d, up.port)
    try:
        sub = Subscriber(up.port, "bench-sub", True)
        gw.start()
        _bridge_up(up)
        gw.mark()
        t0 = publish(gw.port, n)
        sub.collect(n, timeout, quiet)
        elapsed = sub.last - t0
        sub.close()
        out = _delivery(sub.seqs)
        # Delivered messages per second: a gateway that drops some is not credited for them.
        out["msg/s"] = out["delivered"] / elapsed if sub.seqs else 0.0  # type: ignore[operator]
        gw.stop()
        out.update(gateway_cpu=gw.cpu, gateway_hwm_kib=gw.hwm, gateway_start_kib=gw.start_rss)
        return out
    finally:
        if gw.proc:
            gw.stop()
        up.stop()
        shutil.rmtree(d, ignore_errors=True)


def outage(kind: str, n: int, kill: bool, timeout: float = 120.0, quiet: float = 5.0) -> Dict[str, object]:
    d = tempfile.mkdtemp(prefix=f"bench-bridge-{kind}-", dir=data_root())
    up = Upstream(d)
    up.start()
    Subscriber(up.port, "bench-sub", False).close()  # a persistent session: the upstream queues for it
    up.stop()
    gw = Gateway(kind, d, up.port)
    try:
        gw.start()
        gw.mark()
        publish(gw.port, n)
        written = 0
        assert gw.proc is not None
        if kill:
            written += read_io(gw.proc.p.pid).get("write_bytes", 0)
            gw.stop(signal.SIGKILL)
            gw.start()  # this process's CPU counts from its start: the recovery is part of B3
        assert gw.proc is not None
        pid = gw.proc.p.pid
        io0 = read_io(pid).get("write_bytes", 0)
        # The upstream's subscriber reattaches to its persistent session before the gateway's bridge
        # can reconnect: the gateway is stopped (SIGSTOP) meanwhile. Otherwise the bridge may drain its
        # first window before the subscriber is back, and Mosquitto 2.0.11 acknowledged such messages
        # and then did not deliver them (seen: the first 19 missing, the gateway's queue empty).
        os.kill(pid, signal.SIGSTOP)
        try:
            up.start()
            t0 = time.monotonic()
            sub = Subscriber(up.port, "bench-sub", False)
        finally:
            os.kill(pid, signal.SIGCONT)
        try:
            connected: Optional[float] = _bridge_up(up, min(30.0, timeout))
        except RuntimeError:
            connected = time.monotonic()  # never reconnected: wait `quiet` more, then count what came
        sub.collect(n, timeout, quiet, quiet_from=connected)
        drain = (sub.last - t0) if sub.seqs else float("nan")
        sub.close()
        final = gw.stop()
        out = _delivery(sub.seqs)
        # Disk bytes of the whole gateway life (before the drain for the queueing cost).
        queued_bytes = written + io0
        out.update({"lost": n - out["delivered"], "drain s": drain,  # type: ignore[operator]
                    "disk B/msg": queued_bytes / n, "total disk B": final.get("write_bytes", 0) + written,
                    "gateway_cpu": gw.cpu, "gateway_hwm_kib": gw.hwm, "gateway_start_kib": gw.start_rss})
        return out
    finally:
        if gw.proc:
            gw.stop()
        up.stop()
        shutil.rmtree(d, ignore_errors=True)


def kill_started() -> None:
    """Last resort: kill every process this module started that is still running (each by its pid)."""
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- as scenarios of the main runner (bench/run.py) -----------------------------------------------

def _outcome(res: Dict[str, object], n: int, t0: float, cpu0: float) -> Outcome:
    o = Outcome(gen_cpu=time.process_time() - cpu0, wall=time.monotonic() - t0)
    o.broker_cpu = float(res["gateway_cpu"])  # type: ignore[arg-type]
    o.hwm_kib = int(res["gateway_hwm_kib"])  # type: ignore[call-overload]
    delivered = int(res["delivered"])  # type: ignore[call-overload]
    o.raw.update(received=delivered, expected=n, dups=res["dups"], start_kib=res["gateway_start_kib"])
    o.notes.append(f"delivered {delivered:,} of {n:,}; gateway VmRSS at start {res['gateway_start_kib'] / 1024:.1f} MiB")
    if res["dups"]:
        o.notes.append(f"{res['dups']:,} duplicates (QoS 1 allows them)")
    if not res["in order"]:
        o.status, o.detail = "FAIL", "messages out of order at the upstream subscriber"
    elif delivered < n:
        o.status, o.detail = "LOSSY", f"delivered {delivered:,} of {n:,} acknowledged messages ({n - delivered:,} lost)"
    return o


def run_b1(kind: str, sz: Sizes, timeout: float) -> Outcome:
    t0, cpu0 = time.monotonic(), time.process_time()
    res = throughput(kind, sz.b1_count, timeout, sz.bridge_quiet_s)
    o = _outcome(res, sz.b1_count, t0, cpu0)
    if res["delivered"]:
        o.metrics["rate"] = float(res["msg/s"])  # type: ignore[arg-type]
    return o


def _run_outage(kind: str, sz: Sizes, timeout: float, kill: bool) -> Outcome:
    t0, cpu0 = time.monotonic(), time.process_time()
    res = outage(kind, sz.b2_count, kill, timeout, sz.bridge_quiet_s)
    o = _outcome(res, sz.b2_count, t0, cpu0)
    o.metrics["delivered"] = float(res["delivered"])  # type: ignore[arg-type]
    if res["delivered"]:
        o.metrics["drain_s"] = float(res["drain s"])  # type: ignore[arg-type]
    o.metrics["disk_b"] = float(res["disk B/msg"])  # type: ignore[arg-type]
    o.notes.append(f"gateway wrote {res['total disk B']:,} B to disk in all")
    return o


def run_b2(kind: str, sz: Sizes, timeout: float) -> Outcome:
    return _run_outage(kind, sz, timeout, kill=False)


def run_b3(kind: str, sz: Sizes, timeout: float) -> Outcome:
    return _run_outage(kind, sz, timeout, kill=True)


def scenarios(sz: Sizes) -> List[Scenario]:
    n = sz.b2_count
    outage_metrics = (Metric("delivered", f"delivered of {n:,}", "higher"),
                      Metric("drain_s", "upstream back to last delivered, s", "lower", "{:,.2f}"),
                      Metric("disk_b", "gateway disk bytes per queued msg", "lower", "{:,.1f}"))
    return [
        Scenario("B1", f"bridge throughput: {sz.b1_count:,} QoS 1 msgs (window {sz.window}) published on the "
                       "gateway, forwarded by its bridge (`topic bench/# out 1`) to an upstream Mosquitto's "
                       "QoS 1 subscriber", (Metric("rate", "delivered msg/s", "higher"),), run_b1,
                 family="B", hosted=True, max_rounds=sz.b1_rounds),
        Scenario("B2", f"bridge outage: {n:,} QoS 1 msgs acknowledged by the gateway while the upstream is "
                       "down, then the upstream comes back", outage_metrics, run_b2,
                 family="B", hosted=True, max_rounds=sz.bridge_rounds),
        Scenario("B3", "B2 with the gateway killed (SIGKILL) after the messages were acknowledged and "
                       "restarted before the upstream comes back", outage_metrics, run_b3,
                 family="B", hosted=True, max_rounds=sz.bridge_rounds),
    ]


def main(argv: Optional[List[str]] = None) -> int:
    """`python -m bench.bridge [--quick] [--rounds N] ...`: the main runner with --scenarios B."""
    from .run import main as run_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(["--scenarios", "B", "--no-calibration"] + argv)


if __name__ == "__main__":
    sys.exit(main())
