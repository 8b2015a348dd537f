"""What load adds to edgebroker's resident memory: its VmRSS once started and its peak (VmHWM) after a
scenario's load, edgebroker alone, for A/B comparisons of a change to what a message holds on its way
(#19, the QoS 1/2 rows). The main benchmark has the peak beside Mosquitto; this one splits it.

    .venv/bin/python -m bench.growth --scenarios S2,S2q,S3w,S9-crash      # 2 rounds each
    .venv/bin/python -m bench.growth --scenarios S2q --detail             # and where it went
    .venv/bin/python -m bench.growth --tree /path/to/other/checkout       # another version
    .venv/bin/python -m bench.growth --broker mosquitto                   # Mosquitto's own growth
    .venv/bin/python -m bench.growth --scenarios B1,B2,B3                 # a bridging gateway's

Each round starts a fresh broker exactly as the benchmark does (bench/brokers.py: its interpreter, the
scenario's generated configuration, the seeded database), reads VmRSS once it answers and has been idle
for 0.3 s (the start), runs the scenario's load (bench/scenarios.py, full sizes or with `--quick` the
benchmark's quick ones), and reads VmHWM (the peak) before stopping it. Printed per round: start, peak, and the growth in KiB.

With `--detail` the broker runs under this module's wrapper (this file run with `--wrap`, then the
broker's own arguments), which on SIGUSR2 writes to a report file: VmRSS split into anonymous and
file-backed pages, the anonymous mappings' resident KiB (`[heap]`: glibc's main heap, where blocks
over 512 bytes live; the others: pymalloc's 1 MiB arenas and glibc's mmaps), pymalloc's pools in use
and free tuples of 20 items (`sys._debugmallocstats`, CPython 3.11's free list that never gives them
back, gh-121439), the modules imported since the start; and, sampled every 50 ms during the load, the
most each connection held at once: packets and bytes waiting in its output, packets stashed by flow
control, bytes in its parser, messages queued and in flight for its session, inbound QoS 2 ids. The
sampling and the report cost the broker CPU (its rates are not comparable) and a few KiB, and the
wrapper's own start (runpy) about 0.5 MiB: compare growth, not start, with `--detail`. Only 127.0.0.1; every broker started is stopped at the end.

The bridge rows (B1-B3, bench/bridge.py) start their own gateway and upstream: their start is the
gateway's VmRSS once started and idle for 0.2 s (in B1 with its bridge connected; in B3 the first of its
two processes), their peak the highest VmHWM of the gateway's processes; no `--detail` for them.
"""
from __future__ import annotations

import os
import sys


# ---- the wrapper, run as the broker's process (imports nothing the broker does not) -----------------

def _status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def _anon_mappings() -> list:
    """[start address, name, size KiB, resident KiB] of each anonymous mapping, [heap] included."""
    found = []
    current = None
    with open("/proc/self/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":") and len(parts) >= 5:
                name = parts[5] if len(parts) > 5 else "anon"
                current = None
                if name in ("anon", "[heap]"):
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    current = [lo, name, (hi - lo) // 1024, 0]
                    found.append(current)
            elif current is not None and parts and parts[0] == "Rss:":
                current[3] = int(parts[1])
    return found


def _pymalloc() -> dict:
    """Pools in use, free pools and free 20-item tuples, from sys._debugmallocstats (written to fd 2)."""
    r, w = os.pipe()  # (its report is about 10 KB, well within a pipe's buffer; no tempfile import)
    saved = os.dup(2)
    try:
        sys.stderr.flush()
        os.dup2(w, 2)
        sys._debugmallocstats()  # type: ignore[attr-defined]
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(w)
    with open(r, "rb") as f:
        text = f.read().decode("ascii", "replace")
    out = {"pools in use": 0, "free pools": 0, "free 20-item tuples": 0}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0].isdigit() and parts[1].isdigit():
            out["pools in use"] += int(parts[2])
        elif "unused pools" in line:
            out["free pools"] = int(parts[0])
        elif "free 20-sized PyTupleObjects" in line:
            out["free 20-item tuples"] = int(parts[0])
    return out


def _wrap(argv: list) -> int:
    import _signal
    report = os.environ["EDGEBROKER_GROWTH_REPORT"]
    modules: set = set()  # at the first report (the start)
    most: dict = {}
    found: list = []

    def sample() -> None:
        if not found:
            import gc
            from edgebroker.broker import Broker
            found.extend(o for o in gc.get_objects() if isinstance(o, Broker))
            if not found:
                return
        for conn in list(found[0].connections):
            session = conn.session
            now = {"out packets": len(conn.out), "out bytes": conn.out_size, "stash": len(conn.stash),
                   "parser bytes": conn.parser.buffered,
                   "queued": len(session.queue) if session else 0,
                   "in flight": len(session.inflight) if session else 0,
                   "QoS 2 ids": len(session.awaiting_rel) if session else 0}
            mine = most.setdefault(conn.client_id, {})
            for key, value in now.items():
                mine[key] = max(mine.get(key, 0), value)

    def write(signum: int, frame: object) -> None:
        if os.path.exists(report + ".sample"):
            sample()
            return
        if not modules:
            modules.update(sys.modules)
        with open(report, "a") as f:
            f.write(repr({"status": _status(), "anon": _anon_mappings(), "pymalloc": _pymalloc(),
                          "new modules": sorted(set(sys.modules) - modules), "most held": most}) + "\n")

    _signal.signal(_signal.SIGUSR2, write)
    sys.argv[0] = "edgebroker"
    from edgebroker.cli.broker import main
    return main(argv)


if __name__ == "__main__" and sys.argv[1:2] == ["--wrap"]:
    sys.exit(_wrap(sys.argv[2:]))


# ---- the measurement ------------------------------------------------------------------------------

def _rounds(ids: list, rounds: int, detail: bool, quick: bool, kind: str = "edgebroker") -> None:
    import ast
    import signal
    import tempfile
    import threading
    import time

    from bench import brokers
    from bench import scenarios as S

    if detail:
        plain = brokers.Broker.command

        def command(self: brokers.Broker) -> list:
            cmd = plain(self)  # [python, the edgebroker script, arguments...] (brokers.broker_command)
            run = f"import runpy; runpy.run_path({os.path.abspath(__file__)!r}, run_name='__main__')"
            return cmd[:1] + ["-c", run, "--wrap"] + cmd[2:]
        brokers.Broker.command = command  # type: ignore[assignment]
    sizes = S.QUICK if quick else S.FULL
    known = {s.id: s for s in S.scenarios(sizes)}
    work = tempfile.mkdtemp(prefix="bench-growth-")
    try:
        for sid in ids:
            sc = known[sid]
            for r in range(rounds):
                report = os.path.join(work, f"{sid}-{r}.txt")
                os.environ["EDGEBROKER_GROWTH_REPORT"] = report
                if sc.hosted:
                    if detail or sc.family != "B":
                        raise SystemExit(f"{sid} starts its own processes: only B1-B3 of those, without --detail")
                    outcome = sc.run(kind, sizes, 60)
                    start, peak = outcome.raw["start_kib"], outcome.hwm_kib or 0
                    print(f"{sid:10s} round {r + 1}: {outcome.status}, start {start / 1024:.2f} MiB, peak "
                          f"{peak / 1024:.2f} MiB, growth {peak - start:,} KiB", flush=True)
                    continue
                b = brokers.Broker(kind, sc.max_queued, options=sc.options.get(kind, {}), tls=sc.tls)
                b.start()
                stop = threading.Event()
                try:
                    time.sleep(0.3)
                    pid = b.proc.pid  # type: ignore[union-attr]
                    start = brokers.status_kib(pid, "VmRSS")
                    poker = None
                    if detail:
                        os.kill(pid, signal.SIGUSR2)
                        time.sleep(0.5)
                        open(report + ".sample", "w").close()

                        def poke() -> None:
                            while not stop.wait(0.05):
                                try:
                                    os.kill(pid, signal.SIGUSR2)
                                except OSError:
                                    return
                        poker = threading.Thread(target=poke, daemon=True)
                        poker.start()
                    outcome = sc.run(b, sizes, 60)
                    stop.set()
                    if poker is not None:
                        poker.join()
                    peak = brokers.status_kib(pid, "VmHWM")
                    print(f"{sid:10s} round {r + 1}: {outcome.status}, start {start / 1024:.2f} MiB, peak "
                          f"{peak / 1024:.2f} MiB, growth {peak - start:,} KiB"
                          + (f" ({b.note})" if b.note else ""), flush=True)
                    if detail:
                        os.remove(report + ".sample")
                        time.sleep(0.1)
                        os.kill(pid, signal.SIGUSR2)
                        time.sleep(1.0)
                        with open(report) as f:
                            before, after = (ast.literal_eval(line) for line in f.read().splitlines()[:2])
                        _show(before, after)
                finally:
                    stop.set()
                    b.stop()
    finally:
        brokers.kill_all()
        from bench import bridge
        bridge.kill_started()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


def _show(before: dict, after: dict) -> None:
    """The detail: what changed between the start and the end of the load (the peak, for rows whose
    VmHWM equals their VmRSS at the end: memory touched stays resident)."""
    s0, s1 = before["status"], after["status"]
    print(f"    VmRSS {s0['VmRSS']:,} -> {s1['VmRSS']:,} KiB (anonymous {s0['RssAnon']:,} -> {s1['RssAnon']:,}, "
          f"file-backed {s0['RssFile']:,} -> {s1['RssFile']:,}), VmHWM {s1['VmHWM']:,}")
    then = {m[0]: m for m in before["anon"]}
    for start, name, size, rss in after["anon"]:
        rss0 = then.pop(start, (0, 0, 0, None))[3]
        if rss0 is None:
            print(f"    {name} mapping of {size:,} KiB, new: resident {rss:,} KiB")
        elif rss0 != rss:
            print(f"    {name} mapping of {size:,} KiB: resident {rss0:,} -> {rss:,} KiB")
    for start, name, size, rss in then.values():
        print(f"    {name} mapping of {size:,} KiB, gone: it had {rss:,} KiB resident")
    p0, p1 = before["pymalloc"], after["pymalloc"]
    print("    pymalloc: " + ", ".join(f"{k} {p0[k]:,} -> {p1[k]:,}" for k in p0))
    if after["new modules"]:
        print(f"    modules imported during the load: {', '.join(after['new modules'])}")
    for client, most in after["most held"].items():
        if any(most.values()):
            print(f"    most held at once for {client}: "
                  + ", ".join(f"{k} {v:,}" for k, v in most.items() if v))


def main(argv: list = None) -> int:  # type: ignore[assignment]
    import argparse
    ap = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="S2,S2q,S3w,S9-crash", help="scenario ids (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--detail", action="store_true", help="where the growth went (see the docstring)")
    ap.add_argument("--quick", action="store_true", help="the benchmark's --quick sizes")
    ap.add_argument("--broker", choices=("edgebroker", "mosquitto"), default="edgebroker",
                    help="Mosquitto as the benchmark starts it, for its own growth (no --detail)")
    ap.add_argument("--tree", help="measure the edgebroker of another checkout (its bench/ is used too)")
    args = ap.parse_args(argv)
    if args.tree:
        import subprocess
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--tree" and a != args.tree
                and not a.startswith("--tree=")]
        here = os.path.abspath(__file__)
        env = dict(os.environ, PYTHONPATH=os.path.abspath(args.tree))
        code = ("import runpy, sys; sys.argv = ['growth'] + sys.argv[1:]; "
                f"sys.path.insert(0, {os.path.abspath(args.tree)!r}); runpy.run_path({here!r}, run_name='__growth__')")
        return subprocess.call([sys.executable, "-c", code] + rest, env=env, cwd=os.path.abspath(args.tree))
    if __name__ != "__growth__":  # (for --tree, the other checkout is first on sys.path)
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if args.detail and args.broker != "edgebroker":
        ap.error("--detail needs edgebroker's wrapper")
    _rounds([s.strip() for s in args.scenarios.split(",") if s.strip()], args.rounds, args.detail, args.quick,
            args.broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
elif __name__ == "__growth__":
    sys.exit(main(sys.argv[1:]))
