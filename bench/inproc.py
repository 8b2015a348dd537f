"""The broker core's cost per message, in process: no sockets, no loop, no Mosquitto; for A/B comparisons
of changes to the hot path on a machine whose wall-clock figures are noisy.

    .venv/bin/python -m bench.inproc                       # CPU microseconds per message, best of 3
    .venv/bin/python -m bench.inproc --callgrind           # instructions per message (valgrind)
    .venv/bin/python -m bench.inproc --callgrind --tree /path/to/other/checkout    # another version

Each case drives `edgebroker.broker.Broker` directly with packets encoded by bench/wire.py, as the
loop would (data_received with what one read holds, then the output buffers taken away as a flush
would), and counts only the broker's calls:

- Q0: S1's shape, 8 publishers each sending reads of 500 QoS 0 PUBLISHes of 64 B to one QoS 0 subscriber.
- Q1: S2's shape, one publisher with 64 QoS 1 PUBLISHes per read, one QoS 1 subscriber acknowledging
  every read it gets (the broker's window of 20 queues the rest and refills on each PUBACK run).
- FAN: S4's shape, one publisher, 100 QoS 0 subscribers on the topic; cost per delivery.
- Q1P: Q1 through a persistent session into a real SQLite file (durability crash, no commit window):
  the store's share is Q1P minus Q1.
- DRAIN: S8's drain, a persistent session (no persistence) reconnecting to N queued QoS 1 messages and
  acknowledging each turn's in one read (window 20, as S8); DRAINU the same with max_inflight_messages 0
  (S8-nolimit); DRAIN1 one PUBACK per turn (paho's way). With `--callgrind` these count the queueing
  too: DRAINQ is the queueing alone, to subtract.
- BRIDGE: B1's shape, a bridging gateway's core without sockets: one publisher on the gateway with 64 QoS
  1 PUBLISHes per read (each read a turn with its commit), a bridge (`topic bench/# out 1`, its defaults:
  window 20, the queue in a real SQLite file) whose remote acknowledges each window in one read once per
  publisher read, so the queue grows and spills to disk as in B1 (intake faster than forwarding), then
  drains; per message the intake, the row's INSERT, its read back, the forward (encoded, handed to a
  socket that takes everything) and the acknowledgement with its delete.
- CONN: S6's connect phase, per connection: connection_made, one read holding CONNECT (clean session)
  and SUBSCRIBE to a topic of its own, as S6's idle worker sends them, the turn's end and the flush
  taken; the connections stay open (S6 holds 2,000). The loop's share (accept, the poller, the send,
  the log lines) is not in it.
- TURN: S5's shape through the real loop (`Server.serve_forever` on a thread, real sockets): one QoS 0
  message per loop turn, the next sent once the subscriber has the last, so the turn count does not
  depend on the machine; the loop thread's CPU (or instructions) per message. TURNX the same, with 4 MiB
  of memory written between messages: at S5's rate, on a machine with other work, every turn starts
  with cold caches, and that, not the instructions, is most of its cost (`--misses`).
- CONNL: S6's connect phase through the real loop (`serve_forever` on a thread, loopback sockets, its
  log lines written as the bench's broker writes them, to a file): per connection the accept, the
  poller's registration, the read holding CONNECT and SUBSCRIBE, the core's work (CONN), the flush and
  the two log lines; one handshake at a time, the connections kept open. Under `--callgrind` the loop
  thread is counted up to the last SUBACK (the process ends there, so closing them is not counted).
- LIFE: a connection's whole life through the loop, one at a time (S6-seq's handshake, then S6's idle
  client going away): CONNL's accept, handshake and log lines, then the client closes its socket and
  waits until the broker has closed its side (the close, its log line, the session's discard, the
  unsubscribe, the poller's unregistration); per connection, nothing left open.

`--callgrind` runs each case under `valgrind --tool=callgrind` twice, with N and 2N messages, and
divides the difference of the instruction counts by N: start-up, imports and set-up cancel out, and
the figure does not depend on what else the machine runs (within about 1%). Wall time is what the
main benchmark (`python -m bench`) measures, beside Mosquitto; this says only which of two versions of
the core does less work per message.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import wire  # noqa: E402

PUBLISH_READ = 500   # Q0: QoS 0 PUBLISHes per publisher read
WINDOW = 64          # Q1: the publisher's window
FAN_SUBSCRIBERS = 100


def _broker(persistent_dir: str = ""):  # type: ignore[no-untyped-def]
    from edgebroker.broker import Broker
    from edgebroker.config import Config
    if not persistent_dir:
        return _settled(Broker(Config(persistence=False), now=0.0))
    from edgebroker.store import SqliteStore
    options = {"persistence": True, "persistence_location": persistent_dir}
    # Config's fields (a dataclass in versions before edgebroker.record); commit_window_ms is not in
    # versions before the commit window.
    known = getattr(Config, "__record_fields__", None) or getattr(Config, "__dataclass_fields__", {})
    if "commit_window_ms" in known:
        options["commit_window_ms"] = 0
    config = Config(**options)
    store = SqliteStore(os.path.join(persistent_dir, "inproc.db"), config.durability, config.autosave_interval,
                        config.autosave_on_changes)
    return _settled(Broker(config, 0.0, None, store))


def _settled(made):  # type: ignore[no-untyped-def]
    """The garbage collector's settings a started broker runs with (`edgebroker.gcpolicy`, applied by
    the command line once the server is built), applied once `made` (a Broker or Server) is; versions
    without gcpolicy keep the interpreter's defaults."""
    try:
        from edgebroker.gcpolicy import settle
    except ImportError:
        return made
    settle()
    return made


def _client(broker, client_id: str, extra: bytes = b"", clean: bool = True):  # type: ignore[no-untyped-def]
    conn = broker.connection_made("127.0.0.1:1", 1883, 0.0)
    broker.data_received(conn, wire.connect(client_id, clean) + extra, 0.0)
    broker.end_turn(0.0)
    _taken(conn)
    return conn


def _taken(conn) -> None:  # type: ignore[no-untyped-def]
    """What a flush does to the connection's buffer."""
    conn.out.clear()
    conn.out_size = 0


def case_q0(n: int) -> float:
    broker = _broker()
    sub = _client(broker, "sub", wire.subscribe(1, [("bench/#", 0)]))
    pubs = [_client(broker, f"pub{i}") for i in range(8)]
    reads = [b"".join(wire.publish(f"bench/p{i}", b"x" * 64) for _ in range(PUBLISH_READ)) for i in range(8)]
    spent = 0.0
    done = 0
    clock = time.process_time
    while done < n:
        for pub, data in zip(pubs, reads):
            t0 = clock()
            broker.data_received(pub, data, 1.0)
            spent += clock() - t0
            _taken(sub)
            done += PUBLISH_READ
    return spent / done


_PUBLISHES: List[bytes] = []
_PUBACKS: List[bytes] = []


def _qos1_packets() -> None:
    if not _PUBLISHES:
        _PUBLISHES.extend([b""] + [wire.publish("bench/q", b"x" * 64, 1, pid) for pid in range(1, 65536)])
        _PUBACKS.extend([b""] + [wire.puback(pid) for pid in range(1, 65536)])


def _qos1(n: int, persistent_dir: str = "") -> float:
    _qos1_packets()
    broker = _broker(persistent_dir)
    sub = _client(broker, "sub", wire.subscribe(1, [("bench/#", 1)]), clean=not persistent_dir)
    pub = _client(broker, "pub")
    session = sub.session  # its inflight dict: looked up each time (a shared empty one until the first)
    spent = 0.0
    done = 0
    pid = 0
    clock = time.process_time
    while done < n:
        if pid + WINDOW > 65535:
            pid = 0
        data = b"".join(_PUBLISHES[pid + 1:pid + 1 + WINDOW])
        pid += WINDOW
        t0 = clock()
        broker.data_received(pub, data, 1.0)
        broker.end_turn(1.0)
        spent += clock() - t0
        _taken(pub)
        while session.inflight:
            acks = b"".join([_PUBACKS[i] for i in session.inflight])
            _taken(sub)
            t0 = clock()
            broker.data_received(sub, acks, 1.0)
            broker.end_turn(1.0)
            spent += clock() - t0
        _taken(sub)
        done += WINDOW
    return spent / done


def case_q1(n: int) -> float:
    return _qos1(n)


def case_q1p(n: int) -> float:
    directory = tempfile.mkdtemp(prefix="edgebroker-inproc-")
    try:
        return _qos1(n, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def case_fan(n: int) -> float:
    broker = _broker()
    subs = [_client(broker, f"sub{i}", wire.subscribe(1, [("bench/t", 0)])) for i in range(FAN_SUBSCRIBERS)]
    pub = _client(broker, "pub")
    data = b"".join(wire.publish("bench/t", b"x" * 64) for _ in range(50))
    spent = 0.0
    done = 0
    clock = time.process_time
    while done < n:
        t0 = clock()
        broker.data_received(pub, data, 1.0)
        spent += clock() - t0
        for sub in subs:
            _taken(sub)
        done += 50 * FAN_SUBSCRIBERS
    return spent / done


def _drain(n: int, window: int = 20, one: bool = False, drain: bool = True) -> float:
    from edgebroker.broker import Broker
    from edgebroker.config import Config
    _qos1_packets()
    broker = _settled(Broker(Config(persistence=False, max_queued_messages=n + 1000, max_inflight_messages=window),
                             0.0))
    sub = _client(broker, "sub", wire.subscribe(1, [("bench/#", 1)]), clean=False)
    broker.connection_lost(sub, 0.0)
    pub = _client(broker, "pub")
    for i in range(0, n, WINDOW):
        broker.data_received(pub, b"".join(_PUBLISHES[1 + i % 65000:1 + i % 65000 + min(WINDOW, n - i)]), 0.5)
        broker.end_turn(0.5)
        _taken(pub)
    if not drain:
        return 0.0
    clock = time.process_time
    t0 = clock()
    conn = broker.connection_made("127.0.0.1:2", 1883, 1.0)
    broker.data_received(conn, wire.connect("sub", False), 1.0)
    broker.end_turn(1.0)
    spent = clock() - t0
    session = conn.session
    while True:
        _taken(conn)
        if conn.refill_held:
            broker.output_drained(conn)
        inflight = session.inflight
        if not inflight and not session.queue:
            break
        acks = _PUBACKS[next(iter(inflight))] if one else b"".join([_PUBACKS[i] for i in inflight])
        t0 = clock()
        broker.data_received(conn, acks, 1.0)
        broker.end_turn(1.0)
        spent += clock() - t0
    return spent / n


def case_conn(n: int) -> float:
    broker = _broker()
    reads = [wire.connect(f"bench-idle-{k}", True, 0) + wire.subscribe(1, [(f"bench/idle/{k}", 0)])
             for k in range(n)]
    peers = [f"127.0.0.1:{10000 + k % 50000}" for k in range(n)]
    dirty = broker.dirty
    clock = time.process_time
    t0 = clock()
    for peer, data in zip(peers, reads):
        conn = broker.connection_made(peer, 1883, 1.0)
        broker.data_received(conn, data, 1.0)
        broker.end_turn(1.0)
        _taken(conn)
        dirty.clear()
    return (clock() - t0) / n


#: TURNX: bytes of memory the driver writes between two messages, one byte per 64-byte line: twice the
#: 2 MiB L2 cache of this machine's cores (and of callgrind's simulated last level, see --misses)
EVICT_BYTES = 4 << 20


def _loop_thread(server: Any, daemon: bool = False) -> Tuple[Any, Callable[[], int]]:
    """`server.serve_forever` on a thread of its own, started; returns the thread and a function that
    reads its CPU time in ns (Linux's schedstat)."""
    import threading
    loop_tid: List[int] = []

    def serve() -> None:
        loop_tid.append(threading.get_native_id())
        server.serve_forever()

    def cpu_ns() -> int:
        with open(f"/proc/self/task/{loop_tid[0]}/schedstat") as f:
            return int(f.read().split()[0])

    loop = threading.Thread(target=serve, daemon=daemon)
    loop.start()
    while not loop_tid:
        time.sleep(0.001)
    return loop, cpu_ns


def _loop_turns(n: int, evict: bool) -> float:
    """TURN, TURNX: S5's shape through the real loop. `Server.serve_forever` runs on a thread of its
    own with its defaults (persistence on, into a temporary directory), one publisher and one QoS 0
    subscriber on loopback sockets; the publisher sends its next message only once the subscriber has
    the last one, so every message is a loop turn of its own (epoll, recv, parse, route, send) whatever
    the machine does meanwhile ($SYS off, keepalive checks an hour apart). With `evict` the driver first writes EVICT_BYTES of memory, so each
    turn starts with the caches another program would have left it, as at S5's 2,000 msg/s on a
    machine with other work. Returns the loop thread's CPU time per message (Linux's schedstat)."""
    import socket
    from edgebroker import broker as core
    from edgebroker.config import Config
    from edgebroker.server import Server
    directory = tempfile.mkdtemp(prefix="edgebroker-inproc-")
    # Only the messages' turns: no $SYS, and the keepalive check (every 0.5 s) out of the way. Under
    # valgrind a message takes milliseconds, so those would run every few messages, not once per
    # 1,000 (keepalive) or 20,000 ($SYS) as in S5.
    core.CHECK_INTERVAL = 3600.0
    server = _settled(Server(Config(persistence_location=directory, sys_interval=0), default_port=0))
    loop, cpu_ns = _loop_thread(server)
    socks: List[socket.socket] = []
    try:
        port = server.ports[0]

        def client(client_id: str, extra: bytes, answers: int) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
            s.sendall(wire.connect(client_id) + extra)
            got = b""
            while len(wire.split(got)[0]) < answers:  # CONNACK (and SUBACK)
                got += s.recv(4096)
            return s

        sub = client("turn-sub", wire.subscribe(1, [("bench/lat", 0)]), 2)
        pub = client("turn-pub", b"", 1)
        sub.settimeout(10.0)  # a message the loop did not deliver fails the run, not hang it
        message = wire.publish("bench/lat", b"x" * 64)
        size = len(message)
        view = memoryview(bytearray(size))
        memory = bytearray(EVICT_BYTES)
        lines = bytes(EVICT_BYTES // 64)
        t0 = cpu_ns()
        for _ in range(n):
            if evict:
                memory[::64] = lines
            pub.sendall(message)
            got = 0
            while got < size:
                got += sub.recv_into(view[got:], size - got)
        return (cpu_ns() - t0) / 1e9 / n
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        loop.join()
        shutil.rmtree(directory, ignore_errors=True)


#: What CONNL's and LIFE's handshakes get back: CONNACK accepted, SUBACK QoS 0.
_HANDSHAKE_ANSWER = b"\x20\x02\x00\x00\x90\x03\x00\x01\x00"


def _handshake(s: Any, data: bytes) -> None:
    """Send a CONNECT + SUBSCRIBE and read back exactly its CONNACK and SUBACK (CONNL, LIFE)."""
    s.sendall(data)
    got = b""
    while len(got) < len(_HANDSHAKE_ANSWER):
        more = s.recv(64)
        if not more:
            raise RuntimeError("the broker closed a connection during its handshake")
        got += more
    if got != _HANDSHAKE_ANSWER:
        raise RuntimeError(f"unexpected answer {got!r}")


def case_connl(n: int) -> float:
    """CONNL: see the module's docstring. Returns the loop thread's CPU time per connection."""
    import resource
    import socket
    from edgebroker import broker as core
    from edgebroker import log as L
    from edgebroker.config import Config
    from edgebroker.server import Server
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * n + 100  # both ends of every connection are in this process
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    directory = tempfile.mkdtemp(prefix="edgebroker-inproc-")
    core.CHECK_INTERVAL = 3600.0  # as TURN: only the connections' turns
    logfile = open(os.path.join(directory, "broker.log"), "w")
    server = _settled(Server(Config(persistence_location=directory, sys_interval=0), L.Logger(stream=logfile),
                             default_port=0))
    loop, cpu_ns = _loop_thread(server, daemon=True)
    socks: List[socket.socket] = []
    try:
        address = ("127.0.0.1", server.ports[0])
        reads = [wire.connect(f"bench-idle-{k}", True, 0) + wire.subscribe(1, [(f"bench/idle/{k}", 0)])
                 for k in range(n)]
        t0 = cpu_ns()
        for data in reads:
            s = socket.create_connection(address)
            socks.append(s)
            _handshake(s, data)
        spent = (cpu_ns() - t0) / 1e9 / n
        if _EXIT_AFTER_CASE:  # under callgrind: the closing of the connections is not counted
            shutil.rmtree(directory, ignore_errors=True)
            os._exit(0)
        return spent
    finally:
        for s in socks:
            s.close()
        server.shutdown()
        loop.join()
        logfile.close()
        shutil.rmtree(directory, ignore_errors=True)


def case_life(n: int) -> float:
    """LIFE: see the module's docstring. Returns the loop thread's CPU time per connection."""
    import socket
    from edgebroker import broker as core
    from edgebroker import log as L
    from edgebroker.config import Config
    from edgebroker.server import Server
    directory = tempfile.mkdtemp(prefix="edgebroker-inproc-")
    core.CHECK_INTERVAL = 3600.0  # as TURN: only the connections' turns
    logfile = open(os.path.join(directory, "broker.log"), "w")
    server = _settled(Server(Config(persistence_location=directory, sys_interval=0), L.Logger(stream=logfile),
                             default_port=0))
    loop, cpu_ns = _loop_thread(server, daemon=True)
    try:
        address = ("127.0.0.1", server.ports[0])
        reads = [wire.connect(f"bench-idle-{k}", True, 0) + wire.subscribe(1, [(f"bench/idle/{k}", 0)])
                 for k in range(n)]
        t0 = cpu_ns()
        for data in reads:
            s = socket.create_connection(address)
            try:
                _handshake(s, data)
                s.shutdown(socket.SHUT_WR)  # the client goes away ...
                if s.recv(64):  # ... and the broker closes its side
                    raise RuntimeError("the broker sent more after the SUBACK")
            finally:
                s.close()
        spent = (cpu_ns() - t0) / 1e9 / n
        if server.broker.connections:
            raise RuntimeError(f"{len(server.broker.connections)} connections left open")
        if _EXIT_AFTER_CASE:
            shutil.rmtree(directory, ignore_errors=True)
            os._exit(0)
        return spent
    finally:
        server.shutdown()
        loop.join()
        logfile.close()
        shutil.rmtree(directory, ignore_errors=True)


#: --once (a run under callgrind): a case that would count its own clean-up may end the process instead
_EXIT_AFTER_CASE = False

class _TakingSocket:
    """A connected socket for the bridge of case_bridge: send() takes everything, recv() returns what the
    case put in `inbound` (the remote's acknowledgements)."""

    def __init__(self) -> None:
        self.inbound = b""

    def send(self, data: bytes) -> int:
        return len(data)

    def recv(self, size: int) -> bytes:
        data, self.inbound = self.inbound, b""
        return data

    def fileno(self) -> int:
        return -1


class _Host:
    """What a Bridge asks of the server: the core, the log, and the loop's registrations (ignored)."""

    def __init__(self, broker: Any, config: Any) -> None:
        self.broker = broker
        self.config = config
        self.log = lambda level, text: None

    def _ignore(self, *args: Any) -> None:
        pass

    add_reader = add_writer = remove_reader = remove_writer = add_timer = add_wake_handler = _ignore
    add_service = wake = _ignore


def case_bridge(n: int) -> float:
    from edgebroker import bridge as bridge_module
    from edgebroker.broker import Broker
    from edgebroker.configfile import load_config
    from edgebroker.store import SqliteStore
    _qos1_packets()
    directory = tempfile.mkdtemp(prefix="edgebroker-inproc-")
    try:
        conf = os.path.join(directory, "gateway.conf")
        with open(conf, "w") as f:
            f.write(f"persistence true\npersistence_location {directory}/\nconnection cloud\n"
                    "address 127.0.0.1:1883\ntopic bench/# out 1\nnotifications false\n")
        config = load_config(conf).config
        store = SqliteStore(os.path.join(directory, "inproc.db"), config.durability, config.autosave_interval,
                            config.autosave_on_changes, commit_window=0.0)
        broker = _settled(Broker(config, 0.0, None, store))
        bridge = bridge_module.start_bridges(_Host(broker, config), 0.0)[0]
        sock = _TakingSocket()
        bridge._sock = sock  # connected: the CONNECT out, the CONNACK in, as the loop would
        bridge.state = bridge_module._MQTT
        bridge.session.connect(0.0)
        bridge._flush(0.0)
        sock.inbound = b"\x20\x02\x00\x00"
        bridge._on_readable(0.0)
        pub = _client(broker, "pub")
        session = bridge.session
        spent = 0.0
        sent = pid = 0
        now = 1.0
        clock = time.process_time
        while sent < n or bridge.count:
            t0 = clock()
            if sent < n:
                if pid + WINDOW > 65535:
                    pid = 0
                broker.data_received(pub, b"".join(_PUBLISHES[pid + 1:pid + 1 + WINDOW]), now)
                pid += WINDOW
                sent += WINDOW
            bridge.timer(now)  # the loop runs timers before the turn's end
            broker.end_turn(now)
            _taken(pub)
            if session.inflight:  # the remote acknowledges the window in one read: the next turn
                now += 0.0001
                sock.inbound = b"".join([_PUBACKS[i] for i in session.inflight])
                bridge._on_readable(now)
                bridge.timer(now)
                broker.end_turn(now)
            spent += clock() - t0
            now += 0.0001
        store.commit(now, force=True)
        return spent / sent
    finally:
        shutil.rmtree(directory, ignore_errors=True)


CASES: Dict[str, Callable[[int], float]] = {
    "Q0": case_q0, "Q1": case_q1, "FAN": case_fan, "Q1P": case_q1p,
    "DRAIN": _drain, "DRAINU": lambda n: _drain(n, 0), "DRAIN1": lambda n: _drain(n, one=True),
    "DRAINQ": lambda n: _drain(n, drain=False), "CONN": case_conn,
    "TURN": lambda n: _loop_turns(n, False), "TURNX": lambda n: _loop_turns(n, True), "CONNL": case_connl,
    "LIFE": case_life, "BRIDGE": case_bridge}
#: cases that run the loop on a thread of its own: under callgrind only that thread is counted
LOOP_CASES = ("TURN", "TURNX", "CONNL", "LIFE")
#: messages (deliveries for FAN, connections for CONN) per timed run; callgrind runs are a tenth of these
SIZES = {"Q0": 200_000, "Q1": 50_000, "FAN": 500_000, "Q1P": 20_000, "DRAIN": 20_000, "DRAINU": 20_000,
         "DRAIN1": 10_000, "DRAINQ": 20_000, "CONN": 20_000, "TURN": 20_000, "TURNX": 3_000,
         "CONNL": 2_000, "LIFE": 2_000, "BRIDGE": 20_000}


_UNIT = {"CONN": "connection", "CONNL": "connection", "LIFE": "connection"}


#: --misses: callgrind's simulated caches, this machine's per core (L1d 48 KiB, L1i 32 KiB, L2 2 MiB as
#: the "last level"): a miss there is an access the L2 did not hold
CACHE_SIM = ["--cache-sim=yes", "--D1=49152,12,64", "--I1=32768,8,64", "--LL=2097152,16,64"]


def _instructions(case: str, n: int, tree: str, misses: bool = False) -> Dict[str, int]:
    """Callgrind's event totals (Ir, and with `misses` the cache events) of one run of a case: the
    whole process, or for LOOP_CASES the loop's thread alone (the second thread)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = tempfile.mkdtemp(prefix="edgebroker-callgrind-")
    try:
        out = subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                              f"--callgrind-out-file={out_dir}/cg"] + (CACHE_SIM if misses else []) +
                             [sys.executable, "-m", "bench.inproc", "--tree", tree, "--once", case, str(n)],
                             capture_output=True, text=True, cwd=here, timeout=900)
        files = sorted(os.listdir(out_dir))
        if case in LOOP_CASES:
            files = [f for f in files if f.endswith("-02")]
        totals: Dict[str, int] = {}
        for name in files:
            with open(os.path.join(out_dir, name)) as f:
                text = f.read()
            names = re.search(r"^events:(.*)$", text, re.M)
            values = re.search(r"^totals:(.*)$", text, re.M)
            if names is None or values is None:
                continue
            for event, value in zip(names.group(1).split(), values.group(1).split()):
                totals[event] = totals.get(event, 0) + int(value)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    if out.returncode != 0 or "Ir" not in totals:
        raise RuntimeError(f"valgrind failed for {case}: {out.stderr[-2000:]}")
    return totals


def main(argv: List[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="Q0,Q1,FAN,Q1P", help="comma-separated: " + ", ".join(CASES))
    p.add_argument("--callgrind", action="store_true", help="instructions per message, under valgrind")
    p.add_argument("--misses", action="store_true",
                   help="with --callgrind: also L2 misses per message (simulated caches, CACHE_SIM)")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the message counts")
    p.add_argument("--tree", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   help="the checkout whose edgebroker/ is measured (default: this one)")
    p.add_argument("--once", nargs=2, metavar=("CASE", "N"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.tree = os.path.abspath(args.tree)
    sys.path.insert(0, args.tree)  # before anything imports edgebroker
    if args.once:
        global _EXIT_AFTER_CASE
        _EXIT_AFTER_CASE = True
        CASES[args.once[0]](int(args.once[1]))
        return 0
    import edgebroker
    print(f"edgebroker {edgebroker.__version__} from {os.path.dirname(edgebroker.__file__)}")
    for case in args.cases.split(","):
        n = max(100, int(SIZES[case] * args.scale))
        if args.callgrind:
            n //= 10
            a = _instructions(case, n, args.tree, args.misses)
            b = _instructions(case, 2 * n, args.tree, args.misses)
            line = f"{case:4} {(b['Ir'] - a['Ir']) / n:10,.0f} instructions per {_UNIT.get(case, 'message')}"
            if args.misses:
                l2 = ("ILmr", "DLmr", "DLmw")
                line += f", {sum(b[e] - a[e] for e in l2) / n:7,.0f} L2 misses (" + ", ".join(
                    f"{e} {(b[e] - a[e]) / n:,.0f}" for e in l2) + ")"
            print(line)
        else:
            CASES[case](n // 10)  # warm-up
            gc.disable()
            best = min(CASES[case](n) for _ in range(3))
            gc.enable()
            print(f"{case:4} {best * 1e6:10.3f} CPU microseconds per {_UNIT.get(case, 'message')}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
