"""The commit window's trade, measured: disk writes per message against PUBACK latency, for
commit_window_ms 0, 50, 200 and 1000 (edgebroker only: Mosquitto has no such lever; its
autosave_interval rows are in S9).

    .venv/bin/python -m bench.commit_window [--windows 0,50,200,1000] [--rounds 1] [--seconds 10]

Three loads, each a fresh broker process per window (durability crash, persistence_location on a
disk-backed file system, as S9), 64-byte QoS 1 payloads:
  S9t        S9t's trickle: one publisher, one message at a time (it waits for each PUBACK, then for
             its time slot) at 40 msg/s, 200 messages, through an online persistent session (clean
             session 0, QoS 1, acknowledging at once).
  trickle    a gateway's sensors: 20 publishers, each one message per second, one at a time (20 msg/s
             in all, the phases spread over the second), for `--seconds`, to the same online session.
  trickle-q  the same trickle while that session is offline: every message is queued on disk (an
             uplink down, a logger away).
Writes are the messages' own: /proc/PID/io of the broker read once the sessions are set up and again
after the load, once what the load changed has had time to be committed (the window plus the 1 s of
deferred deletions, plus 0.5 s), divided by the messages: `write_bytes` (what the broker dirtied in the
page cache, as S9's "disk writes", so in 4 KiB units) and `wchar` (the bytes it passed to write(), i.e.
SQLite's WAL frames, and the log). They leave out the broker's start and exit, and the WAL checkpoint,
which copies each page changed since the previous one into the database file once (with 1-row commits
a leaf page takes about 4 rows, so it adds about a quarter). Latency is PUBLISH sent to PUBACK received
at the publisher (p50, p99, max). A persistence-off run of each load gives the floor (the log).
Everything listens on 127.0.0.1; every process started is stopped in a `finally`.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from bench import brokers, wire

PAYLOAD = 64
TOPIC = "bench/cw"


def _read_packet(sock: socket.socket, buf: bytearray) -> Tuple[int, bytes]:
    """One packet (first byte, body) from `sock`, with `buf` holding what was read beyond it."""
    while True:
        if len(buf) >= 2:
            n, mult, i = 0, 1, 1
            while i < len(buf) and i <= 4:
                b = buf[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    if len(buf) >= i + n:
                        first, body = buf[0], bytes(buf[i:i + n])
                        del buf[:i + n]
                        return first, body
                    break
        data = sock.recv(65536)
        if not data:
            raise wire.ProtocolError("connection closed by the broker")
        buf += data


def _connect(port: int, client_id: str, clean: bool = True) -> Tuple[socket.socket, bytearray]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(wire.connect(client_id, clean=clean))
    buf = bytearray()
    first, body = _read_packet(sock, buf)
    if first != 0x20 or body[1] != 0:
        raise wire.ProtocolError(f"CONNACK {first:#x} {body.hex()}")
    return sock, buf


def _subscriber(port: int, online: bool, stop: threading.Event, got: List[int]) -> Optional[threading.Thread]:
    """The persistent session: subscribed, then either kept online acknowledging at once (a thread)
    or disconnected (its messages are queued)."""
    sock, buf = _connect(port, "cw-sub", clean=False)
    sock.sendall(wire.subscribe(1, [(TOPIC + "/#", 1)]))
    first, _ = _read_packet(sock, buf)
    assert first == 0x90, first
    if not online:
        sock.sendall(wire.DISCONNECT_BYTES)
        sock.close()
        return None

    def run() -> None:
        sock.settimeout(0.2)
        try:
            while not stop.is_set():
                try:
                    first, body = _read_packet(sock, buf)
                except socket.timeout:
                    continue
                if first >> 4 == wire.PUBLISH:
                    tlen = int.from_bytes(body[:2], "big")
                    pid = int.from_bytes(body[2 + tlen:4 + tlen], "big")
                    sock.sendall(wire.puback(pid))
                    got.append(pid)
        except (OSError, wire.ProtocolError):
            pass
        finally:
            sock.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _publisher(port: int, k: int, count: int, interval: float, start: float, lat: List[float],
               errors: List[str]) -> None:
    """One message at a time: at start + i * interval (or as soon as the previous PUBACK came)."""
    try:
        sock, buf = _connect(port, f"cw-pub-{k}")
        sock.settimeout(15)
        for i in range(count):
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pid = i % 65535 + 1
            t0 = time.perf_counter()
            sock.sendall(wire.publish(f"{TOPIC}/{k}", b"\0" * PAYLOAD, qos=1, packet_id=pid))
            while True:
                first, body = _read_packet(sock, buf)
                if first >> 4 == wire.PUBACK and int.from_bytes(body[:2], "big") == pid:
                    break
            lat.append(time.perf_counter() - t0)
        sock.sendall(wire.DISCONNECT_BYTES)
        sock.close()
    except (OSError, wire.ProtocolError) as exc:
        errors.append(f"publisher {k}: {exc}")


def run_load(load: str, window: Optional[int], seconds: float) -> Dict[str, Any]:
    """window None: persistence off (the floor)."""
    options: Dict[str, Any] = {"persistence": False} if window is None else {
        "durability": "crash", "commit_window_ms": window, "persistence_location": "{data}"}
    b = brokers.Broker("edgebroker", options=options)
    lat: List[float] = []
    errors: List[str] = []
    got: List[int] = []
    stop = threading.Event()
    sub = None
    io0: Dict[str, int] = {}
    io1: Dict[str, int] = {}
    try:
        b.start()
        sub = _subscriber(b.port, load != "trickle-q", stop, got)
        time.sleep(1.5)  # the subscriber's deferred changes (noted offline) are committed
        io0 = brokers.read_io(b.proc.pid)  # type: ignore[union-attr]
        if load == "S9t":
            pubs, per_pub, interval = 1, 200, 1 / 40
        else:
            pubs, per_pub, interval = 20, int(seconds), 1.0
        t0 = time.monotonic() + 0.2
        t_start = time.monotonic()
        threads = [threading.Thread(target=_publisher, args=(b.port, k, per_pub, interval,
                                                             t0 + k * interval / pubs, lat, errors))
                   for k in range(pubs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds * 4 + 60)
        elapsed = time.monotonic() - t_start
        if sub is not None:
            deadline = time.monotonic() + 10
            while len(got) < pubs * per_pub and time.monotonic() < deadline:
                time.sleep(0.05)
        time.sleep((window or 0) / 1000 + 1.5)  # what waits for the window, then deferred deletions
        io1 = brokers.read_io(b.proc.pid)  # type: ignore[union-attr]
    finally:
        stop.set()
        if sub is not None:
            sub.join(5)
        b.stop()
    n = pubs * per_pub
    lat.sort()
    return {
        "load": load, "window": window, "messages": n, "acked": len(lat), "delivered": len(got),
        "errors": errors,
        "bytes_per_msg": (io1.get("write_bytes", 0) - io0.get("write_bytes", 0)) / n,
        "wchar_per_msg": (io1.get("wchar", 0) - io0.get("wchar", 0)) / n,
        "rate": len(lat) / elapsed if elapsed else 0.0,
        "p50": lat[len(lat) // 2] * 1e3 if lat else 0.0,
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3 if lat else 0.0,
        "max": lat[-1] * 1e3 if lat else 0.0,
    }


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.commit_window", description=__doc__.split("\n\n")[0])
    p.add_argument("--windows", default="0,50,200,1000", help="commit_window_ms values, comma-separated")
    p.add_argument("--loads", default="S9t,trickle,trickle-q")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10.0, help="length of the 20 msg/s trickles")
    args = p.parse_args(argv)
    windows: List[Optional[int]] = [None] + [int(w) for w in args.windows.split(",")]
    results: Dict[Tuple[str, Optional[int]], List[Dict[str, Any]]] = {}
    try:
        for r in range(args.rounds):
            for load in args.loads.split(","):
                for window in windows:
                    res = run_load(load, window, args.seconds)
                    results.setdefault((load, window), []).append(res)
                    print(f"round {r + 1} {load} window {window}: {res}", flush=True, file=__import__("sys").stderr)
    finally:
        brokers.kill_all()
    print("| load | commit_window_ms | disk writes B / msg | vs window 0 | write() B / msg | PUBACK p50 ms "
          "| p99 ms | max ms | msg/s kept | problems |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    base: Dict[str, float] = {}
    for load in args.loads.split(","):
        for window in windows:
            rs = results[(load, window)]
            med = {k: statistics.median(x[k] for x in rs)
                   for k in ("bytes_per_msg", "wchar_per_msg", "p50", "p99", "max", "rate")}
            if window == 0:
                base[load] = med["bytes_per_msg"]
            problems = sorted({e for x in rs for e in x["errors"]} |
                              {f"{x['acked']} of {x['messages']} acknowledged" for x in rs if x["acked"] != x["messages"]} |
                              {f"{x['delivered']} of {x['messages']} delivered" for x in rs
                               if load != "trickle-q" and x["delivered"] < x["messages"]})
            ratio = f"{med['bytes_per_msg'] / base[load]:.2f}" if window and base.get(load) else ""
            print(f"| {load} | {'persistence off' if window is None else window} | {med['bytes_per_msg']:,.0f} "
                  f"| {ratio} | {med['wchar_per_msg']:,.0f} | {med['p50']:.1f} | {med['p99']:.1f} | {med['max']:.1f} | {med['rate']:.1f} "
                  f"| {'; '.join(problems)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
