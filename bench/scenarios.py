"""The scenarios: which workers to start, in what order, and how to judge what they report.

Each scenario function takes a target (something with `.port` and `.rss_kib()`: a broker, or the
calibration sink), the sizes and a hard timeout, and returns an Outcome. The function owns its worker
processes and kills them in a `finally`; workers stop on their own a few seconds before the hard
timeout so that a slow or stuck broker still yields counts (received vs expected) instead of nothing.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import workers

CTX = mp.get_context("fork")
#: Workers stop this many seconds before the scenario's hard timeout, to report partial counts.
SOFT_MARGIN = 4.0


def _soft(timeout: float) -> float:
    """Seconds before the hard timeout at which workers stop on their own."""
    return min(SOFT_MARGIN, 0.25 * timeout)


@dataclass(frozen=True)
class Sizes:
    payload: int = 64
    s1_pubs: int = 8
    s1_per_pub: int = 25_000          # 200,000 messages in all
    #: S1-stuck: publishers flooding QoS 0 to one subscriber that reads and one that reads nothing, both
    #: brokers with max_queued_messages s1s_max_queued (Mosquitto's default).
    s1s_pubs: int = 4
    s1s_per_pub: int = 50_000
    s1s_max_queued: int = 1000
    s2_count: int = 50_000
    s3_count: int = 50_000
    window: int = 64
    #: S3b: the QoS 2 run again with a window equal to both brokers' max_inflight_messages (20), where
    #: Mosquitto 2.0.11 does not lose messages (at window 64 it acknowledges them all and drops some).
    s3b_window: int = 20
    #: S3w: S3 with both brokers' max_inflight_messages equal to the window (64) and this queue limit.
    s3w_max_queued: int = 1_000_000
    #: S2q: S2 again with both brokers allowed this many queued messages per client.
    s2q_max_queued: int = 100_000
    s4_subs: int = 100
    s4_procs: int = 2                 # subscriber processes sharing the 100 sockets
    s4_count: int = 20_000            # x 100 subscribers = 2,000,000 deliveries
    s5_rate: float = 2000.0
    s5_seconds: float = 10.0
    s6_conns: int = 2000
    s6_concurrency: int = 64
    #: S6-seq: S6's connections one at a time (the next once the last has its SUBACK): a fleet
    #: reconnecting after a power cut, device by device
    s6_seq_conns: int = 2000
    s7_topics: int = 10_000
    #: S7h and S7f: this many retained messages, replayed to a `#` subscriber (S7h) or to one SUBSCRIBE
    #: of s7f_filters wildcard filters, each matching s7f_topics / s7f_filters of them (S7f).
    s7f_topics: int = 20_000
    s7f_filters: int = 1_000
    #: S10: payload bytes of the one huge PUBLISH
    s10_bytes: int = 200 * 1024 * 1024
    s8_count: int = 10_000
    s8_max_queued: int = 20_000
    #: S9: QoS 1 messages through a persistent session with the subscriber online (the S2 shape) ...
    s9_count: int = 20_000
    #: ... and queued for it while it is offline, then drained (the S8 shape), after staying queued this
    #: many seconds (so that autosave_interval 1 saves the queue a few times; the S9q-as1 pair).
    s9_queue_count: int = 10_000
    s9_hold_s: float = 3.0
    #: ... and as a trickle, a sensor's pace: one QoS 1 message at a time at this rate, each acknowledged
    #: before the next, so every message is a loop turn (and a commit) of its own: the SD card's case.
    s9t_count: int = 200
    s9t_rate: float = 40.0
    #: B1: QoS 1 messages through each gateway's bridge; B2, B3: messages queued during the outage.
    b1_count: int = 10_000
    b2_count: int = 5_000
    #: B*: a gateway that sent nothing for this long has lost the rest (Mosquitto's bounded queue).
    bridge_quiet_s: float = 3.0
    #: SER-lines: lines written at once to the pseudo-terminal; SER-latency: lines one at a time;
    #: SER-S1: seconds of S1-shaped load while lines are written.
    ser_lines: int = 30_000
    ser_latency_n: int = 1_000
    ser_load_s: float = 4.0
    #: The B* and SER-* scenarios run at most this many rounds (each starts two brokers, or a broker
    #: and a script: seconds apiece), so that a full run stays near 10 minutes on 2 cores.
    bridge_rounds: int = 2
    #: ... but for B1 (one publish of b1_count, a few seconds with both brokers' starts): the median of
    #: three rounds rather than the mean of two, its rounds moving by 2x on a shared machine.
    b1_rounds: int = 3


FULL = Sizes()
QUICK = replace(FULL, s1_per_pub=10_000, s1s_per_pub=20_000, s2_count=20_000, s3_count=10_000, s4_count=2_000, s5_seconds=3.0,
                s7f_topics=5_000, s7f_filters=200, s10_bytes=50 * 1024 * 1024, s9_count=5_000, s9_queue_count=5_000, s9_hold_s=2.0,
                s9t_count=80, b1_count=5_000, b2_count=2_000, ser_lines=10_000, ser_latency_n=200, ser_load_s=3.0)


@dataclass
class Outcome:
    status: str = "OK"  # OK | LOSSY (QoS 0 lost some) | FAIL | TIMEOUT | ERROR | SKIP
    metrics: Dict[str, float] = field(default_factory=dict)
    detail: str = ""
    notes: List[str] = field(default_factory=list)
    gen_cpu: float = 0.0
    wall: float = 0.0
    raw: Dict[str, Any] = field(default_factory=dict)
    #: Set by hosted scenarios (Scenario.hosted), which start their own processes: the measured broker's
    #: CPU seconds over the scenario and peak RSS (KiB), for the table's broker columns.
    broker_cpu: Optional[float] = None
    hwm_kib: Optional[int] = None


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    better: str  # "higher" or "lower"
    fmt: str = "{:,.0f}"


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    metrics: Tuple[Metric, ...]
    run: Optional[Callable[..., Outcome]]
    #: None: the benchmark's default broker setup; a number: both brokers queue that many messages.
    max_queued: Optional[int] = None
    #: `--scenarios FAMILY` selects every scenario of a family (S9: all of S9-* and S9q-*).
    family: str = ""
    #: More configuration per broker kind ("{data}" = the broker's data directory), and how to name it.
    options: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    labels: Dict[str, str] = field(default_factory=dict)
    #: Measure the disk writes of the broker's life (/proc/PID/io), per 1,000 of disk_messages(sizes).
    disk_messages: Optional[Callable[["Sizes"], int]] = None
    #: Mosquitto runs the same configuration as this scenario: reuse its run of the same round.
    mq_same_as: Optional[str] = None
    #: S9 phase: "online", "queued" or "trickle".
    phase: str = ""
    #: Both brokers listen with TLS (bench/brokers.py tls_files) and the generator connects over it.
    tls: bool = False
    #: `run(kind, sizes, timeout)` starts and stops its own processes (a bridge's gateway and upstream, a
    #: serial port's pseudo-terminal and script) instead of getting one started broker; its Outcome
    #: carries the measured broker's CPU and peak RSS. bench/bridge.py and bench/serial.py.
    hosted: bool = False
    #: Run in at most this many of the rounds (0: every round).
    max_rounds: int = 0


class Pool:
    """Worker processes of one scenario plus their report queue. close() kills what is left."""

    def __init__(self) -> None:
        self.q = CTX.Queue()
        self.procs: Dict[Any, mp.process.BaseProcess] = {}
        self.msgs: Dict[str, Dict[Any, Dict[str, Any]]] = {}

    def spawn(self, wid: Any, fn: Callable[..., None], *args: Any) -> None:
        p = CTX.Process(target=fn, args=(wid, self.q) + args, daemon=True, name=f"bench-{wid}")
        p.start()
        self.procs[wid] = p

    def wait(self, kind: str, wids: List[Any], deadline: float) -> bool:
        """Wait until every worker in wids has sent `kind` (or, failing early, its "result").
        False at the deadline."""
        while True:
            missing = [w for w in wids if w not in self.msgs.get(kind, {}) and w not in self.msgs.get("result", {})]
            if not missing:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                k, wid, data = self.q.get(timeout=min(left, 0.5))
            except queue_mod.Empty:
                if kind != "result" and any(not self.procs[w].is_alive() for w in missing):
                    return False  # died without a word
                continue
            self.msgs.setdefault(k, {})[wid] = data

    def got(self, kind: str, wid: Any) -> Optional[Dict[str, Any]]:
        return self.msgs.get(kind, {}).get(wid)

    def results(self) -> Dict[Any, Dict[str, Any]]:
        return self.msgs.get("result", {})

    def errors(self) -> List[str]:
        return [f"{w}: {r['error']}" for w, r in self.results().items() if r.get("error")]

    def close(self) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.terminate()
        for p in self.procs.values():
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
                p.join(timeout=3)
        self.q.close()
        self.q.join_thread()


def _gen_cpu(pool: Pool) -> float:
    return sum(r.get("cpu", 0.0) for r in pool.results().values())


def _timeout_outcome(pool: Pool, what: str) -> Outcome:
    o = Outcome(status="TIMEOUT", detail=f"hard timeout while waiting for {what}")
    errs = pool.errors()
    if errs:
        o.status = "ERROR"
        o.detail = "; ".join(errs)[:400]
    return o


def _judge_counts(o: Outcome, received: int, expected: int, qos: int, dups: int = 0, reorders: int = 0,
                  stopped: str = "") -> None:
    """Loss at QoS 1/2, any reordering, or a duplicate at QoS 2 is a FAIL; loss at QoS 0 is LOSSY
    (allowed by the protocol, shown next to the number)."""
    o.raw.update(received=received, expected=expected, dups=dups, reorders=reorders)
    if received < expected and stopped.startswith("deadline"):
        o.status = "TIMEOUT"
        o.detail = f"received {received:,} of {expected:,} before the timeout"
        return
    problems = []
    if received < expected:
        problems.append(f"received {received:,} of {expected:,} ({expected - received:,} lost"
                        f"{', ' + stopped if stopped else ''})")
    if reorders:
        problems.append(f"{reorders:,} out of order")
    if dups and qos == 2:
        problems.append(f"{dups:,} duplicates at QoS 2")
    if dups and qos < 2:
        o.notes.append(f"{dups:,} duplicates")
    if not problems:
        return
    o.detail = "; ".join(problems)
    if received < expected and qos == 0 and not reorders and received > 0:
        o.status = "LOSSY"
    else:
        o.status = "FAIL"


# ---- throughput scenarios: S1 .. S4 ------------------------------------------------------------------

def _throughput(target: Any, sz: Sizes, timeout: float, *, tag: str, qos: int, n_pubs: int, per_pub: int,
                n_subs: int, sub_procs: int, topic_of: Callable[[int], str], sub_filter: str,
                window: int = 0, clean: bool = True, rate: float = 0.0, stuck: bool = False) -> Outcome:
    """stuck: one more QoS 0 subscriber on sub_filter that reads nothing until the publishers are done
    (workers.stuck_sub_worker); what it then gets is in the notes, not in the counts."""
    start_t = time.monotonic()
    hard = start_t + timeout
    soft = hard - _soft(timeout)
    pool = Pool()
    try:
        pubs_done = CTX.Event()
        start = CTX.Event()
        sub_ids = []
        per_proc = (n_subs + sub_procs - 1) // sub_procs
        for k in range(sub_procs):
            cids = [f"bench-{tag}-sub{j}" for j in range(k * per_proc, min(n_subs, (k + 1) * per_proc))]
            if not cids:
                continue
            wid = f"sub{k}"
            sub_ids.append(wid)
            pool.spawn(wid, workers.sub_worker, target.port, cids, sub_filter, qos, n_pubs, per_pub,
                       pubs_done, soft, 2.0, False, clean)
        if stuck:
            pool.spawn("stuck", workers.stuck_sub_worker, target.port, f"bench-{tag}-stuck", sub_filter, n_pubs,
                       per_pub, pubs_done, soft)
        if not pool.wait("ready", sub_ids + (["stuck"] if stuck else []), hard):
            return _timeout_outcome(pool, "subscribers to connect")
        if pool.errors():
            return Outcome(status="ERROR", detail="; ".join(pool.errors())[:400])
        pub_ids = []
        for k in range(n_pubs):
            wid = f"pub{k}"
            pub_ids.append(wid)
            pool.spawn(wid, workers.pub_worker, target.port, f"bench-{tag}-pub{k}", k, topic_of(k), per_pub, qos,
                       sz.payload, window, start, soft, False, None, rate)
        if not pool.wait("ready", pub_ids, hard):
            return _timeout_outcome(pool, "publishers to connect")
        if pool.errors():
            return Outcome(status="ERROR", detail="; ".join(pool.errors())[:400])
        start.set()
        ok = pool.wait("result", pub_ids, hard)
        pubs_done.set()
        ok = pool.wait("result", sub_ids + (["stuck"] if stuck else []), hard) and ok
        o = Outcome()
        o.gen_cpu = _gen_cpu(pool)
        o.wall = time.monotonic() - start_t
        if not ok:
            o2 = _timeout_outcome(pool, "results")
            o2.gen_cpu, o2.wall = o.gen_cpu, o.wall
            return o2
        res = pool.results()
        subs = [res[w] for w in sub_ids]
        pubs = [res[w] for w in pub_ids]
        received = sum(r.get("received", 0) for r in subs)
        expected = n_subs * n_pubs * per_pub
        sent = sum(r.get("sent", 0) for r in pubs)
        firsts = [r["first_t"] for r in subs if r.get("first_t")]
        lasts = [r["last_t"] for r in subs if r.get("last_t")]
        stale = sum(r.get("stale_retained", 0) for r in subs)
        o.raw.update(sent=sent, sub_cpu=sum(r.get("cpu", 0.0) for r in subs),
                     pub_cpu=sum(r.get("cpu", 0.0) for r in pubs),
                     rx_bytes=sum(r.get("rx_bytes", 0) for r in subs + pubs))
        if qos:
            o.raw["acked"] = sum(r.get("acked", 0) for r in pubs)
            bogus = sum(r.get("bogus_acks", 0) for r in pubs)
            if bogus:
                o.notes.append(f"{bogus} unexpected acks at publishers")
        o.notes.append(f"recv/sent {received:,}/{sent * n_subs:,}")
        if stuck:
            r = res.get("stuck", {})
            o.raw["stuck"] = r
            o.notes.append(f"the subscriber that read nothing got {r.get('received', 0):,} once it read "
                           f"({r.get('queued_in_kernel', 0) / 1024:,.0f} KiB of them waiting in its own socket)"
                           + (f", {r['reorders']:,} out of order" if r.get("reorders") else ""))
        if stale:
            o.notes.append(f"{stale:,} retained left-overs ignored")
        errs = pool.errors()
        stopped = ", ".join(sorted({r["stopped"] for r in subs if r.get("stopped")}))
        _judge_counts(o, received, expected, qos, sum(r.get("dups", 0) for r in subs),
                      sum(r.get("reorders", 0) for r in subs), stopped)
        if errs:
            o.status = "ERROR"
            o.detail = ("; ".join(errs) + ("; " + o.detail if o.detail else ""))[:400]
        if firsts and lasts and max(lasts) > min(firsts) and o.status in ("OK", "LOSSY"):
            o.metrics["rate"] = received / (max(lasts) - min(firsts))
        return o
    finally:
        pool.close()


def run_s1(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s1", qos=0, n_pubs=sz.s1_pubs, per_pub=sz.s1_per_pub,
                       n_subs=1, sub_procs=1, topic_of=lambda k: f"bench/s1/p{k}", sub_filter="bench/#")


def run_s1_stuck(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s1s", qos=0, n_pubs=sz.s1s_pubs, per_pub=sz.s1s_per_pub,
                       n_subs=1, sub_procs=1, topic_of=lambda k: f"bench/s1s/p{k}", sub_filter="bench/#",
                       stuck=True)


def run_s2(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s2", qos=1, n_pubs=1, per_pub=sz.s2_count, n_subs=1,
                       sub_procs=1, topic_of=lambda k: "bench/s2", sub_filter="bench/s2", window=sz.window)


def run_s3(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s3", qos=2, n_pubs=1, per_pub=sz.s3_count, n_subs=1,
                       sub_procs=1, topic_of=lambda k: "bench/s3", sub_filter="bench/s3", window=sz.window)


def run_s3b(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s3b", qos=2, n_pubs=1, per_pub=sz.s3_count, n_subs=1,
                       sub_procs=1, topic_of=lambda k: "bench/s3b", sub_filter="bench/s3b", window=sz.s3b_window)


def run_s4(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s4", qos=0, n_pubs=1, per_pub=sz.s4_count, n_subs=sz.s4_subs,
                       sub_procs=sz.s4_procs, topic_of=lambda k: "bench/s4", sub_filter="bench/s4")


# ---- S5 latency ---------------------------------------------------------------------------------

def run_s5(target: Any, sz: Sizes, timeout: float) -> Outcome:
    t0 = time.monotonic()
    hard = t0 + timeout
    soft = hard - _soft(timeout)
    count = int(sz.s5_rate * sz.s5_seconds)
    pool = Pool()
    try:
        pub_done, start = CTX.Event(), CTX.Event()
        pool.spawn("sub", workers.latency_sub_worker, target.port, count, pub_done, soft)
        if not pool.wait("ready", ["sub"], hard):
            return _timeout_outcome(pool, "the latency subscriber")
        pool.spawn("pub", workers.latency_pub_worker, target.port, sz.s5_rate, count, sz.payload, start, soft)
        if not pool.wait("ready", ["pub"], hard):
            return _timeout_outcome(pool, "the latency publisher")
        start.set()
        ok = pool.wait("result", ["pub"], hard)
        pub_done.set()
        if not (pool.wait("result", ["sub"], hard) and ok):
            return _timeout_outcome(pool, "the latency run")
        if pool.errors():
            return Outcome(status="ERROR", detail="; ".join(pool.errors())[:400], wall=time.monotonic() - t0)
        r = pool.got("result", "sub") or {}
        p = pool.got("result", "pub") or {}
        o = Outcome(gen_cpu=_gen_cpu(pool), wall=time.monotonic() - t0)
        o.raw.update(sub=r, pub=p)
        _judge_counts(o, r.get("received", 0), count, 0, r.get("dups", 0), r.get("reorders", 0),
                      r.get("stopped", ""))
        o.notes.append(f"recv/sent {r.get('received', 0):,}/{p.get('sent', 0):,}")
        if "max_at" in r:
            o.notes.append(f"max at message #{r['max_at']:,} of {count:,}; {r.get('over_1ms', 0):,} messages over 1 ms")
        o.notes.append(f"publisher behind schedule by >1 ms {p.get('late_over_1ms', 0)} times "
                       f"(max {p.get('late_max_ms', 0):.2f} ms)")
        if o.status in ("OK", "LOSSY") and "p50_ms" in r:
            o.metrics.update(p50=r["p50_ms"], p99=r["p99_ms"], max=r["max_ms"])
        return o
    finally:
        pool.close()


# ---- S6 idle connections --------------------------------------------------------------------------

def run_s6(target: Any, sz: Sizes, timeout: float, auth: str = "", one_at_a_time: bool = False) -> Outcome:
    t0 = time.monotonic()
    hard = t0 + timeout
    pool = Pool()
    conns, concurrency = (sz.s6_seq_conns, 1) if one_at_a_time else (sz.s6_conns, sz.s6_concurrency)
    try:
        go_connect, go_publish = CTX.Event(), CTX.Event()
        pool.spawn("idle", workers.idle_worker, target.port, conns, concurrency, sz.payload,
                   go_connect, go_publish, hard - _soft(timeout), auth)
        if not pool.wait("ready", ["idle"], hard):
            return _timeout_outcome(pool, "the idle-connection worker")
        time.sleep(0.2)
        rss_before = target.rss_kib()
        go_connect.set()
        if not pool.wait("connected", ["idle"], hard):
            return _timeout_outcome(pool, f"{conns} connections")
        time.sleep(0.2)
        rss_after = target.rss_kib()
        go_publish.set()
        if not pool.wait("result", ["idle"], hard):
            return _timeout_outcome(pool, "delivery to every idle connection")
        r = pool.got("result", "idle") or {}
        o = Outcome(gen_cpu=r.get("cpu", 0.0), wall=time.monotonic() - t0)
        o.raw.update(r, rss_before_kib=rss_before, rss_after_kib=rss_after)
        if r.get("error"):
            o.status = "ERROR"
            o.detail = r["error"]
            if "connected" in r:
                o.detail += f" (connected {r['connected']:,} of {conns:,})"
            return o
        problems = []
        if r.get("connected", 0) < conns:
            errs = f", {r['errors']} errors: {'; '.join(r.get('first_errors', []))}" if r.get("errors") else ""
            problems.append(f"connected {r.get('connected', 0):,} of {conns:,}{errs}")
        if r.get("received", 0) < r.get("connected", 0):
            problems.append(f"received {r.get('received', 0):,} of {r.get('connected', 0):,}")
        if r.get("wrong_topic"):
            problems.append(f"{r['wrong_topic']} messages on the wrong connection")
        o.notes.append(f"RSS {rss_before / 1024:.1f} -> {rss_after / 1024:.1f} MiB")
        if problems:
            o.status = "TIMEOUT" if r.get("stopped", "").startswith("deadline") else "FAIL"
            o.detail = "; ".join(problems) + (f" ({r['stopped']})" if r.get("stopped") else "")
            return o
        o.metrics.update(connect_s=r["connect_s"], rss_per_conn=(rss_after - rss_before) / conns,
                         deliver_ms=r["deliver_s"] * 1e3)
        return o
    finally:
        pool.close()


def run_s6_auth(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return run_s6(target, sz, timeout, "each")


def run_s6_auth1(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return run_s6(target, sz, timeout, "one")


def run_s6_seq(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return run_s6(target, sz, timeout, one_at_a_time=True)


_password_files: Dict[int, str] = {}


def s6_password_file(n: int) -> str:
    """A password file for S6-auth: the S6 users (workers.s6_credentials), each line `$7$` with 101
    iterations as mosquitto_passwd 2.0 writes by default (hashed here with hashlib: bench/ shares no code
    with edgebroker). World-readable in a directory of its own (Mosquitto started as root reads it as
    user mosquitto); removed when the benchmark exits."""
    path = _password_files.get(n)
    if path is None:
        import atexit
        import base64
        import hashlib
        import shutil
        import tempfile

        from .brokers import data_root

        directory = tempfile.mkdtemp(prefix="bench-passwd-", dir=data_root())
        os.chmod(directory, 0o755)
        atexit.register(shutil.rmtree, directory, True)
        lines = []
        for auth, ks in (("each", list(range(-1, n))), ("one", [0])):
            for k in ks:
                user, password = workers.s6_credentials(auth, k)  # type: ignore[misc]
                salt = os.urandom(12)
                digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
                lines.append(f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}")
        path = os.path.join(directory, "passwd")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(path, 0o644)
        _password_files[n] = path
    return path


# ---- S7 retained, S8 offline queue ---------------------------------------------------------------

def run_s7(target: Any, sz: Sizes, timeout: float, shape: str = "S7") -> Outcome:
    t0 = time.monotonic()
    pool = Pool()
    n = sz.s7f_topics if shape in ("S7f", "S7h") else sz.s7_topics
    try:
        pool.spawn("ret", workers.retained_worker, target.port, n, sz.payload, t0 + timeout - _soft(timeout),
                   shape, sz.s7f_filters)
        if not pool.wait("result", ["ret"], t0 + timeout):
            return _timeout_outcome(pool, "the retained run")
        r = pool.got("result", "ret") or {}
        o = Outcome(gen_cpu=r.get("cpu", 0.0), wall=time.monotonic() - t0)
        o.raw.update(r)
        if r.get("error"):
            return Outcome(status="ERROR", detail=r["error"] + f" (received {r.get('received', '?')})", wall=o.wall)
        _judge_counts(o, r.get("received", 0), n, 1, r.get("dups", 0), 0, r.get("stopped", ""))
        if o.status == "OK" and r.get("with_retain_flag", 0) < n:
            o.status = "FAIL"
            o.detail = f"only {r.get('with_retain_flag', 0):,} of {n:,} carried the retain flag"
        o.notes.append(f"storing {n:,} retained took {r.get('store_s', 0) * 1e3:,.0f} ms")
        if o.status == "OK":
            o.metrics["ms"] = r["subscribe_to_all_s"] * 1e3
        return o
    finally:
        pool.close()


def run_s7h(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return run_s7(target, sz, timeout, "S7h")


def run_s7f(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return run_s7(target, sz, timeout, "S7f")


def run_s10(target: Any, sz: Sizes, timeout: float) -> Outcome:
    t0 = time.monotonic()
    pool = Pool()
    try:
        pool.spawn("huge", workers.huge_worker, target.port, sz.s10_bytes, t0 + timeout - _soft(timeout))
        if not pool.wait("result", ["huge"], t0 + timeout):
            return _timeout_outcome(pool, "the huge publish")
        r = pool.got("result", "huge") or {}
        o = Outcome(gen_cpu=r.get("cpu", 0.0), wall=time.monotonic() - t0)
        o.raw.update(r)
        if r.get("error"):
            return Outcome(status="ERROR", detail=r["error"], wall=o.wall)
        _judge_counts(o, r.get("received", 0), 1, 1, 0, 0, "")
        if o.status == "OK":
            o.metrics["ms"] = r["seconds"] * 1e3
        return o
    finally:
        pool.close()


def run_s8(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _queued(target, sz, timeout, sz.s8_count)


def run_s8_apart(target: Any, sz: Sizes, timeout: float) -> Outcome:
    """S8 with the broker on one CPU and the generator on another: every hand-over wakes the other CPU."""
    return _queued(target, sz, timeout, sz.s8_count, cpus=(0, 1))


def run_s8_shared(target: Any, sz: Sizes, timeout: float) -> Outcome:
    """S8 with the broker and the generator on the same CPU: a hand-over is a context switch."""
    return _queued(target, sz, timeout, sz.s8_count, cpus=(0, 0))


def run_s8_paho(target: Any, sz: Sizes, timeout: float,
                cpus: Optional[Tuple[int, int]] = None) -> Outcome:
    """S8 drained by a real client, paho-mqtt, the way an application would: see workers._drain_paho."""
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        return Outcome(status="SKIP", detail="needs paho-mqtt (pip install -r bench/requirements.txt)")
    return _queued(target, sz, timeout, sz.s8_count, cpus=cpus, client="paho")


def run_s8_paho_shared(target: Any, sz: Sizes, timeout: float) -> Outcome:
    """S8-paho with the broker and paho on the same CPU: a single-core board (Pi Zero) draining to a
    client that runs on it too."""
    return run_s8_paho(target, sz, timeout, cpus=(0, 0))


def _queued(target: Any, sz: Sizes, timeout: float, count: int, hold_s: float = 0.0,
            cpus: Optional[Tuple[int, int]] = None, client: str = "raw") -> Outcome:
    """cpus: (broker's CPU, generator's CPU), indexes into the CPUs this process may use, for the whole
    run; None leaves placement to the scheduler. client: who drains the queue (workers.queue_worker)."""
    if cpus is not None:
        allowed = sorted(os.sched_getaffinity(0))
        if max(cpus) >= len(allowed):
            return Outcome(status="SKIP", detail=f"needs {max(cpus) + 1} CPUs")
        cpus = (allowed[cpus[0]], allowed[cpus[1]])
        target.pin(cpus[0])
    t0 = time.monotonic()
    pool = Pool()
    try:
        pool.spawn("queue", workers.queue_worker, target.port, count, sz.payload, sz.window,
                   t0 + timeout - _soft(timeout), hold_s, None if cpus is None else cpus[1],
                   target.proc.pid, client)
        if not pool.wait("result", ["queue"], t0 + timeout):
            return _timeout_outcome(pool, "the offline-queue run")
        r = pool.got("result", "queue") or {}
        o = Outcome(gen_cpu=r.get("cpu", 0.0), wall=time.monotonic() - t0)
        o.raw.update(r)
        if r.get("error"):
            return Outcome(status="ERROR", detail=r["error"] + f" (received {r.get('received', '?')})", wall=o.wall)
        _judge_counts(o, r.get("received", 0), count, 1, r.get("dups", 0), r.get("reorders", 0),
                      r.get("stopped", ""))
        if not r.get("session_present"):
            o.status = "FAIL"
            o.detail = ("CONNACK session present 0 on reconnect; " + o.detail).strip("; ")
        o.notes.append(f"publishing {count:,} QoS 1 took {r.get('publish_s', 0) * 1e3:,.0f} ms")
        if "most_unacked" in r:
            window = getattr(target, "options", {}).get("max_inflight_messages", 20)
            o.notes.append(f"most messages unacknowledged at once, seen by the client: {r['most_unacked']:,} "
                           f"(max_inflight_messages {window or 'unlimited'}"
                           f"{', window not kept' if window and r['most_unacked'] > window else ''})")
        o.notes.append(f"sleeps during the drain (voluntary context switches): broker "
                       f"{r.get('broker_sleeps', 0):,}, {'paho' if client == 'paho' else 'generator'} "
                       f"{r.get('gen_sleeps', 0):,}")
        if r.get("publish_s"):
            o.raw["publish_rate"] = count / r["publish_s"]
        if o.status == "OK":
            o.metrics["ms"] = r["drain_s"] * 1e3
        return o
    finally:
        pool.close()


# ---- S9 persistence cost ------------------------------------------------------------------------------
# The same loads as S2 (subscriber online) and S8 (subscriber offline, then drained), through a persistent
# session (clean session 0), with the brokers' persistence configured per scenario. The disk figures
# are not measured here but by the runner around the broker's whole life (bench/brokers.py: /proc/PID/io
# read after SIGTERM, in the zombie state), and added to the metrics by run.py.

def run_s9_online(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s9", qos=1, n_pubs=1, per_pub=sz.s9_count, n_subs=1,
                       sub_procs=1, topic_of=lambda k: "bench/s9", sub_filter="bench/s9", window=sz.window,
                       clean=False)


def run_s9_queued(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _queued(target, sz, timeout, sz.s9_queue_count, sz.s9_hold_s)


def run_s9_trickle(target: Any, sz: Sizes, timeout: float) -> Outcome:
    return _throughput(target, sz, timeout, tag="s9t", qos=1, n_pubs=1, per_pub=sz.s9t_count, n_subs=1,
                       sub_procs=1, topic_of=lambda k: "bench/s9t", sub_filter="bench/s9t", window=1,
                       clean=False, rate=sz.s9t_rate)


#: (id suffix, edgebroker options, its label, Mosquitto options, its label). "as1" (both saving every
#: second) only for the queued phase: the online phase ends in well under a second, before any autosave
#: (and in the trickle edgebroker's periodic saves are Mosquitto's, which the other rows show).
S9_CONFIGS = (
    ("sync", {"durability": "sync"}, "durability sync",
     {"persistence": True, "persistence_location": "{data}/"}, "persistence true, autosave_interval 1800 (default)"),
    ("crash", {"durability": "crash"}, "durability crash (default)",
     {"persistence": True, "persistence_location": "{data}/"}, "persistence true, autosave_interval 1800 (default)"),
    ("periodic", {"durability": "periodic"}, "durability periodic, autosave_interval 1800 (default)",
     {"persistence": True, "persistence_location": "{data}/"}, "persistence true, autosave_interval 1800 (default)"),
    ("as1", {"durability": "periodic", "autosave_interval": 1}, "durability periodic, autosave_interval 1",
     {"persistence": True, "persistence_location": "{data}/", "autosave_interval": 1},
     "persistence true, autosave_interval 1"),
    ("off", {"persistence": False}, "persistence false",
     {"persistence": False}, "persistence false (default)"),
)


def s9_scenarios(sz: Sizes) -> List[Scenario]:
    out = []
    disk = (Metric("disk_kib", "disk writes, KiB / 1,000 msgs", "lower", "{:,.1f}"),)
    for phase, prefix, run, n, metric, what in (
            ("online", "S9", run_s9_online, lambda z: z.s9_count, Metric("rate", "msg/s", "higher"),
             f"S2 through a persistent session: {sz.s9_count:,} QoS 1 msgs, subscriber online"),
            ("queued", "S9q", run_s9_queued, lambda z: z.s9_queue_count,
             Metric("ms", "CONNECT to last message, ms", "lower", "{:,.1f}"),
             f"S8: {sz.s9_queue_count:,} QoS 1 msgs queued for an offline persistent session, kept "
             f"{sz.s9_hold_s:g} s, then drained"),
            ("trickle", "S9t", run_s9_trickle, lambda z: z.s9t_count, Metric("rate", "msg/s", "higher"),
             f"a trickle through a persistent session: {sz.s9t_count:,} QoS 1 msgs at {sz.s9t_rate:g} msg/s, "
             f"one at a time, subscriber online")):
        for suffix, eb_opts, eb_label, mq_opts, mq_label in S9_CONFIGS:
            if suffix == "as1" and phase != "queued":
                continue
            eb = dict(eb_opts)
            if eb.get("persistence", True):
                eb["persistence_location"] = "{data}"
            # A trickle is paced: its rate says only that the pace was kept, its disk writes come first.
            metrics = disk + (metric,) if phase == "trickle" else (metric,) + disk
            out.append(Scenario(
                f"{prefix}-{suffix}", f"{what}; edgebroker {eb_label} vs Mosquitto {mq_label}",
                metrics, run, max_queued=sz.s8_max_queued if phase == "queued" else None,
                family="S9", options={"edgebroker": eb, "mosquitto": dict(mq_opts)},
                labels={"edgebroker": eb_label, "mosquitto": mq_label}, disk_messages=n,
                mq_same_as=f"{prefix}-sync" if suffix in ("crash", "periodic") else None, phase=phase))
    return out


# ---- the list ---------------------------------------------------------------------------------------

def scenarios(sz: Sizes) -> List[Scenario]:
    ms = "{:,.1f}"
    return [
        Scenario("S1", f"fan-in QoS 0: {sz.s1_pubs} publishers -> 1 subscriber on bench/#, "
                       f"{sz.s1_pubs * sz.s1_per_pub:,} msgs of {sz.payload} B",
                 (Metric("rate", "delivered msg/s", "higher"),), run_s1),
        Scenario("S1-stuck", f"S1's flood from {sz.s1s_pubs} publishers ({sz.s1s_pubs * sz.s1s_per_pub:,} msgs) "
                             f"to 1 subscriber that reads and 1 that reads nothing until they are done, both "
                             f"brokers with max_queued_messages {sz.s1s_max_queued:,}: what the broker keeps "
                             f"for a client that stops reading (see the peak RSS column)",
                 (Metric("rate", "delivered msg/s to the reading one", "higher"),), run_s1_stuck,
                 max_queued=sz.s1s_max_queued),
        Scenario("S2", f"QoS 1 end to end: 1 publisher (window {sz.window}) -> 1 subscriber, {sz.s2_count:,} msgs",
                 (Metric("rate", "msg/s", "higher"),), run_s2),
        Scenario("S1-tls", "S1 over TLS (both brokers with a TLS listener, ECDSA P-256 certificate; the "
                           "generator's clients verify it)",
                 (Metric("rate", "delivered msg/s", "higher"),), run_s1, family="TLS", tls=True),
        Scenario("S2-tls", "S2 over TLS", (Metric("rate", "msg/s", "higher"),), run_s2, family="TLS", tls=True),
        Scenario("S2q", f"S2 with max_queued_messages {sz.s2q_max_queued:,} in both brokers (edgebroker through "
                        f"bench/edge_launch.py; its CLI default is 1000)",
                 (Metric("rate", "msg/s", "higher"),), run_s2, max_queued=sz.s2q_max_queued),
        Scenario("S3", f"QoS 2 end to end: 1 publisher (window {sz.window}) -> 1 subscriber, {sz.s3_count:,} msgs",
                 (Metric("rate", "msg/s", "higher"),), run_s3),
        Scenario("S3b", f"QoS 2 end to end, publisher window {sz.s3b_window} (= max_inflight_messages), "
                        f"{sz.s3_count:,} msgs",
                 (Metric("rate", "msg/s", "higher"),), run_s3b),
        Scenario("S3w", f"QoS 2 end to end, publisher window {sz.window} answering each PUBREC at once, both "
                        f"brokers with max_inflight_messages {sz.window} and max_queued_messages "
                        f"{sz.s3w_max_queued:,}, {sz.s3_count:,} msgs",
                 (Metric("rate", "msg/s", "higher"),), run_s3, max_queued=sz.s3w_max_queued,
                 options={"edgebroker": {"max_inflight_messages": sz.window},
                          "mosquitto": {"max_inflight_messages": sz.window}}),
        Scenario("S4", f"fan-out QoS 0: 1 publisher -> {sz.s4_subs} subscribers, {sz.s4_count:,} msgs "
                       f"({sz.s4_count * sz.s4_subs:,} deliveries)",
                 (Metric("rate", "deliveries/s", "higher"),), run_s4),
        Scenario("S5", f"latency QoS 0 at {sz.s5_rate:,.0f} msg/s for {sz.s5_seconds:g} s",
                 (Metric("p50", "p50 ms", "lower", "{:,.3f}"), Metric("p99", "p99 ms", "lower", "{:,.3f}"),
                  Metric("max", "max ms", "lower", "{:,.2f}")), run_s5),
        Scenario("S6", f"{sz.s6_conns:,} idle connections, one subscription each",
                 (Metric("connect_s", "connect + subscribe all, s", "lower", "{:,.2f}"),
                  Metric("rss_per_conn", "RSS per connection, KiB", "lower", ms),
                  Metric("deliver_ms", "1 msg to each, all received, ms", "lower", ms)), run_s6, family="S6"),
        Scenario("S6-auth", f"S6 with a $7$ password file (101 iterations, mosquitto_passwd's default): each of "
                            f"the {sz.s6_conns:,} connections logs in as its own user",
                 (Metric("connect_s", "connect + subscribe all, s", "lower", "{:,.2f}"),
                  Metric("rss_per_conn", "RSS per connection, KiB", "lower", ms),
                  Metric("deliver_ms", "1 msg to each, all received, ms", "lower", ms)), run_s6_auth, family="S6",
                 options={k: {"password_file": s6_password_file(sz.s6_conns)} for k in ("edgebroker", "mosquitto")}),
        Scenario("S6-auth1", "S6-auth with every connection logging in as the same user (a fleet sharing one "
                             "account; edgebroker verifies a password once, Mosquitto 2.0 each time)",
                 (Metric("connect_s", "connect + subscribe all, s", "lower", "{:,.2f}"),
                  Metric("rss_per_conn", "RSS per connection, KiB", "lower", ms),
                  Metric("deliver_ms", "1 msg to each, all received, ms", "lower", ms)), run_s6_auth1, family="S6",
                 options={k: {"password_file": s6_password_file(sz.s6_conns)} for k in ("edgebroker", "mosquitto")}),
        Scenario("S6-seq", f"S6's handshake, {sz.s6_seq_conns:,} connections one at a time (each connects, sends "
                           "CONNECT + SUBSCRIBE and has its SUBACK before the next starts: a fleet reconnecting)",
                 (Metric("connect_s", "connect + subscribe all, one at a time, s", "lower", "{:,.2f}"),
                  Metric("rss_per_conn", "RSS per connection, KiB", "lower", ms)), run_s6_seq, family="S6"),
        Scenario("S7", f"{sz.s7_topics:,} retained messages to a new bench/retained/# subscriber",
                 (Metric("ms", "SUBSCRIBE to last retained, ms", "lower", ms),), run_s7),
        Scenario("S7h", f"{sz.s7f_topics:,} retained messages to a new `#` subscriber",
                 (Metric("ms", "SUBSCRIBE to last retained, ms", "lower", ms),), run_s7h),
        Scenario("S7f", f"{sz.s7f_topics:,} retained messages, one SUBSCRIBE of {sz.s7f_filters:,} wildcard "
                        f"filters matching {sz.s7f_topics // sz.s7f_filters:,} each",
                 (Metric("ms", "SUBSCRIBE to last retained, ms", "lower", ms),), run_s7f),
        Scenario("S10", f"one QoS 0 PUBLISH of {sz.s10_bytes >> 20} MiB to one subscriber (see the peak RSS column)",
                 (Metric("ms", "first byte sent to last received, ms", "lower", ms),), run_s10),
        Scenario("S8", f"{sz.s8_count:,} QoS 1 queued for an offline persistent session, drained on reconnect",
                 (Metric("ms", "CONNECT to last message, ms", "lower", ms),), run_s8, max_queued=sz.s8_max_queued,
                 family="S8"),
        Scenario("S8-apart", "S8 with the broker pinned to one CPU and the generator to another",
                 (Metric("ms", "CONNECT to last message, ms", "lower", ms),), run_s8_apart,
                 max_queued=sz.s8_max_queued, family="S8"),
        Scenario("S8-shared", "S8 with the broker and the generator pinned to the same CPU",
                 (Metric("ms", "CONNECT to last message, ms", "lower", ms),), run_s8_shared,
                 max_queued=sz.s8_max_queued, family="S8"),
        Scenario("S8-nolimit", "S8 with max_inflight_messages 0 (no limit) in both brokers: like for like, as "
                               "Mosquitto 2.0.11 does not keep its window of 20 in a drain (see the notes of S8)",
                 (Metric("ms", "CONNECT to last message, ms", "lower", ms),), run_s8, max_queued=sz.s8_max_queued,
                 family="S8", options={"edgebroker": {"max_inflight_messages": 0},
                                       "mosquitto": {"max_inflight_messages": 0}}),
        Scenario("S8-paho", "S8 drained by paho-mqtt 2.x (network thread, acknowledging each message as "
                            "its callback returns) instead of the generator",
                 (Metric("ms", "CONNECT to last message, ms", "lower", ms),), run_s8_paho,
                 max_queued=sz.s8_max_queued, family="S8"),
        Scenario("S8-paho-shared", "S8-paho with the broker and paho pinned to the same CPU",
                 (Metric("ms", "CONNECT to last message, ms", "lower", ms),), run_s8_paho_shared,
                 max_queued=sz.s8_max_queued, family="S8"),
    ] + s9_scenarios(sz) + _hosted_scenarios(sz)


def _hosted_scenarios(sz: Sizes) -> List[Scenario]:
    """Bridges (B1-B3) and serial ports (SER-*): their modules import this one, hence the late import."""
    from . import bridge, serial

    return bridge.scenarios(sz) + serial.scenarios(sz)


# ---- calibration: the generator against a sink that does nothing ----------------------------------

class SinkTarget:
    def __init__(self, port: int) -> None:
        self.port = port

    def rss_kib(self) -> int:
        return 0


def calibrate(sz: Sizes, timeout: float) -> List[Tuple[str, Outcome, float]]:
    """The generator's ceiling per side, each against a fresh sink process: returns
    (label, outcome, sink CPU seconds)."""
    runs: List[Tuple[str, Callable[[Any], Outcome], int, int, int]] = [
        (f"S1 publishers: {sz.s1_pubs} x {sz.s1_per_pub:,} QoS 0 -> discard sink, msg/s",
         lambda t: _pub_only(t, sz, timeout, 0, sz.s1_pubs, sz.s1_per_pub), 0, 0, 0),
        (f"S1 subscriber: sink streams {sz.s1_pubs * sz.s1_per_pub:,} QoS 0 -> 1 subscriber, msg/s",
         lambda t: _sub_only(t, sz, timeout, 0, 1, 1, sz.s1_pubs * sz.s1_per_pub), 0, sz.s1_pubs * sz.s1_per_pub, 1),
        (f"S2 publisher: {sz.s2_count:,} QoS 1, window {sz.window} -> acking sink, msg/s",
         lambda t: _pub_only(t, sz, timeout, 1, 1, sz.s2_count), 0, 0, 0),
        (f"S2 subscriber: sink streams {sz.s2_count:,} QoS 1 -> 1 subscriber that PUBACKs, msg/s",
         lambda t: _sub_only(t, sz, timeout, 1, 1, 1, sz.s2_count), 1, sz.s2_count, 1),
        (f"S3 publisher: {sz.s3_count:,} QoS 2, window {sz.window} -> acking sink, msg/s",
         lambda t: _pub_only(t, sz, timeout, 2, 1, sz.s3_count), 0, 0, 0),
        (f"S4 subscribers: sink streams {sz.s4_count:,} QoS 0 to each of {sz.s4_subs}, deliveries/s",
         lambda t: _sub_only(t, sz, timeout, 0, sz.s4_subs, sz.s4_procs, sz.s4_count), 0, sz.s4_count,
         sz.s4_subs),
    ]
    out = []
    for label, fn, stream_qos, stream_count, stream_subs in runs:
        pool = Pool()
        stop = CTX.Event()
        try:
            pool.spawn("sink", workers.sink_worker, stream_qos, stream_count, sz.payload, stream_subs, stop,
                       time.monotonic() + timeout + 10)
            if not pool.wait("ready", ["sink"], time.monotonic() + 10):
                out.append((label, Outcome(status="ERROR", detail="sink did not start"), 0.0))
                continue
            port = pool.got("ready", "sink")["port"]  # type: ignore[index]
            o = fn(SinkTarget(port))
            stop.set()
            pool.wait("result", ["sink"], time.monotonic() + 5)
            sink_cpu = (pool.got("result", "sink") or {}).get("cpu", 0.0)
            out.append((label, o, sink_cpu))
        finally:
            stop.set()
            pool.close()
    return out


def _pub_only(target: Any, sz: Sizes, timeout: float, qos: int, n_pubs: int, per_pub: int) -> Outcome:
    t0 = time.monotonic()
    pool = Pool()
    try:
        start = CTX.Event()
        ids = [f"pub{k}" for k in range(n_pubs)]
        for k, wid in enumerate(ids):
            prefix = "pub" if qos == 0 else "ack"
            pool.spawn(wid, workers.pub_worker, target.port, f"{prefix}-cal-{k}", k, f"bench/cal/{k}", per_pub, qos,
                       sz.payload, sz.window, start, t0 + timeout - _soft(timeout))
        if not pool.wait("ready", ids, t0 + timeout):
            return _timeout_outcome(pool, "publishers")
        start.set()
        if not pool.wait("result", ids, t0 + timeout):
            return _timeout_outcome(pool, "publishers")
        res = [pool.results()[w] for w in ids]
        o = Outcome(gen_cpu=_gen_cpu(pool), wall=time.monotonic() - t0)
        if pool.errors():
            return Outcome(status="ERROR", detail="; ".join(pool.errors())[:400])
        done = sum(r.get("acked", r.get("sent", 0)) for r in res)
        span = max(r["t_end"] for r in res) - min(r["t_start"] for r in res)
        o.metrics["rate"] = done / span
        o.notes.append(f"{done:,} of {n_pubs * per_pub:,} done")
        return o
    finally:
        pool.close()


def _sub_only(target: Any, sz: Sizes, timeout: float, qos: int, n_subs: int, procs: int, count: int) -> Outcome:
    t0 = time.monotonic()
    pool = Pool()
    try:
        done_evt = CTX.Event()
        done_evt.set()  # nothing to wait for beyond the stream itself
        ids = []
        per_proc = (n_subs + procs - 1) // procs
        for k in range(procs):
            cids = [f"sub-cal-{j}" for j in range(k * per_proc, min(n_subs, (k + 1) * per_proc))]
            wid = f"sub{k}"
            ids.append(wid)
            pool.spawn(wid, workers.sub_worker, target.port, cids, "bench/sink", qos, 1, count, done_evt,
                       t0 + timeout - _soft(timeout))
        if not pool.wait("result", ids, t0 + timeout):
            return _timeout_outcome(pool, "subscribers")
        res = [pool.results()[w] for w in ids]
        o = Outcome(gen_cpu=_gen_cpu(pool), wall=time.monotonic() - t0)
        if pool.errors():
            return Outcome(status="ERROR", detail="; ".join(pool.errors())[:400])
        received = sum(r["received"] for r in res)
        span = max(r["last_t"] for r in res) - min(r["first_t"] for r in res)
        o.metrics["rate"] = received / span if span > 0 else 0.0
        o.notes.append(f"{received:,} of {n_subs * count:,} received")
        return o
    finally:
        pool.close()
