"""edgebroker beside Mosquitto, in one run: `python -m bench [--quick] [--write-docs]`.

Theory of operation: the runner raises the open-file limit (S6 needs thousands of sockets, and the
brokers inherit the limit), measures the load generator's ceiling against a do-nothing sink
(calibration), then runs every scenario on both brokers, round by round, alternating which broker
goes first (round 1: Mosquitto then edgebroker, round 2: edgebroker then Mosquitto, ...). Every
scenario run gets a fresh broker process on a free loopback port, so peak RSS (VmHWM) and CPU time
(utime + stime from /proc) belong to that scenario alone. Each run has a hard timeout; the scenario
kills its workers and the runner kills the broker in `finally` blocks. Medians per scenario and the
ratio edgebroker/Mosquitto go to stdout as Markdown (progress goes to stderr) and, with --write-docs,
to docs/benchmarks.md with a PNG chart of the ratios.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from typing import Any, Dict, List, Optional

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    __package__ = "bench"

from bench import brokers, report  # noqa: E402
from bench.scenarios import FULL, QUICK, Outcome, Scenario, Sizes, calibrate, scenarios  # noqa: E402

ROOT = brokers.ROOT
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
PNG = os.path.join(ROOT, "docs", "benchmarks-ratios.png")


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def raise_nofile(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> Dict[str, str]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    try:
        broker_py = subprocess.run([brokers.repo_python(), "-c", "import platform; print(platform.python_version())"],
                                   capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        broker_py = "?"
    try:
        eb_version = subprocess.run([brokers.repo_python(), "-m", "edgebroker", "--version"], capture_output=True,
                                    text=True, timeout=20, cwd=ROOT,
                                    env=dict(os.environ, PYTHONPATH=ROOT)).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        eb_version = "?"
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "edgebroker"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        if dirty:
            commit += " + uncommitted changes in edgebroker/"
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": _os_name(),
        "python (generator)": platform.python_version(),
        "python (edgebroker)": broker_py,
        "edgebroker": f"{eb_version} (commit {commit})",
        "mosquitto": brokers.mosquitto_version(),
    }


def _cpu_busy() -> tuple:
    """(busy seconds of the whole machine, steal seconds) from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = v[0] + v[1] + v[2] + v[5] + v[6]  # user nice system irq softirq
        steal = v[7] if len(v) > 7 else 0
        return busy / brokers.CLK_TCK, steal / brokers.CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def _own_cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _os_name() -> str:
    try:
        with open("/etc/os-release") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def run_one(kind: str, sc: Scenario, sz: Sizes, timeout: float, rnd: int) -> Dict[str, Any]:
    rec: Dict[str, Any] = {"round": rnd, "scenario": sc.id, "broker": kind}
    b = brokers.Broker(kind, sc.max_queued)
    o: Outcome
    try:
        b.start()
        b.mark_cpu()
        assert sc.run is not None
        o = sc.run(b, sz, timeout)
        rec["broker_cpu"] = b.cpu_since_mark()
        rec["hwm_kib"] = b.hwm_kib()
        if not b.alive():
            o.status = "ERROR"
            o.detail = (o.detail + "; " if o.detail else "") + f"broker exited: {b.log_tail(5)}"
        if o.status != "OK":
            hints = b.log_lines("dropp", "error", "traceback", "exception", "warning")
            if hints:
                o.detail = (o.detail + "; " if o.detail else "") + "broker log: " + " | ".join(hints)
    except Exception as exc:  # a broker that cannot start, or a bug here: one ERROR row, not a crash
        o = Outcome(status="ERROR", detail=f"{type(exc).__name__}: {exc}"[:600])
    finally:
        rec["note"] = b.note
        b.stop()
    rec.update(status=o.status, metrics=o.metrics, detail=o.detail, notes=o.notes, gen_cpu=o.gen_cpu,
               wall=o.wall, raw=o.raw)
    return rec


def _brief(rec: Dict[str, Any], sc: Scenario) -> str:
    parts = []
    for m in sc.metrics:
        if m.key in rec["metrics"]:
            parts.append(f"{m.label} {m.fmt.format(rec['metrics'][m.key])}")
    s = ", ".join(parts) if parts else ""
    extra = f" [{rec['detail']}]" if rec["detail"] else ""
    res = f"RSS {rec.get('hwm_kib', 0) / 1024:.1f} MiB, CPU {rec.get('broker_cpu', 0):.2f} s, gen CPU {rec['gen_cpu']:.2f} s"
    return f"{rec['status']} {s} ({res}){extra}"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description="edgebroker beside Mosquitto on loopback.")
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round: under 90 s for both brokers")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    ap.add_argument("--scenarios", help="comma-separated subset, e.g. S1,S5 (default all)")
    ap.add_argument("--brokers", default="edgebroker,mosquitto", help="comma-separated subset of edgebroker,mosquitto")
    ap.add_argument("--timeout", type=float, default=60.0, help="hard timeout per scenario run, seconds (default 60)")
    ap.add_argument("--no-calibration", action="store_true", help="skip the generator ceiling runs")
    ap.add_argument("--write-docs", action="store_true", help="write docs/benchmarks.md and docs/benchmarks-ratios.png")
    ap.add_argument("--json", metavar="FILE", help="also write every run's raw record as JSON")
    args = ap.parse_args(argv)

    sz = QUICK if args.quick else FULL
    rounds = args.rounds or (1 if args.quick else 3)
    all_scen = scenarios(sz)
    wanted = {s.strip().upper() for s in args.scenarios.split(",")} if args.scenarios else None
    scen = [s for s in all_scen if wanted is None or s.id.upper() in wanted]
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    for k in kinds:
        if k not in report.KINDS:
            ap.error(f"unknown broker {k!r}")
    if "mosquitto" in kinds and brokers.mosquitto_binary() is None:
        say("mosquitto is not installed: apt-get install -y mosquitto (or --brokers edgebroker)")
        return 2
    nofile = raise_nofile()
    if any(s.id == "S6" for s in scen) and nofile < sz.s6_conns + 200:
        say(f"open-file limit {nofile} too low for {sz.s6_conns} connections (S6)")
        return 2

    load_start = os.getloadavg()[0]
    if load_start > 0.7:
        say(f"warning: load average {load_start:.2f} before the run: other work on this machine makes results noisy")
    busy0, steal0 = _cpu_busy()
    own0 = _own_cpu()
    started = time.time()
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    info = machine()
    say(f"bench: {'quick' if args.quick else 'full'} sizes, {rounds} round(s), brokers {', '.join(kinds)}; "
        f"edgebroker args: {' '.join(brokers.edgebroker_extra_args()) or '(none)'}")
    records: List[Dict[str, Any]] = []
    cal: List[Dict[str, Any]] = []
    try:
        if not args.no_calibration:
            say("calibration: the generator against a do-nothing sink")
            for label, o, sink_cpu in calibrate(sz, args.timeout):
                c = dict(label=label, status=o.status, metrics=o.metrics, gen_cpu=o.gen_cpu, wall=o.wall,
                         notes=o.notes, detail=o.detail, sink_cpu=sink_cpu)
                cal.append(c)
                say(f"  {label}: {o.status} {o.metrics.get('rate', 0):,.0f} (gen CPU {o.gen_cpu:.2f} s, "
                    f"sink CPU {sink_cpu:.2f} s, wall {o.wall:.2f} s) {o.detail}")
        for rnd in range(1, rounds + 1):
            order = ["mosquitto", "edgebroker"] if rnd % 2 == 1 else ["edgebroker", "mosquitto"]
            order = [k for k in order if k in kinds]
            say(f"round {rnd}/{rounds}: {' then '.join(order)} per scenario")
            for sc in scen:
                if sc.run is None:
                    continue
                for kind in order:
                    rec = run_one(kind, sc, sz, args.timeout, rnd)
                    records.append(rec)
                    say(f"  {sc.id:<4} {kind:<10} {_brief(rec, sc)}")
    except KeyboardInterrupt:
        say("interrupted: reporting what ran")
    finally:
        brokers.kill_all()
    elapsed = time.time() - started
    busy1, steal1 = _cpu_busy()
    other = max(0.0, (busy1 - busy0) - (_own_cpu() - own0)) / max(elapsed, 1e-9)
    info["load average (1 min) before the run"] = f"{load_start:.2f}"
    info["other processes during the run"] = (f"{other:.2f} cores on average (machine CPU time not spent by the "
                                              f"brokers or the generator); steal {(steal1 - steal0) / max(elapsed, 1e-9):.2f} cores")
    say(f"bench: other processes used {other:.2f} cores on average during the run")

    table = report.results_table(records, scen)
    print(table)
    print()
    print("Failures and losses:")
    print(report.failures(records))
    if cal:
        print()
        print(report.calibration_table(cal))
    say(f"bench: done in {elapsed:.0f} s")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "sizes": asdict(sz), "rounds": rounds, "records": records,
                       "calibration": cal}, f, indent=1, default=str)
    if args.write_docs:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        subtitle = f"{info['cpu']}, {info['nproc']} cores; {date}; {'quick' if args.quick else 'full'}, {rounds} round(s)"
        has_png = report.chart(records, scen, PNG, subtitle)
        write_doc(command, info, date, sz, rounds, args.quick, elapsed, table, records, scen, cal, has_png)
        say(f"bench: wrote {os.path.relpath(DOC, ROOT)}" + (f" and {os.path.relpath(PNG, ROOT)}" if has_png else ""))
    return 0


def write_doc(command: str, info: Dict[str, str], date: str, sz: Sizes, rounds: int, quick: bool, elapsed: float,
              table: str, records: List[Dict[str, Any]], scen: List[Scenario], cal: List[Dict[str, Any]],
              has_png: bool) -> None:
    eb_args = " ".join(brokers.edgebroker_extra_args())
    if brokers.edgebroker_has_config_file():
        queue_how = ("S2q and S8 add `-c FILE`, a generated TOML that sets only max_queued_messages "
                     f"({sz.s2q_max_queued:,} and {sz.s8_max_queued:,}).")
    else:
        queue_how = ("S2q and S8 need a bigger queue, which this CLI cannot set: they start the same Server "
                     "through `bench/edge_launch.py` with `Config(max_queued_messages=N)` "
                     f"({sz.s2q_max_queued:,} and {sz.s8_max_queued:,}) and every other default.")
    mach = "\n".join(f"- {k}: {v}" for k, v in info.items())
    text = f"""# Benchmarks: edgebroker beside Mosquitto

Generated by `bench/` ({date}); do not edit by hand, run it again:

```sh
{command}
```

{'Quick sizes' if quick else 'Full sizes'}, {rounds} round(s), {elapsed:.0f} s in all. Both brokers ran on the same
machine in the same run, on 127.0.0.1, a fresh broker process per scenario run, alternating which broker
goes first each round. Cells are medians over the rounds. How each scenario works: `bench/README.md`.

## Machine

{mach}

## How to read the table

- **ratio eb/mosq** is always edgebroker's median divided by Mosquitto's. The **Better** column says which
  direction is good for that row: for throughput rows (`higher`) a ratio above 1 means edgebroker is
  faster; for latency, time and memory rows (`lower`) a ratio below 1 means edgebroker is better.
- **peak RSS** is the broker's VmHWM at the end of the scenario run (lower is better); **broker CPU s**
  is the broker's user + system time during the scenario (lower is better for the same work);
  **generator CPU s** is the load generator's own CPU time in the measured phase, for judging whether
  the generator, not the broker, was the limit (the machine has {info['nproc']} cores for the broker and the
  generator together).
- FAIL means the scenario lost messages its QoS promises to deliver (or broke order), TIMEOUT that it
  did not finish within the hard timeout, ERROR that something broke (details below); such a cell has
  no number. `(lossy)` marks a QoS 0 number where some messages were dropped (allowed at QoS 0).

## Results

{table}

![edgebroker/Mosquitto ratio per metric](benchmarks-ratios.png)

## Failures and losses

{report.failures(records)}

Known behaviours behind some of these (Mosquitto 2.0.11 losing QoS 2 messages above its inflight window
in S3; edgebroker's max_queued_messages 1000 overflowing under a fast QoS 1/2 publisher in S2/S3) are
described in `bench/README.md`, "Known behaviours the scenarios expose".

## Generator ceiling (calibration)

The same generator code against a sink that answers CONNECT/SUBSCRIBE and otherwise discards (or
acknowledges, or streams pre-encoded PUBLISHes). A broker result well below these numbers was not
limited by the generator.

{report.calibration_table(cal)}

## Broker set-up

- edgebroker: `{os.path.relpath(brokers.repo_python(), ROOT)} -m edgebroker -p PORT{(' ' + eb_args) if eb_args else ''}` (the working
  tree, through PYTHONPATH), i.e. its defaults: max_inflight_messages 20, max_queued_messages 1000,
  persistence {'off' if eb_args else 'on'}. {queue_how}
  Its data directory (XDG_DATA_HOME) is in the run's temporary directory, seeded with the empty database
  a first, unmeasured start created, so every run starts on an existing database as in service.
- Mosquitto: `mosquitto -c CONF` with `listener PORT 127.0.0.1`, `allow_anonymous true`,
  `persistence false`, `max_inflight_messages 20`, `max_queued_bytes 0`, and `max_queued_messages 100000`
  ({sz.s8_max_queued:,} for S8). Everything else at its default (so Nagle stays on: `set_tcp_nodelay false`).
- Both log at their default levels to a file.

## Every run

"Machine busy" is (broker CPU + generator CPU) / ({info['nproc']} cores x wall time of the scenario, set-up
included): near 100% the two competed for the cores and the broker's number is partly the machine's.

{report.notes_table(records, scen)}
"""
    os.makedirs(os.path.dirname(DOC), exist_ok=True)
    if not has_png:
        text = text.replace("![edgebroker/Mosquitto ratio per metric](benchmarks-ratios.png)\n",
                            "(no chart: matplotlib is not installed; `pip install -r bench/requirements.txt`)\n")
    with open(DOC, "w") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
