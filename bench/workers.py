"""Load-generator processes: publishers and subscribers on raw sockets with pre-encoded packets.

Each worker runs in its own process (multiprocessing, fork), reports through one queue as
`(kind, worker_id, dict)` messages ("ready" once connected, "result" at the end), and stops on its own
at `deadline` (a time.monotonic() value: CLOCK_MONOTONIC is system-wide on Linux, so the parent's
deadline means the same instant here) so that it can still report partial counts. Timestamps use
time.perf_counter(), also CLOCK_MONOTONIC on Linux, so first/last times of different processes can be
compared.

`cpu` in every result is the worker's own CPU time (user + system) during the measured phase, not the
set-up (connecting, pre-encoding).
"""
from __future__ import annotations

import os
import resource
import selectors
import socket
import struct
import threading
import time
import traceback
from typing import Any, Dict, List, Optional, Tuple

from . import wire

RECV = 262144
_HEAD = struct.Struct(">II")
_HEAD_TS = struct.Struct(">IIQ")
perf = time.perf_counter
cpu_now = time.process_time


# ---- small blocking helpers (set-up phases only) ------------------------------------------------

class TlsPort(int):
    """A broker's port whose listener speaks TLS: the clients connect to it with `cafile` trusted (the
    TLS scenarios give it to the workers in place of the plain int; everything else reads it as a port)."""
    cafile: str

    def __new__(cls, port: int, cafile: str) -> "TlsPort":
        obj = super().__new__(cls, port)
        obj.cafile = cafile
        return obj


def open_socket(port: int, timeout: float = 10.0) -> socket.socket:
    """A TCP connection to 127.0.0.1:port, with Nagle off; over TLS (verifying the broker's certificate
    for localhost) when the port is a TlsPort."""
    s = socket.create_connection(("127.0.0.1", int(port)), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    cafile = getattr(port, "cafile", None)
    if cafile is not None:
        import ssl
        s = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname="localhost")
    return s


def recv_more(sock: socket.socket, data: bytes) -> bytes:
    """What a TLS socket holds decrypted beyond `data` (select does not see it); nothing for TCP."""
    pending = getattr(sock, "pending", None)
    while pending is not None and pending():
        data += sock.recv(RECV)
    return data


def connect_client(port: int, client_id: str, clean: bool = True, timeout: float = 10.0,
                   expect_present: Optional[bool] = None,
                   credentials: Optional[Tuple[str, str]] = None) -> Tuple[socket.socket, bytes, int]:
    """A connected MQTT client: (socket, bytes received after the CONNACK, session-present flag)."""
    s = open_socket(port, timeout)
    user, password = credentials or (None, None)
    s.sendall(wire.connect(client_id, clean, username=user, password=password))
    buf = b""
    while len(buf) < 4:
        chunk = s.recv(RECV)
        if not chunk:
            s.close()
            raise wire.ProtocolError(f"{client_id}: connection closed before CONNACK")
        buf += chunk
    if buf[0] != 0x20 or buf[1] != 2 or buf[3] != 0:
        s.close()
        raise wire.ProtocolError(f"{client_id}: bad CONNACK {buf[:4]!r}")
    present = buf[2] & 1
    if expect_present is not None and bool(present) != expect_present:
        s.close()
        raise wire.ProtocolError(f"{client_id}: CONNACK session present {present}, expected {int(expect_present)}")
    return s, buf[4:], present


def subscribe_blocking(s: socket.socket, filters: List[Tuple[str, int]], leftover: bytes = b"",
                       packet_id: int = 1) -> bytes:
    """Send SUBSCRIBE and wait for its SUBACK; return every other byte received so far (packets that
    came before the SUBACK, then whatever follows it, e.g. retained messages). Raises on a refused
    filter."""
    s.sendall(wire.subscribe(packet_id, filters))
    buf = leftover
    while True:
        packets, _ = wire.split(buf)
        start = 0
        for first, body, end in packets:
            if first >> 4 == wire.SUBACK:
                codes = buf[body + 2:end]
                if any(c & 0x80 for c in codes):
                    raise wire.ProtocolError(f"SUBSCRIBE refused: {bytes(codes)!r}")
                return buf[:start] + buf[end:]
            start = end
        chunk = s.recv(RECV)
        if not chunk:
            raise wire.ProtocolError("connection closed before SUBACK")
        buf += chunk


def wait_closed(s: socket.socket, deadline: float) -> bool:
    """After DISCONNECT: read until the broker closes (it then has processed everything we sent)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(min(left, 1.0))
        try:
            if not s.recv(RECV):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True


def rx_bytes(s: socket.socket) -> int:
    """Bytes this TCP socket has received so far (tcpi_bytes_received of TCP_INFO, Linux 4.1+), i.e. what
    the broker sent on this connection: S9 subtracts it from Mosquitto's wchar, which counts its socket
    write()s. 0 when unavailable."""
    try:
        info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        return struct.unpack_from("<Q", info, 128)[0] if len(info) >= 136 else 0
    except (OSError, struct.error):
        return 0


def _put(q: Any, kind: str, wid: Any, data: Dict[str, Any]) -> None:
    q.put((kind, wid, data))


def _fail(q: Any, wid: Any, data: Dict[str, Any]) -> None:
    data["error"] = traceback.format_exc(limit=3).strip().splitlines()[-1]
    _put(q, "result", wid, data)


# ---- subscriber side: the counting hot loop ------------------------------------------------------

class SubState:
    """Counting state of one subscriber socket. Messages are identified by (publisher id, seq) from the
    payload; `seen` marks them so duplicates and losses are exact."""

    __slots__ = ("sock", "pending", "seen", "unique", "dups", "reorders", "last_seq", "retained",
                 "first_t", "last_t", "expected", "acks_sent", "lat", "other", "most_unacked")

    def __init__(self, sock: socket.socket, n_pubs: int, per_pub: int) -> None:
        self.sock = sock
        self.pending = b""
        self.seen = [bytearray(per_pub) for _ in range(n_pubs)]
        self.unique = 0
        self.dups = 0
        self.reorders = 0
        self.last_seq = [-1] * n_pubs
        self.retained = 0
        self.first_t = 0.0
        self.last_t = 0.0
        self.expected = n_pubs * per_pub
        self.acks_sent = 0
        self.lat: Optional[List[int]] = None
        self.other = 0
        #: With ack (receive_all): the most acknowledgements one read brought. Each read is answered
        #: before the next, so that many messages were unacknowledged at once: a lower bound on the
        #: broker's messages in flight, which a broker keeping max_inflight_messages W holds to W.
        self.most_unacked = 0


def consume(st: SubState, data: bytes, now: float, count_retained: bool = False) -> List[bytes]:
    """Parse what one recv brought; count PUBLISHes; return the acknowledgements to send
    (PUBACK for QoS 1, PUBREC for QoS 2, PUBCOMP for PUBREL). Retained messages (retain flag set) are
    counted only with count_retained (left-overs from an earlier run of a persistent broker must not
    count); st.retained tallies every message with the retain flag either way."""
    buf = st.pending + data if st.pending else data
    n = len(buf)
    i = 0
    acks: List[bytes] = []
    seen = st.seen
    last_seq = st.last_seq
    unique = st.unique
    before = unique
    lat = st.lat
    now_ns = int(now * 1e9) if lat is not None else 0
    unpack = _HEAD_TS.unpack_from if lat is not None else _HEAD.unpack_from
    while n - i >= 2:
        b0 = buf[i]
        x = buf[i + 1]
        if x < 0x80:
            j = i + 2
            rl = x
        else:
            rl = x & 0x7F
            mult = 128
            j = i + 2
            while True:
                if j >= n:
                    rl = -1
                    break
                x = buf[j]
                j += 1
                rl += (x & 0x7F) * mult
                if x < 0x80:
                    break
                mult <<= 7
            if rl < 0:
                break
        end = j + rl
        if end > n:
            break
        t = b0 >> 4
        if t == 3:
            p = j + 2 + ((buf[j] << 8) | buf[j + 1])
            qos = (b0 >> 1) & 3
            if qos:
                acks.append((b"\x40\x02" if qos == 1 else b"\x50\x02") + buf[p:p + 2])
                p += 2
            if b0 & 1:
                st.retained += 1
            if count_retained or not b0 & 1:
                if lat is not None:
                    pub, seq, ts = unpack(buf, p)
                    lat.append(now_ns - ts)
                else:
                    pub, seq = unpack(buf, p)
                s = seen[pub]
                if s[seq]:
                    st.dups += 1
                else:
                    s[seq] = 1
                    unique += 1
                if seq < last_seq[pub]:
                    st.reorders += 1
                last_seq[pub] = seq
        elif t == 6:
            acks.append(b"\x70\x02" + buf[j:j + 2])
        else:
            st.other += 1
        i = end
    st.pending = buf[i:] if i < n else b""
    if unique != before:
        if not st.first_t:
            st.first_t = now
        st.last_t = now
        st.unique = unique
    return acks


def receive_all(st: SubState, sock: socket.socket, n: int, deadline: float, out: Dict[str, Any],
                count_retained: bool = False, ack: bool = True) -> None:
    """Read and count until n distinct messages came (or the deadline: out["stopped"]); with ack,
    answer each read with one write of its acknowledgements."""
    while st.unique < n:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            out["stopped"] = "deadline"
            return
        sock.settimeout(min(left_s, 1.0))
        try:
            data = sock.recv(RECV)
        except socket.timeout:
            continue
        if not data:
            raise wire.ProtocolError(f"broker closed the subscriber after {st.unique} messages")
        acks = consume(st, data, perf(), count_retained)
        if acks and ack:
            if len(acks) > st.most_unacked:
                st.most_unacked = len(acks)
            sock.settimeout(None)
            sock.sendall(b"".join(acks))


def sub_worker(wid: Any, q: Any, port: int, client_ids: List[str], topic_filter: Any, qos: int, n_pubs: int,
               per_pub: int, pubs_done: Any, deadline: float, idle_grace: float = 2.0,
               count_retained: bool = False, clean: bool = True) -> None:
    """Subscribers (one socket per client id) counting every message. topic_filter is one filter for
    all sockets, or a list with one per socket. Ends when every socket has all n_pubs*per_pub
    messages, at the deadline, or idle_grace seconds after the publishers are done with no traffic.
    clean=False: persistent sessions (clean session 0), so that a persisting broker stores what is in
    flight to them (S9)."""
    states: List[SubState] = []
    out: Dict[str, Any] = {"sockets": len(client_ids)}
    sel = selectors.DefaultSelector()
    try:
        for k, cid in enumerate(client_ids):
            s, left, _ = connect_client(port, cid, clean)
            f = topic_filter[k] if isinstance(topic_filter, list) else topic_filter
            left = subscribe_blocking(s, [(f, qos)], left)
            st = SubState(s, n_pubs, per_pub)
            if left:
                acks = consume(st, left, perf(), count_retained)
                if acks:
                    s.sendall(b"".join(acks))
            states.append(st)
            sel.register(s, selectors.EVENT_READ, st)
        _put(q, "ready", wid, {})
        c0 = cpu_now()
        open_ = len(states)
        done = sum(1 for st in states if st.unique >= st.expected)
        last_rx = time.monotonic()
        closed = 0
        while done < open_:
            events = sel.select(0.2)
            if not events:
                mono = time.monotonic()
                if mono >= deadline:
                    out["stopped"] = "deadline"
                    break
                if pubs_done.is_set() and mono - last_rx > idle_grace:
                    out["stopped"] = "idle after publishers finished"
                    break
                continue
            now = perf()
            for key, _ in events:
                st = key.data
                data = recv_more(st.sock, st.sock.recv(RECV))
                if not data:
                    sel.unregister(st.sock)
                    closed += 1
                    open_ -= 1
                    continue
                was_done = st.unique >= st.expected
                acks = consume(st, data, now, count_retained)
                if acks:
                    st.sock.sendall(b"".join(acks))
                    st.acks_sent += len(acks)
                if not was_done and st.unique >= st.expected:
                    done += 1
            last_rx = time.monotonic()
            if last_rx >= deadline:
                out["stopped"] = "deadline"
                break
        out["cpu"] = cpu_now() - c0
        if closed:
            out["closed_by_broker"] = closed
    except Exception:
        out["cpu"] = 0.0
        _summarise(states, out)
        _fail(q, wid, out)
        return
    finally:
        out["rx_bytes"] = sum(rx_bytes(st.sock) for st in states)
        for st in states:
            try:
                st.sock.close()
            except OSError:
                pass
        sel.close()
    _summarise(states, out)
    _put(q, "result", wid, out)


def stuck_sub_worker(wid: Any, q: Any, port: int, client_id: str, topic_filter: str, n_pubs: int, per_pub: int,
                     pubs_done: Any, deadline: float, idle_grace: float = 1.0) -> None:
    """A QoS 0 subscriber that reads nothing while the publishers send, so that its socket fills and the
    broker has to keep or drop what it cannot write; once they are done it reads what was kept for it
    (until idle_grace seconds pass without a byte) and reports how many, whether in order, and how many
    bytes were waiting in its own receive buffer (the kernel's share, not the broker's)."""
    out: Dict[str, Any] = {}
    s = None
    try:
        s, left, _ = connect_client(port, client_id)
        left = subscribe_blocking(s, [(topic_filter, 0)], left)
        st = SubState(s, n_pubs, per_pub)
        if left:
            consume(st, left, perf())
        _put(q, "ready", wid, {})
        while not pubs_done.wait(0.2):
            if time.monotonic() > deadline:
                break
        out["queued_in_kernel"] = _unread_bytes(s)
        c0 = cpu_now()
        while time.monotonic() < deadline:
            s.settimeout(idle_grace)
            try:
                data = s.recv(RECV)
            except socket.timeout:
                break
            if not data:
                out["closed_by_broker"] = 1
                break
            consume(st, data, perf())
        out.update(received=st.unique, reorders=st.reorders, dups=st.dups, cpu=cpu_now() - c0)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        if s is not None:
            s.close()
    _put(q, "result", wid, out)


def _unread_bytes(s: socket.socket) -> int:
    """Bytes waiting in the socket's receive queue (FIONREAD)."""
    import fcntl
    import termios
    return struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def _summarise(states: List[SubState], out: Dict[str, Any]) -> None:
    firsts = [st.first_t for st in states if st.first_t]
    out.update(
        received=sum(st.unique for st in states),
        expected=sum(st.expected for st in states),
        dups=sum(st.dups for st in states),
        reorders=sum(st.reorders for st in states),
        stale_retained=sum(st.retained for st in states),
        first_t=min(firsts) if firsts else 0.0,
        last_t=max(st.last_t for st in states) if states else 0.0,
        complete=sum(1 for st in states if st.unique >= st.expected),
    )


# ---- publisher side --------------------------------------------------------------------------

def encode_messages(pub_id: int, topic: str, count: int, qos: int, size: int, retain: bool = False,
                    topics: Optional[List[str]] = None) -> List[bytes]:
    """Every PUBLISH of one publisher, encoded up front (the hot loop only joins and sends)."""
    out = []
    for seq in range(count):
        t = topics[seq] if topics is not None else topic
        pl = wire.payload(pub_id, seq, size)
        out.append(wire.publish(t, pl, qos, wire.packet_id_for(seq) if qos else 0, retain))
    return out


def send_burst(s: socket.socket, blob: bytes, deadline: float, chunk: int = 262144) -> int:
    """Send blob as fast as the broker takes it; returns bytes sent (less than len(blob) at the deadline)."""
    view = memoryview(blob)
    sent = 0
    n = len(blob)
    while sent < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(min(left, 1.0))
        try:
            sent += s.send(view[sent:sent + chunk])
        except socket.timeout:
            continue
    s.settimeout(None)
    return sent


def run_window(s: socket.socket, packets: List[bytes], qos: int, window: int, deadline: float,
               leftover: bytes = b"", first_id: int = 0) -> Dict[str, Any]:
    """Publish QoS 1/2 with at most `window` messages unacknowledged (PUBACK, or PUBCOMP for QoS 2);
    answers PUBREC with PUBREL. Returns sent/acked counts and protocol oddities. first_id: the message
    number (for its packet id, wire.packet_id_for) of packets[0]."""
    count = len(packets)
    outstanding = bytearray(65536)
    pid_for = (lambda k: wire.packet_id_for(first_id + k)) if first_id else wire.packet_id_for
    nxt = min(window, count)
    for k in range(nxt):
        outstanding[pid_for(k)] = 1
    s.sendall(b"".join(packets[:nxt]))
    acked = 0
    bogus = 0
    pending = leftover
    while acked < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(min(left, 1.0))
        try:
            data = s.recv(RECV)
        except socket.timeout:
            continue
        if not data:
            raise wire.ProtocolError(f"broker closed the publisher after {acked} acks")
        buf = pending + data if pending else data
        n = len(buf)
        i = 0
        out: List[bytes] = []
        while n - i >= 4:  # acks are 4 bytes; anything longer is unexpected here
            b0 = buf[i]
            rl = buf[i + 1]
            if rl >= 0x80:
                raise wire.ProtocolError(f"unexpected long packet type {b0 >> 4} at a publisher")
            end = i + 2 + rl
            if end > n:
                break
            t = b0 >> 4
            if t == 4 or t == 7:  # PUBACK / PUBCOMP: one slot free
                pid = (buf[i + 2] << 8) | buf[i + 3]
                if outstanding[pid]:
                    outstanding[pid] = 0
                    acked += 1
                else:
                    bogus += 1
            elif t == 5:  # PUBREC
                out.append(b"\x62\x02" + buf[i + 2:i + 4])
            else:
                bogus += 1
            i = end
        pending = buf[i:] if i < n else b""
        free = window - (nxt - acked)
        if free > 0 and nxt < count:
            k = min(free, count - nxt)
            for m in range(nxt, nxt + k):
                outstanding[pid_for(m)] = 1
            out.extend(packets[nxt:nxt + k])
            nxt += k
        if out:
            s.sendall(b"".join(out))
    return {"sent": nxt, "acked": acked, "bogus_acks": bogus}


def run_paced(s: socket.socket, packets: List[bytes], qos: int, rate: float, deadline: float,
               leftover: bytes = b"") -> Dict[str, Any]:
    """Publish QoS 1/2 at `rate` messages per second, one at a time: each waits for its acknowledgement
    (the window of run_window with one slot), then for its time slot, as a sensor does."""
    sent = acked = bogus = 0
    t0 = time.monotonic()
    for k, packet in enumerate(packets):
        res = run_window(s, [packet], qos, 1, deadline, leftover, first_id=k)
        leftover = b""
        sent += res["sent"]
        acked += res["acked"]
        bogus += res["bogus_acks"]
        if res["acked"] < 1:
            break
        pause = t0 + (k + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the load, not waiting for a result
    return {"sent": sent, "acked": acked, "bogus_acks": bogus}


def pub_worker(wid: Any, q: Any, port: int, client_id: str, pub_id: int, topic: str, count: int, qos: int,
               size: int, window: int, start_evt: Any, deadline: float, retain: bool = False,
               topics: Optional[List[str]] = None, rate: float = 0.0) -> None:
    """rate > 0 (QoS 1/2): one message at a time at that pace (S9t) instead of a window."""
    out: Dict[str, Any] = {"count": count}
    s = None
    try:
        s, left, _ = connect_client(port, client_id)
        packets = encode_messages(pub_id, topic, count, qos, size, retain, topics)
        blob = b"".join(packets) if qos == 0 else b""
        _put(q, "ready", wid, {})
        while not start_evt.wait(0.5):
            if time.monotonic() > deadline:
                raise TimeoutError("start signal never came")
        c0 = cpu_now()
        t0 = perf()
        if qos == 0:
            sent = send_burst(s, blob, deadline)
            out["sent"] = _messages_in(packets, sent)
        elif rate > 0:
            out.update(run_paced(s, packets, qos, rate, deadline, left))
        else:
            out.update(run_window(s, packets, qos, window, deadline, left))
        t1 = perf()
        s.sendall(wire.DISCONNECT_BYTES)
        out["closed_cleanly"] = wait_closed(s, deadline)
        out.update(t_start=t0, t_sent=t1, t_end=perf(), cpu=cpu_now() - c0)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        if s is not None:
            out["rx_bytes"] = rx_bytes(s)
            s.close()
    _put(q, "result", wid, out)


def _messages_in(packets: List[bytes], nbytes: int) -> int:
    """How many whole packets the first nbytes of their concatenation hold."""
    total = 0
    for k, p in enumerate(packets):
        total += len(p)
        if total > nbytes:
            return k
    return len(packets)


# ---- S5: latency at a fixed rate ------------------------------------------------------------------
# Publisher and subscriber are separate processes so that neither waits on the other: the publisher
# sleeps (clock_nanosleep, microsecond-precise) to an absolute schedule and stamps each message with
# time.perf_counter_ns() just before sending it; the subscriber blocks in recv and subtracts that stamp
# from its own clock on arrival. Both clocks are CLOCK_MONOTONIC, which on Linux is one system-wide
# clock, so the difference is the one-way latency through the broker (plus two loopback hops).

def latency_sub_worker(wid: Any, q: Any, port: int, count: int, pub_done: Any, deadline: float) -> None:
    out: Dict[str, Any] = {"expected": count}
    sub = None
    try:
        sub, left, _ = connect_client(port, "bench-lat-sub")
        left = subscribe_blocking(sub, [("bench/lat", 0)], left)
        st = SubState(sub, 1, count)
        st.lat = []
        if left:
            consume(st, left, perf())
        _put(q, "ready", wid, {})
        c0 = cpu_now()
        idle_since = None
        sub.settimeout(0.2)
        while st.unique < count:
            try:
                data = sub.recv(RECV)
            except socket.timeout:
                mono = time.monotonic()
                if mono > deadline:
                    out["stopped"] = "deadline"
                    break
                if pub_done.is_set():
                    idle_since = idle_since or mono
                    if mono - idle_since > 2.0:
                        out["stopped"] = "idle 2 s after the last send"
                        break
                continue
            now = perf()
            if not data:
                raise wire.ProtocolError("broker closed the subscriber")
            consume(st, data, now)
            idle_since = None
        out["cpu"] = cpu_now() - c0
        if st.lat:
            worst = max(range(len(st.lat)), key=st.lat.__getitem__)
            out["max_at"] = worst
            out["over_1ms"] = sum(1 for v in st.lat if v > 1_000_000)
        lat = sorted(st.lat)
        out.update(received=st.unique, dups=st.dups, reorders=st.reorders, stale_retained=st.retained)
        if lat:
            out["p50_ms"] = lat[len(lat) // 2] / 1e6
            out["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6
            out["max_ms"] = lat[-1] / 1e6
        sub.settimeout(None)
        sub.sendall(wire.DISCONNECT_BYTES)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        if sub is not None:
            sub.close()
    _put(q, "result", wid, out)


def latency_pub_worker(wid: Any, q: Any, port: int, rate: float, count: int, size: int, start_evt: Any,
                       deadline: float) -> None:
    out: Dict[str, Any] = {}
    pub = None
    try:
        pub, _, _ = connect_client(port, "bench-lat-pub")
        head = wire.publish("bench/lat", bytes(size))[:-size]
        pad = bytes(size - _HEAD_TS.size)
        pack = _HEAD_TS.pack
        ns = time.perf_counter_ns
        sleep = time.sleep
        _put(q, "ready", wid, {})
        while not start_evt.wait(0.5):
            if time.monotonic() > deadline:
                raise TimeoutError("no start signal")
        c0 = cpu_now()
        interval = 1.0 / rate
        start = perf() + 0.01
        late_max = 0.0
        late_over_1ms = 0
        i = 0
        while i < count:
            due = start + i * interval
            d = due - perf()
            if d > 0:
                sleep(d)
            else:
                late = -d
                if late > late_max:
                    late_max = late
                if late > 0.001:
                    late_over_1ms += 1
            pub.sendall(head + pack(0, i, ns()) + pad)
            i += 1
            if not i % 1000 and time.monotonic() > deadline:
                out["stopped"] = "deadline"
                break
        out.update(sent=i, cpu=cpu_now() - c0, late_max_ms=late_max * 1e3, late_over_1ms=late_over_1ms)
        pub.sendall(wire.DISCONNECT_BYTES)
        wait_closed(pub, deadline)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        if pub is not None:
            pub.close()
    _put(q, "result", wid, out)


# ---- S6: many idle subscribers --------------------------------------------------------------------

def s6_credentials(auth: str, k: int) -> Optional[Tuple[str, str]]:
    """S6-auth: connection k logs in as its own user (auth "each"), or every one as the same user
    ("one"); k = -1 is the publisher. "" = anonymous (plain S6)."""
    if auth == "each":
        return (f"bench-idle-{k}" if k >= 0 else "bench-idle-pub", f"pw-{k}")
    if auth == "one":
        return ("bench", "bench-pw")
    return None


def idle_worker(wid: Any, q: Any, port: int, n: int, concurrency: int, size: int, go_connect: Any,
                go_publish: Any, deadline: float, auth: str = "") -> None:
    """Open n connections (at most `concurrency` handshakes in progress at a time, so neither broker's
    listen backlog overflows), each CONNECT + SUBSCRIBE to its own topic bench/idle/<k>; report
    "connected"; then, on go_publish, one publisher sends one message to each topic and we time until
    every connection has its own message. `auth`: see s6_credentials."""
    out: Dict[str, Any] = {"expected": n}
    socks: List[Optional[socket.socket]] = [None] * n
    pub = None
    sel = selectors.DefaultSelector()
    try:
        pub, _, _ = connect_client(port, "bench-idle-pub", credentials=s6_credentials(auth, -1))
        _put(q, "ready", wid, {})
        while not go_connect.wait(0.5):
            if time.monotonic() > deadline:
                raise TimeoutError("no go signal")
        c0 = cpu_now()
        t0 = perf()
        bufs = [b""] * n
        handshake = [wire.connect(f"bench-idle-{k}", True, 0, *(s6_credentials(auth, k) or ()))
                     + wire.subscribe(1, [(f"bench/idle/{k}", 0)]) for k in range(n)]
        started = 0
        in_progress = 0
        connected = 0
        errors: List[str] = []
        while connected + len(errors) < n:
            while in_progress < concurrency and started < n:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", port))
                socks[started] = s
                sel.register(s, selectors.EVENT_WRITE, started)
                started += 1
                in_progress += 1
            if time.monotonic() > deadline:
                out["stopped"] = "deadline while connecting"
                break
            for key, mask in sel.select(0.5):
                k = key.data
                s = socks[k]
                assert s is not None
                if mask & selectors.EVENT_WRITE:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        errors.append(f"connect {k}: errno {err}")
                        sel.unregister(s)
                        in_progress -= 1
                        continue
                    s.send(handshake[k])  # ~40 bytes into an empty send buffer: always whole
                    sel.modify(s, selectors.EVENT_READ, k)
                    continue
                try:
                    data = s.recv(RECV)
                except OSError as exc:
                    data = b""
                    errors.append(f"recv {k}: {exc}")
                if not data:
                    if not errors or not errors[-1].startswith(f"recv {k}"):
                        errors.append(f"connection {k} closed during the handshake")
                    sel.unregister(s)
                    in_progress -= 1
                    continue
                buf = bufs[k] + data
                bufs[k] = buf
                if len(buf) >= 9:  # CONNACK (4) + SUBACK (5)
                    if buf[0] != 0x20 or buf[3] != 0 or buf[4] != 0x90 or buf[8] & 0x80:
                        errors.append(f"connection {k}: unexpected handshake reply {buf[:9]!r}")
                    else:
                        connected += 1
                    bufs[k] = buf[9:]
                    in_progress -= 1
        t_conn = perf()
        out.update(connected=connected, connect_s=t_conn - t0, errors=len(errors), first_errors=errors[:3])
        _put(q, "connected", wid, {"connected": connected})
        while not go_publish.wait(0.5):
            if time.monotonic() > deadline:
                raise TimeoutError("no publish signal")
        blob = b"".join(wire.publish(f"bench/idle/{k}", wire.payload(0, k, size)) for k in range(n))
        got = bytearray(n)
        received = 0
        wrong = 0
        t1 = perf()
        t_last = t1
        pub.sendall(blob)
        # Messages that arrived before the publish (none expected) are in bufs.
        pending = [k for k in range(n) if bufs[k]]
        while received < n:
            ready = [(None, k) for k in pending]
            pending = []
            if not ready:
                events = sel.select(0.5)
                if not events and time.monotonic() > deadline:
                    out["stopped"] = "deadline while delivering"
                    break
                ready = [(key.fileobj, key.data) for key, _ in events]
            now = perf()
            for fileobj, k in ready:
                s = socks[k]
                buf = bufs[k]
                if fileobj is not None:
                    data = s.recv(RECV)  # type: ignore[union-attr]
                    if not data:
                        sel.unregister(s)
                        continue
                    buf += data
                packets, rest = wire.split(buf)
                for first, body, end in packets:
                    if first >> 4 != wire.PUBLISH:
                        continue
                    _t, _qos, _pid, p = wire.publish_fields(buf, first, body, end)
                    _pub, seq = _HEAD.unpack_from(buf, p)
                    if seq != k:
                        wrong += 1
                    elif not got[k]:
                        got[k] = 1
                        received += 1
                        t_last = now
                bufs[k] = buf[rest:]
        out.update(received=received, wrong_topic=wrong, deliver_s=t_last - t1, cpu=cpu_now() - c0)
        pub.sendall(wire.DISCONNECT_BYTES)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        sel.close()
        for s in socks:
            if s is not None:
                s.close()
        if pub is not None:
            pub.close()
    _put(q, "result", wid, out)


# ---- S7: retained messages on subscribe -----------------------------------------------------------

def _ping_barrier(s: socket.socket, deadline: float) -> None:
    """PINGREQ, then wait for PINGRESP: the broker has processed everything sent before it."""
    s.sendall(wire.PINGREQ_BYTES)
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no PINGRESP before the deadline")
        s.settimeout(min(left, 1.0))
        try:
            data = s.recv(RECV)
        except socket.timeout:
            continue
        if not data:
            raise wire.ProtocolError("broker closed the connection before PINGRESP")
        buf += data
        packets, rest = wire.split(buf)
        if any(first >> 4 == wire.PINGRESP for first, _b, _e in packets):
            return
        buf = buf[rest:]


def retained_worker(wid: Any, q: Any, port: int, n: int, size: int, deadline: float, shape: str = "S7",
                    n_filters: int = 0) -> None:
    """S7: n retained messages on bench/retained/<k>, then one subscriber on bench/retained/#. S7h: the
    same subscribed as `#`. S7f: n retained spread over n_filters branches (bench/retained/<j>/<k>),
    then one SUBSCRIBE carrying n_filters filters bench/retained/<j>/+ (each matching n / n_filters)."""
    out: Dict[str, Any] = {"expected": n}
    pub = sub = None
    try:
        if shape == "S7f":
            topics = [f"bench/retained/{k % n_filters}/{k // n_filters}" for k in range(n)]
            filters = [(f"bench/retained/{j}/+", 0) for j in range(n_filters)]
        else:
            topics = [f"bench/retained/{k}" for k in range(n)]
            filters = [("#" if shape == "S7h" else "bench/retained/#", 0)]
        blob = b"".join(encode_messages(0, "", n, 0, size, True, topics))
        pub, _, _ = connect_client(port, "bench-ret-pub")
        c0 = cpu_now()
        t0 = perf()
        pub.sendall(blob)
        _ping_barrier(pub, deadline)
        out["store_s"] = perf() - t0
        sub, left, _ = connect_client(port, "bench-ret-sub")
        st = SubState(sub, 1, n)
        t1 = perf()
        sub.sendall(wire.subscribe(1, filters))
        if left:
            consume(st, left, perf(), True)
        receive_all(st, sub, n, deadline, out, count_retained=True, ack=False)
        out.update(received=st.unique, dups=st.dups, with_retain_flag=st.retained,
                   subscribe_to_all_s=(st.last_t - t1) if st.unique else 0.0, cpu=cpu_now() - c0)
        # Untimed clean-up: clear the retained messages (a persistent broker would keep them).
        sub.sendall(wire.DISCONNECT_BYTES)
        pub.settimeout(None)
        pub.sendall(b"".join(wire.publish(t, b"", 0, 0, True) for t in topics))
        _ping_barrier(pub, deadline + 10)
        pub.sendall(wire.DISCONNECT_BYTES)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        for s in (pub, sub):
            if s is not None:
                s.close()
    _put(q, "result", wid, out)


# ---- S10: one huge PUBLISH --------------------------------------------------------------------------

def huge_worker(wid: Any, q: Any, port: int, size: int, deadline: float) -> None:
    """S10: one QoS 0 PUBLISH of `size` payload bytes, sent at full speed by one client to one subscriber
    (which reads it into a preallocated buffer). Reports the seconds from the first byte sent to the
    last received; the broker's peak RSS is the interesting figure (the run records it)."""
    out: Dict[str, Any] = {"expected": 1}
    pub = sub = None
    try:
        packet = wire.publish("bench/huge", b"\x5a" * size)
        sub, _, _ = connect_client(port, "bench-huge-sub")
        sub.sendall(wire.subscribe(1, [("bench/huge", 0)]))
        _ping_barrier(sub, deadline)  # the SUBACK came before the PINGRESP
        pub, _, _ = connect_client(port, "bench-huge-pub")
        sink = bytearray(len(packet))
        view = memoryview(sink)
        c0 = cpu_now()
        t0 = perf()
        import threading
        sender = threading.Thread(target=pub.sendall, args=(packet,))
        sender.start()
        got = 0
        sub.settimeout(max(1.0, deadline - time.monotonic()))
        while got < len(packet):
            n = sub.recv_into(view[got:], min(RECV, len(packet) - got))
            if not n:
                raise wire.ProtocolError("broker closed the subscriber's connection")
            got += n
        elapsed = perf() - t0
        sender.join(max(1.0, deadline - time.monotonic()))
        whole = sink == packet
        out.update(received=1 if whole else 0, dups=0, seconds=elapsed, cpu=cpu_now() - c0)
        for s in (sub, pub):
            s.sendall(wire.DISCONNECT_BYTES)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        for s in (pub, sub):
            if s is not None:
                s.close()
    _put(q, "result", wid, out)


# ---- S8: queued messages for an offline persistent session --------------------------------------

def queue_worker(wid: Any, q: Any, port: int, n: int, size: int, window: int, deadline: float,
                 hold_s: float = 0.0, cpu: Optional[int] = None, broker_pid: int = 0,
                 client: str = "raw") -> None:
    """S8 (and S9q): a persistent session subscribes and goes offline, n QoS 1 messages are queued for it,
    they stay queued hold_s more seconds (S9q: long enough for a 1 s autosave to happen), then it
    reconnects and drains them, acknowledging each. cpu: run on that CPU only (S8-apart, S8-shared).
    client "raw": the drain is this process's socket loop (one PUBACK write per read); "paho": paho-mqtt
    drains it (S8-paho). The voluntary context switches (sleeps) of the broker (broker_pid) and of this
    process during the drain (its DISCONNECT included) are reported as broker_sleeps and gen_sleeps."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    out: Dict[str, Any] = {"expected": n}
    cid = "bench-queue-sub"
    socks: List[socket.socket] = []
    try:
        # Wipe any session an earlier run left (a persistent broker keeps it across restarts).
        s, _, _ = connect_client(port, cid, clean=True)
        socks.append(s)
        s.sendall(wire.DISCONNECT_BYTES)
        wait_closed(s, deadline)
        s, left, _ = connect_client(port, cid, clean=False, expect_present=False)
        socks.append(s)
        subscribe_blocking(s, [("bench/queue/#", 1)], left)
        s.sendall(wire.DISCONNECT_BYTES)
        wait_closed(s, deadline)
        pub, left, _ = connect_client(port, "bench-queue-pub")
        socks.append(pub)
        packets = encode_messages(0, "bench/queue/x", n, 1, size)
        c0 = cpu_now()
        t0 = perf()
        res = run_window(pub, packets, 1, window, deadline, left)
        out.update(published=res["acked"], publish_s=perf() - t0)
        pub.settimeout(None)
        pub.sendall(wire.DISCONNECT_BYTES)
        wait_closed(pub, deadline)
        if hold_s > 0:
            time.sleep(max(0.0, min(hold_s, deadline - time.monotonic() - 1.0)))
        sleeps0 = (voluntary_switches(broker_pid), own_voluntary_switches())
        if client == "paho":
            out.update(_drain_paho(port, cid, n, deadline))
        else:
            out.update(_drain_raw(port, cid, n, deadline, socks))
        out.update(cpu=cpu_now() - c0, broker_sleeps=voluntary_switches(broker_pid) - sleeps0[0],
                   gen_sleeps=own_voluntary_switches() - sleeps0[1])
        # Untimed clean-up: end the persistent session.
        s, _, _ = connect_client(port, cid, clean=True)
        socks.append(s)
        s.sendall(wire.DISCONNECT_BYTES)
    except Exception:
        _fail(q, wid, out)
        return
    finally:
        out["rx_bytes"] = sum(rx_bytes(s) for s in socks)
        for s in socks:
            s.close()
    _put(q, "result", wid, out)


def voluntary_switches(pid: int) -> int:
    """Voluntary context switches so far of every thread of process pid (each is a sleep: the thread
    waited for something); 0 for pid 0 or a process that is gone."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task") if pid else []
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches:"):
                        total += int(line.split()[1])
                        break
        except (OSError, ValueError):
            pass  # the thread ended meanwhile
    return total


def own_voluntary_switches() -> int:
    """This process's voluntary context switches, all threads (paho's network thread included)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


def _drain_raw(port: int, cid: str, n: int, deadline: float, socks: List[socket.socket]) -> Dict[str, Any]:
    """S8's drain: reconnect the persistent session and acknowledge what each read brings in one write.
    Timed from just before the TCP connect to the n-th distinct message. Leaves the session disconnected."""
    t1 = perf()
    sub, left, present = connect_client(port, cid, clean=False)
    socks.append(sub)
    st = SubState(sub, 1, n)
    out: Dict[str, Any] = {"session_present": present}
    if left:
        acks = consume(st, left, perf())
        if acks:
            st.most_unacked = len(acks)
            sub.sendall(b"".join(acks))
    receive_all(st, sub, n, deadline, out)
    out.update(received=st.unique, dups=st.dups, reorders=st.reorders, most_unacked=st.most_unacked,
               drain_s=(st.last_t - t1) if st.unique else 0.0)
    sub.settimeout(None)
    sub.sendall(wire.DISCONNECT_BYTES)
    wait_closed(sub, deadline + 5)
    return out


def _drain_paho(port: int, cid: str, n: int, deadline: float) -> Dict[str, Any]:
    """S8-paho's drain: paho-mqtt (2.x) reconnects the persistent session with its network thread
    (loop_start) and acknowledges each message as its on_message returns, as an application would.
    Timed from just before connect() to the n-th distinct message."""
    import paho.mqtt.client as mqtt  # bench-only: see bench/requirements.txt

    seen = bytearray(n)
    st: Dict[str, Any] = {"received": 0, "dups": 0, "reorders": 0, "last": -1, "last_t": 0.0,
                          "session_present": 0, "refused": ""}
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        st["session_present"] = int(flags.session_present)
        if reason.is_failure:
            st["refused"] = str(reason)
            done.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        _pub, seq = _HEAD.unpack_from(msg.payload)
        if seen[seq]:
            st["dups"] += 1
        else:
            seen[seq] = 1
            st["received"] += 1
            if st["received"] == n:
                st["last_t"] = perf()
                done.set()
        if seq < st["last"]:
            st["reorders"] += 1
        st["last"] = seq

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
    c.on_connect = on_connect
    c.on_message = on_message
    t1 = perf()
    c.connect("127.0.0.1", port, keepalive=60)
    c.loop_start()
    try:
        finished = done.wait(max(0.0, deadline - time.monotonic()))
    finally:
        c.disconnect()
        c.loop_stop()
    out: Dict[str, Any] = {k: st[k] for k in ("received", "dups", "reorders", "session_present")}
    out["drain_s"] = st["last_t"] - t1 if st["last_t"] else 0.0
    if st["refused"]:
        out["error"] = f"paho's CONNECT was refused: {st['refused']}"
    elif not finished:
        out["stopped"] = "deadline"
    return out


# ---- calibration: a trivial sink instead of a broker ---------------------------------------------

def sink_worker(wid: Any, q: Any, stream_qos: int, stream_count: int, size: int, stream_subs: int,
                stop_evt: Any, deadline: float) -> None:
    """A stand-in for a broker that does (almost) nothing, to measure the generator's own ceiling.
    Roles by client id prefix: "pub..." gets a CONNACK and everything after it is discarded unparsed
    (it closes on a trailing DISCONNECT); "ack..." is parsed and acknowledged at once (PUBACK, PUBREC,
    PUBCOMP); "sub..." gets CONNACK, SUBACK, then `stream_count` pre-encoded PUBLISHes as fast as the
    socket takes them (acks from it are discarded); the streams start together once `stream_subs`
    subscribers have subscribed."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(256)
    lsock.setblocking(False)
    blob = memoryview(b"".join(encode_messages(0, "bench/sink", stream_count, stream_qos, size)))
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    conns: Dict[socket.socket, Dict[str, Any]] = {}
    waiting: List[socket.socket] = []
    _put(q, "ready", wid, {"port": lsock.getsockname()[1]})
    c0 = cpu_now()
    try:
        while not stop_evt.is_set() and time.monotonic() < deadline:
            for key, mask in sel.select(0.2):
                if key.data is None:
                    try:
                        c, _ = lsock.accept()
                    except BlockingIOError:
                        continue
                    c.setblocking(False)
                    conns[c] = {"role": None, "buf": b"", "pos": -1, "tail": b""}
                    sel.register(c, selectors.EVENT_READ, c)
                    continue
                c = key.data
                st = conns[c]
                if mask & selectors.EVENT_WRITE:
                    try:
                        st["pos"] += c.send(blob[st["pos"]:st["pos"] + 262144])
                    except (BlockingIOError, InterruptedError):
                        pass
                    except OSError:
                        st["pos"] = len(blob)
                    if st["pos"] >= len(blob):
                        sel.modify(c, selectors.EVENT_READ, c)
                if not mask & selectors.EVENT_READ:
                    continue
                try:
                    data = c.recv(RECV)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(c)
                    c.close()
                    del conns[c]
                    continue
                role = st["role"]
                if role == "pub":
                    tail = (st["tail"] + data[-2:])[-2:]
                    st["tail"] = tail
                    if tail == wire.DISCONNECT_BYTES:
                        sel.unregister(c)
                        c.close()
                        del conns[c]
                    continue
                if role == "sub" and st["pos"] >= 0:
                    continue  # acks from the streamed subscriber: discarded
                buf = st["buf"] + data
                packets, rest = wire.split(buf)
                st["buf"] = buf[rest:]
                reply: List[bytes] = []
                for first, body, end in packets:
                    t = first >> 4
                    if t == wire.CONNECT:
                        cid_len = (buf[body + 10] << 8) | buf[body + 11]
                        cid = bytes(buf[body + 12:body + 12 + cid_len]).decode()
                        st["role"] = role = cid[:3]
                        reply.append(b"\x20\x02\x00\x00")
                        if role == "pub":
                            rest_data = buf[end:]
                            st["buf"] = b""
                            st["tail"] = rest_data[-2:]
                            break
                    elif t == wire.SUBSCRIBE:
                        reply.append(b"\x90\x03" + buf[body:body + 2] + bytes((stream_qos,)))
                        waiting.append(c)
                        break
                    elif t == wire.PUBLISH:
                        qos = (first >> 1) & 3
                        if qos:
                            tl = (buf[body] << 8) | buf[body + 1]
                            pid = buf[body + 2 + tl:body + 4 + tl]
                            reply.append((b"\x40\x02" if qos == 1 else b"\x50\x02") + pid)
                    elif t == wire.PUBREL:
                        reply.append(b"\x70\x02" + buf[body:body + 2])
                    elif t == wire.DISCONNECT:
                        st["tail"] = wire.DISCONNECT_BYTES
                        break
                if reply:
                    c.setblocking(True)
                    c.sendall(b"".join(reply))
                    c.setblocking(False)
                if st["tail"] == wire.DISCONNECT_BYTES:
                    sel.unregister(c)
                    c.close()
                    del conns[c]
                if len(waiting) >= stream_subs:
                    for w in waiting:
                        if w in conns:
                            conns[w]["pos"] = 0
                            sel.modify(w, selectors.EVENT_READ | selectors.EVENT_WRITE, w)  # novm: int flags, not a union type
                    waiting.clear()
    finally:
        for c in conns:
            c.close()
        lsock.close()
        sel.close()
    _put(q, "result", wid, {"cpu": cpu_now() - c0})
