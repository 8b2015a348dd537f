"""Memory and CPU per idle connection (S6's connect phase), edgebroker alone, for A/B comparisons of a change
to what a connection holds: the main benchmark (`python -m bench --scenarios S6`) has the same figure beside
Mosquitto, this one adds where the bytes go.

    .venv/bin/python -m bench.idlemem                      # 3 rounds of 2,000 connections
    .venv/bin/python -m bench.idlemem --trace              # and the Python heap by source line
    .venv/bin/python -m bench.idlemem --tree /path/to/other/checkout    # another version
    .venv/bin/python -m bench.idlemem --source             # compiled at start, not from bytecode

Each round starts a fresh broker as the benchmark does (`edgebroker -p 0`, the installed command's
script, with the bench's broker interpreter, from bytecode, an existing database in a temporary XDG_DATA_HOME), connects S6's
publisher first, then N connections with S6's handshake (CONNECT with clean session, SUBSCRIBE to
bench/idle/<k>; at most 64 in progress), and reads the broker's VmRSS and its CPU time
(/proc/PID/schedstat, nanoseconds) before and after them; then the publisher sends one QoS 0 message to
each topic (S6's second phase) and VmRSS is read again. Per connection: RSS growth in KiB, CPU in
microseconds, and the wall time of the connect phase; then the RSS growth per connection since before
the connections, and the milliseconds until each had its message. With `--trace` one more round runs
the broker under tracemalloc (slower; its RSS is not comparable) and prints the Python heap per
connection by the line that allocated it. Only 127.0.0.1; every process started is killed at the end.
"""
from __future__ import annotations

import argparse
import compileall
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import wire  # noqa: E402
from bench.brokers import broker_command, broker_python, kill_all  # noqa: E402

CONCURRENCY = 64  # S6's handshakes in progress at once

#: The broker under tracemalloc: SIGUSR1 takes a snapshot, the second one writes the difference per
#: connection (argv[1]: the output file, argv[2]: the number of connections) and the broker goes on.
_TRACED = """
import gc, linecache, os, runpy, signal, sys, tracemalloc
out, n = sys.argv[1], int(sys.argv[2])
del sys.argv[1:3]
tracemalloc.start()
snaps = []
def snap(signum, frame):
    gc.collect()  # what start-up left for the collector is not the connections'
    snaps.append(tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]))
    if len(snaps) == 2:
        stats = snaps[1].compare_to(snaps[0], "lineno")
        with open(out + ".tmp", "w") as f:
            f.write(f"{sum(s.size_diff for s in stats) / n:.0f}\\n")
            for s in stats[:25]:
                frame = s.traceback[0]
                code = linecache.getline(frame.filename, frame.lineno).strip().replace("|", "/")
                f.write(f"{s.size_diff / n:.0f}\\t{os.path.basename(frame.filename)}:{frame.lineno}\\t{code}\\n")
        os.rename(out + ".tmp", out)
signal.signal(signal.SIGUSR1, snap)
sys.argv[0] = "edgebroker"
runpy.run_module("edgebroker", run_name="__main__", alter_sys=True)
"""


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_ns(pid: int) -> int:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


class _Broker:
    def __init__(self, tree: str, data: str, traced: Optional[Tuple[str, int]] = None, source: bool = False) -> None:
        self.log = tempfile.NamedTemporaryFile("w+", prefix="eb-idlemem-", suffix=".log")
        env = dict(os.environ, PYTHONPATH=tree, XDG_DATA_HOME=data)
        env.pop("PYTHONDEVMODE", None)
        if source:  # no bytecode to find (an empty cache directory) and none written: compiled at start
            env.update(PYTHONPYCACHEPREFIX=os.path.join(data, "no-bytecode"), PYTHONDONTWRITEBYTECODE="1")
        # as the bench runs it: an installed broker's start (bench/brokers.py, broker_command)
        cmd = broker_command() if traced is None else [broker_python(), "-c", _TRACED, traced[0], str(traced[1])]
        self.proc = subprocess.Popen(cmd + ["-p", "0"], env=env, cwd=data, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.port = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self.proc.poll() is None:
            with open(self.log.name) as f:
                text = f.read()
            for line in text.splitlines():
                if "listen socket on port" in line:
                    self.port = int(line.rstrip().rstrip(".").rsplit(" ", 1)[1])
            if self.port and " running" in text:
                return
            time.sleep(0.05)
        raise RuntimeError(f"the broker did not start: {text[-500:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def connect_all(port: int, n: int) -> List[socket.socket]:
    """S6's connect phase (bench/workers.py, idle_worker): n connections, each CONNECT (clean session)
    and SUBSCRIBE to a topic of its own in one write, until each has its CONNACK and SUBACK."""
    sel = selectors.DefaultSelector()
    socks: List[socket.socket] = []
    got = [b""] * n
    started = in_progress = done = 0
    deadline = time.monotonic() + 60
    try:
        while done < n:
            while in_progress < CONCURRENCY and started < n:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                socks.append(s)
                sel.register(s, selectors.EVENT_WRITE, started)
                started += 1
                in_progress += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"{done} of {n} connections after 60 s")
            for key, mask in sel.select(1.0):
                k = key.data
                s = socks[k]
                if mask & selectors.EVENT_WRITE:
                    s.send(wire.connect(f"bench-idle-{k}", True, 0) + wire.subscribe(1, [(f"bench/idle/{k}", 0)]))
                    sel.modify(s, selectors.EVENT_READ, k)
                    continue
                data = s.recv(64)
                if not data:
                    raise RuntimeError(f"connection {k} closed during its handshake")
                got[k] += data
                if len(got[k]) >= 9:  # CONNACK (4) + SUBACK (5)
                    if got[k][:9] != b"\x20\x02\x00\x00\x90\x03\x00\x01\x00":
                        raise RuntimeError(f"connection {k}: unexpected answer {got[k][:9]!r}")
                    sel.unregister(s)
                    done += 1
                    in_progress -= 1
    except BaseException:
        for s in socks:
            s.close()
        raise
    finally:
        sel.close()
    return socks


def deliver_one_to_each(pub: socket.socket, socks: List[socket.socket]) -> float:
    """S6's second phase: one QoS 0 message to each connection's topic, in one write of the publisher;
    seconds until every connection has its own."""
    packets = [wire.publish(f"bench/idle/{k}", b"x" * 16) for k in range(len(socks))]
    blob = b"".join(packets)
    sel = selectors.DefaultSelector()
    for k, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, k)
    got = [0] * len(socks)
    waiting = len(socks)
    t0 = time.perf_counter()
    deadline = time.monotonic() + 60
    try:
        pub.sendall(blob)
        while waiting:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{waiting} connections without their message after 60 s")
            for key, _ in sel.select(1.0):
                data = key.fileobj.recv(256)  # type: ignore[union-attr]
                if not data:
                    raise RuntimeError(f"connection {key.data} closed")
                got[key.data] += len(data)
                if got[key.data] >= len(packets[key.data]):
                    sel.unregister(key.fileobj)
                    waiting -= 1
    finally:
        sel.close()
    return time.perf_counter() - t0


def one_round(tree: str, data: str, n: int, traced: Optional[str] = None,
              source: bool = False) -> Tuple[float, float, float, float, float]:
    """(RSS KiB and CPU us per connection, seconds to connect all, then RSS KiB per connection after one
    message to each and ms for that); with `traced` the broker writes its heap difference there."""
    broker = _Broker(tree, data, (traced, n) if traced else None, source)
    socks: List[socket.socket] = []
    try:
        pub = socket.create_connection(("127.0.0.1", broker.port), timeout=10)  # S6's publisher, first
        socks.append(pub)
        pub.sendall(wire.connect("bench-idle-pub", True, 0))
        pub.recv(4)
        time.sleep(0.2)  # as S6 waits before its reading
        pid = broker.proc.pid
        if traced:
            os.kill(pid, signal.SIGUSR1)
        rss0, cpu0 = _rss_kib(pid), _cpu_ns(pid)
        t0 = time.perf_counter()
        socks += connect_all(broker.port, n)
        elapsed = time.perf_counter() - t0
        cpu1 = _cpu_ns(pid)
        time.sleep(0.2)
        rss1 = _rss_kib(pid)
        if traced:
            os.kill(pid, signal.SIGUSR1)
            deadline = time.monotonic() + 60
            while not os.path.exists(traced) and time.monotonic() < deadline:
                time.sleep(0.1)
            return (rss1 - rss0) / n, (cpu1 - cpu0) / n / 1000, elapsed, 0.0, 0.0
        deliver = deliver_one_to_each(pub, socks[1:])
        time.sleep(0.2)
        rss2 = _rss_kib(pid)
        return (rss1 - rss0) / n, (cpu1 - cpu0) / n / 1000, elapsed, (rss2 - rss0) / n, deliver * 1000
    finally:
        for s in socks:
            s.close()
        broker.stop()


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--conns", type=int, default=2000, help="connections per round (S6: 2,000)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--trace", action="store_true", help="also the Python heap per connection by source line")
    p.add_argument("--source", action="store_true",
                   help="the broker compiles its modules at start (as the bench did before it used bytecode)")
    p.add_argument("--tree", default=ROOT, help="the checkout whose edgebroker/ is measured (default: this one)")
    args = p.parse_args(argv)
    tree = os.path.abspath(args.tree)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * args.conns + 100  # both ends of every connection (the broker inherits the limit)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    compileall.compile_dir(os.path.join(tree, "edgebroker"), quiet=1)  # an installed broker's bytecode
    data = tempfile.mkdtemp(prefix="eb-idlemem-")
    try:
        _Broker(tree, data).stop()  # the first start creates the database; the rounds reuse it
        print(f"edgebroker from {os.path.join(tree, 'edgebroker')}, {args.conns:,} connections per round"
              + (", compiled at start" if args.source else ", from bytecode"))
        print("| round | RSS per connection, KiB | broker CPU per connection, us | connect all, s "
              "| RSS per connection after one message to each, KiB | one message to each, ms |")
        print("|--:|--:|--:|--:|--:|--:|")
        for r in range(args.rounds):
            rss, cpu, wall, rss2, deliver = one_round(tree, data, args.conns, source=args.source)
            print(f"| {r + 1} | {rss:.3f} | {cpu:.1f} | {wall:.3f} | {rss2:.3f} | {deliver:.1f} |", flush=True)
        if args.trace:
            out = os.path.join(data, "heap.txt")
            one_round(tree, data, args.conns, out)
            with open(out) as f:
                lines = f.read().splitlines()
            print(f"\nPython heap per connection (tracemalloc): {lines[0]} bytes; by the line that allocated it:\n")
            print("| bytes | where | line |")
            print("|--:|---|---|")
            for line in lines[1:]:
                size, where, code = line.split("\t")
                if abs(int(size)) >= 8:
                    print(f"| {size} | {where} | `{code[:90]}` |")
    finally:
        shutil.rmtree(data, ignore_errors=True)
        kill_all()  # the broker interpreter's virtualenv
    return 0


if __name__ == "__main__":
    sys.exit(main())
