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
import copy
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

from bench import bridge, brokers, report  # noqa: E402
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
        "brokers' data directories": _data_fs(),
        "cpu idle driver": _cpuidle(),
    }


def _cpuidle() -> str:
    """The idle driver, and its halt-polling window under a hypervisor: how dear it is to wake an idle CPU
    (S8, S8-apart)."""
    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""
    driver = read("/sys/devices/system/cpu/cpuidle/current_driver") or "unknown"
    poll = read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if not poll:
        return driver
    note = " (an idle vCPU halts at once, so waking it is dear: see S8 in bench/README.md)" if poll == "0" else ""
    return f"{driver}, guest_halt_poll_ns {poll}{note}"


def _data_fs() -> str:
    root = brokers.data_root()
    mnt, fstype, source = brokers.mount_of(root)
    return f"{root} on {fstype} ({source}, mounted on {mnt})"


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
    if sc.labels:
        rec["config"] = sc.labels.get(kind, "")
    if sc.hosted:
        return _run_hosted(rec, kind, sc, sz, timeout)
    disk = sc.disk_messages is not None
    b = brokers.Broker(kind, sc.max_queued, options=sc.options.get(kind), disk=disk, tls=sc.tls)
    o = Outcome(status="ERROR", detail="not run")
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
        try:
            b.stop()
        finally:
            if disk:
                rec["disk"] = dict(b.final)
    rec.update(status=o.status, metrics=o.metrics, detail=o.detail, notes=o.notes, gen_cpu=o.gen_cpu,
               wall=o.wall, raw=o.raw)
    if disk:
        errs = (rec.get("disk") or {}).get("log_errors")
        if errs and rec["status"] == "OK":
            rec["status"] = "ERROR"
            rec["detail"] = "broker log: " + " | ".join(errs)
        _disk_metrics(rec, sc.disk_messages(sz), kind)  # type: ignore[misc]
    return rec


def _run_hosted(rec: Dict[str, Any], kind: str, sc: Scenario, sz: Sizes, timeout: float) -> Dict[str, Any]:
    """A scenario that starts its own processes (Scenario.hosted: bridges, serial ports)."""
    assert sc.run is not None
    try:
        o = sc.run(kind, sz, timeout)
    except Exception as exc:  # a process that cannot start, or a bug here: one ERROR row, not a crash
        o = Outcome(status="ERROR", detail=f"{type(exc).__name__}: {exc}"[:600])
    finally:
        bridge.kill_started()  # what an exception left running (a serial run stops its broker itself)
    if o.broker_cpu is not None:
        rec["broker_cpu"] = o.broker_cpu
    if o.hwm_kib:
        rec["hwm_kib"] = o.hwm_kib
    rec.update(note="", status=o.status, metrics=o.metrics, detail=o.detail, notes=o.notes, gen_cpu=o.gen_cpu,
               wall=o.wall, raw=o.raw)
    return rec


def _disk_metrics(rec: Dict[str, Any], messages: int, kind: str) -> None:
    """Per 1,000 messages, over the broker's whole life (start to clean exit): disk writes =
    write_bytes - cancelled_write_bytes of /proc/PID/io (bytes the process dirtied in the page cache of a
    block-device file system, counted once per dirtying, so written back sooner or later unless the file
    is deleted first: those are cancelled); write() bytes = wchar (every byte passed to write()-like calls:
    files, the log, and sockets too)."""
    d = rec.get("disk") or {}
    io = d.get("io") or {}
    if not io:
        rec["notes"].append("no /proc/PID/io figures" + (f" ({d['io_note']})" if d.get("io_note") else ""))
        return
    per = 1000.0 / messages
    net = io.get("write_bytes", 0) - io.get("cancelled_write_bytes", 0)
    wchar = io.get("wchar", 0)
    sock = rec.get("raw", {}).get("rx_bytes", 0)
    # wchar counts write()/writev() on any file descriptor. Mosquitto writes to its client sockets with
    # write(2), so its wchar holds every byte it sent to the clients: subtract what the clients received
    # (TCP_INFO). edgebroker sends with send(2), which wchar does not count.
    files = wchar - sock if brokers.SOCKET_WRITES_IN_WCHAR.get(kind) else wchar
    d.update(messages=messages, socket_bytes=sock, file_write_bytes=files,
             disk_kib_per_1000=net / 1024 * per, wchar_kib_per_1000=files / 1024 * per,
             syscw_per_1000=io.get("syscw", 0) * per)
    if "device_bytes" in d:
        d["device_kib_per_1000"] = d["device_bytes"] / 1024 * per
    if rec["status"] == "OK":
        rec["metrics"]["disk_kib"] = d["disk_kib_per_1000"]
    rec["notes"].append(
        f"/proc/PID/io: write_bytes {io.get('write_bytes', 0):,}, cancelled {io.get('cancelled_write_bytes', 0):,}, "
        f"wchar {wchar:,} (clients received {sock:,}), syscw {io.get('syscw', 0):,}; data {d.get('data_bytes_before_stop', 0):,} B "
        f"before SIGTERM, {d.get('data_bytes_end', 0):,} B after exit; shutdown {d.get('shutdown_s', 0):.2f} s"
        + (f"; {d['io_note']}" if d.get("io_note") else ""))


def _shared(records: List[Dict[str, Any]], rnd: int, sc: Scenario) -> Optional[Dict[str, Any]]:
    """Mosquitto's record of this round for the scenario sc.mq_same_as (same configuration), reused."""
    if not sc.mq_same_as:
        return None
    for r in records:
        if r["round"] == rnd and r["scenario"] == sc.mq_same_as and r["broker"] == "mosquitto":
            rec = copy.deepcopy(r)
            rec["scenario"] = sc.id
            rec["shared_from"] = sc.mq_same_as
            rec["notes"] = [f"the same Mosquitto run as {sc.mq_same_as} (same configuration)"]
            return rec
    return None


def _brief(rec: Dict[str, Any], sc: Scenario) -> str:
    parts = []
    for m in sc.metrics:
        if m.key in rec["metrics"]:
            parts.append(f"{m.label} {m.fmt.format(rec['metrics'][m.key])}")
    s = ", ".join(parts) if parts else ""
    extra = f" [{rec['detail']}]" if rec["detail"] else ""
    res = f"RSS {rec.get('hwm_kib', 0) / 1024:.1f} MiB, CPU {rec.get('broker_cpu', 0):.2f} s, gen CPU {rec['gen_cpu']:.2f} s"
    d = rec.get("disk") or {}
    if "disk_kib_per_1000" in d:
        res += (f"; per 1,000 msgs: disk {d['disk_kib_per_1000']:,.1f} KiB, write() {d['wchar_kib_per_1000']:,.1f} KiB"
                + (f", device {d['device_kib_per_1000']:,.1f} KiB" if "device_kib_per_1000" in d else "")
                + f"; data {d.get('data_bytes_end', 0) / 1024:,.0f} KiB at exit")
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
    scen = [s for s in all_scen if wanted is None or s.id.upper() in wanted or (s.family and s.family.upper() in wanted)]
    kinds = [k.strip() for k in args.brokers.split(",") if k.strip()]
    for k in kinds:
        if k not in report.KINDS:
            ap.error(f"unknown broker {k!r}")
    if "mosquitto" in kinds and brokers.mosquitto_binary() is None:
        say("mosquitto is not installed: apt-get install -y mosquitto (or --brokers edgebroker)")
        return 2
    nofile = raise_nofile()
    if any(s.id.startswith("S6") for s in scen) and nofile < sz.s6_conns + 200:
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
                if sc.run is None or (sc.max_rounds and rnd > sc.max_rounds):
                    continue
                for kind in order:
                    rec = (_shared(records, rnd, sc) if kind == "mosquitto" else None) or \
                        run_one(kind, sc, sz, args.timeout, rnd)
                    records.append(rec)
                    say(f"  {sc.id:<4} {kind:<10} {_brief(rec, sc)}" +
                        (f" (= {rec['shared_from']})" if rec.get("shared_from") else ""))
    except KeyboardInterrupt:
        say("interrupted: reporting what ran")
    finally:
        brokers.kill_all()
        bridge.kill_started()
    elapsed = time.time() - started
    busy1, steal1 = _cpu_busy()
    other = max(0.0, (busy1 - busy0) - (_own_cpu() - own0)) / max(elapsed, 1e-9)
    info["load average (1 min) before the run"] = f"{load_start:.2f}"
    info["other processes during the run"] = (f"{other:.2f} cores on average (machine CPU time not spent by the "
                                              f"brokers or the generator); steal {(steal1 - steal0) / max(elapsed, 1e-9):.2f} cores")
    say(f"bench: other processes used {other:.2f} cores on average during the run")

    table = report.results_table(records, scen)
    print(table)
    if any(s.family == "S9" for s in scen):
        for phase in report.S9_PHASES:
            print()
            print(f"S9 {phase}:")
            print(report.s9_table(records, scen, phase))
        print()
        print(report.s9_summary(records, scen, sz.payload, sz.s9t_rate))
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
                     f"({sz.s2q_max_queued:,} and {sz.s8_max_queued:,}; S1-stuck the default, "
                     f"{sz.s1s_max_queued:,}, as Mosquitto's there).")
    else:
        queue_how = ("S2q and S8 need a bigger queue, which this CLI cannot set: they start the same Server "
                     "through `bench/edge_launch.py` with `Config(max_queued_messages=N)` "
                     f"({sz.s2q_max_queued:,} and {sz.s8_max_queued:,}; S1-stuck {sz.s1s_max_queued:,}) and "
                     "every other default.")
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
  no number. `(lossy)` marks a QoS 0 number where some messages were dropped (allowed at QoS 0), and in
  the bridge rows (B1-B3) a gateway that dropped acknowledged QoS 1 messages by design (Mosquitto's
  bridge queue: max_queued_messages 1000, in memory): its figures count what arrived.
- B1-B3 and SER-\\* start their own processes: their broker columns are the gateway's (B) or the
  receiving side's (SER: edgebroker; Mosquitto plus the pyserial+paho script that feeds it).

## Results

{table}

![edgebroker/Mosquitto ratio per metric](benchmarks-ratios.png)

## Failures and losses

{report.failures(records)}

Known behaviours behind failures seen here (Mosquitto 2.0.11 losing QoS 2 messages above its inflight
window in S3, for one) are described in `bench/README.md`, "Known behaviours the scenarios expose".
{s9_section(sz, records, scen)}
## Generator ceiling (calibration)

The same generator code against a sink that answers CONNECT/SUBSCRIBE and otherwise discards (or
acknowledges, or streams pre-encoded PUBLISHes). A broker result well below these numbers was not
limited by the generator.

{report.calibration_table(cal)}

## Broker set-up

- edgebroker: `edgebroker -p PORT{(' ' + eb_args) if eb_args else ''}` (the working
  tree, through PYTHONPATH), i.e. its defaults: max_inflight_messages 20, max_queued_messages 1000,
  persistence {'off' if eb_args else 'on'}. {queue_how}
  Its Python is `{os.path.relpath(brokers.repo_python(), ROOT)}`'s, in a virtualenv of its own that reaches that venv's
  packages by a path only, running the `edgebroker` command's script as pip and pi-image/install.sh
  write it, so it starts as an installed broker does: without the repository's editable-install hooks
  (about 1 MiB of RSS; bench/brokers.py, `broker_python`) and without `python -m`'s runpy (0.6 MiB;
  `broker_command`).
  Its data directory (XDG_DATA_HOME) is in the run's temporary directory, seeded with the empty database
  a first, unmeasured start created, so every run starts on an existing database as in service.
- Mosquitto: `mosquitto -c CONF` with `listener PORT 127.0.0.1`, `allow_anonymous true`,
  `persistence false`, `max_inflight_messages 20`, `max_queued_bytes 0`, and `max_queued_messages 100000`
  ({sz.s8_max_queued:,} for S8, {sz.s1s_max_queued:,} for S1-stuck). Everything else at its default (so Nagle
  stays on: `set_tcp_nodelay false`).
- Both log at their default levels to a file.
- S9 adds persistence settings per row: edgebroker `-c FILE` with `persistence_location` (the seeded data
  directory), `durability` (and `autosave_interval`), or `persistence = false`; Mosquitto
  `persistence true`, `persistence_location DIR/` (and `autosave_interval 1` in S9q-as1). Mosquitto, started
  as root here, switches to its `mosquitto` user as in service, so its data directory is made that user's.

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


def s9_section(sz: Sizes, records: List[Dict[str, Any]], scen: List[Scenario]) -> str:
    if not any(s.family == "S9" for s in scen):
        return ""
    return f"""
## S9: the cost of persistence

The same loads with the brokers' persistence configured per row: **S9-\\*** is S2 through a persistent
session (a clean-session-0 subscriber at QoS 1, online, acknowledging everything; a QoS 1 publisher with
{sz.window} unacknowledged at most; {sz.s9_count:,} messages of {sz.payload} B); **S9q-\\*** is S8 ({sz.s9_queue_count:,}
QoS 1 messages queued for the same session while it is offline, kept {sz.s9_hold_s:g} s, then drained on
reconnect); **S9t-\\*** is a sensor's trickle through the same online session ({sz.s9t_count:,} QoS 1
messages at {sz.s9t_rate:g} msg/s, one at a time: the publisher waits for each PUBACK, then for its time
slot). In the results table above each edgebroker durability level is paired with Mosquitto's
`persistence true` at its default `autosave_interval 1800` (one Mosquitto run per round serves the
three pairs), S9q-as1 pairs both brokers saving every second (edgebroker `durability periodic`,
`autosave_interval 1`; Mosquitto `autosave_interval 1`), and S9-off / S9q-off / S9t-off both with persistence off.
Every row is its own fresh broker process, measured from its start to its exit after SIGTERM (so
Mosquitto's save at shutdown and SQLite's last commit and checkpoint count). Medians over the rounds.

### Online stream ({sz.s9_count:,} messages)

{report.s9_table(records, scen, "online")}

### Queued for an offline session, then drained ({sz.s9_queue_count:,} messages)

{report.s9_table(records, scen, "queued")}

### A trickle: {sz.s9t_count:,} messages at {sz.s9t_rate:g} msg/s, one at a time

{report.s9_table(records, scen, "trickle")}

### What the figures say

{report.s9_summary(records, scen, sz.payload, sz.s9t_rate)}

How each level gets there:

- edgebroker `crash` and `sync` make every acknowledged message durable before its PUBACK: each loop turn
  that changed durable state is one SQLite transaction (when more input is already waiting, the loop
  handles it first, for up to 5 ms, and commits once for both), and a commit appends every page the turn
  touched to the WAL (whole pages however small the message: 512-byte pages in new databases, and the
  deliveries table has no secondary index since schema 3); every
  1,000 WAL pages SQLite copies them back into the database file (checkpoint). A message to an online
  persistent subscriber is written when it is queued and deleted when it is acknowledged; the deletion
  gates nothing, so it rides with the next commit that something waits on, or is committed at most 1 s
  later (not as soon as the loop goes quiet: in a trickle, S9t, it rides with the next message's commit,
  one WAL page per message instead of two). A message queued for an offline session is stored
  with its packet id, so sending it writes nothing: draining the queue (S9q) commits only the deletions,
  at the end. The bytes therefore follow the number of commits (loop turns), not the message size.
  `sync` adds an fsync per
  commit: on this machine's virtual disk an fsync is cheap (the host caches it); on a Raspberry Pi's SD
  card it takes milliseconds, so the throughput cost of `sync` measured here is a lower bound.
- edgebroker `periodic` buffers the statements in memory and runs them at each save (every
  autosave_interval), in one transaction; with the default 1800 s nothing is written during these runs
  but what 20,000 pending statements force early, and the row shows that plus the final commit and
  checkpoint at shutdown. A delivery acknowledged before the save cancels its own INSERT, so a message
  its subscriber acknowledged in time is never written at all. Its throughput cost is the CPU of
  appending statements (compare "broker CPU s" with persistence false); `crash` adds the commits,
  `sync` their fsyncs. The buffered statements are also what a failed commit replays, so its peak RSS
  (results table) grows with the changes since the last save, up to those 20,000
  (`PERIODIC_MAX_OPS` in `edgebroker/store.py`).
- Mosquitto writes `mosquitto.db` only every autosave_interval and at shutdown, whole: with the default
  1800 s its figure is one save at exit of what is then in memory (here almost nothing: the queue has been
  drained) plus its log. That is its durability model: a crash or a power cut loses everything since the
  last save (up to 30 minutes of messages it had acknowledged), which `crash` and `sync` do not. With
  `autosave_interval 1` it rewrites the whole database every second the queue is in memory, so its
  bytes grow with time x queue size rather than with the number of messages.

### How the disk figures are measured, and what they miss

- **disk writes** = `write_bytes - cancelled_write_bytes` of `/proc/PID/io`, read after SIGTERM while the
  broker is a zombie (its counters are final and still readable until it is reaped; threads and reaped
  children included), divided by the messages of the run x 1,000. The kernel counts a page when the
  process dirties it in the page cache of a disk-backed file system: it reaches the disk at writeback,
  unless the file is deleted first (then it is "cancelled"). A page dirtied again before writeback counts
  once, so repeated rewrites of the same WAL pages count less without fsync (`crash`) than with it
  (`sync`, where each fsync cleans the pages). The data directories were on a disk-backed file system
  (see "Machine"; tmpfs would give 0).
- **file write()** = `wchar`: every byte passed to write()-family calls, whether or not it reaches a disk.
  wchar also counts socket writes made with write(), which is how Mosquitto sends to its clients, so the
  bytes its clients received (TCP_INFO `tcpi_bytes_received`, summed over every client socket of the run)
  are subtracted; edgebroker sends with send(), which wchar does not count.
- **device** = sectors written to the whole block device (`/proc/diskstats`) between a `sync` before the
  broker starts and a `sync` after it exits: it adds what the process counters cannot see, the file
  system's journal and metadata written by the kernel (ext4's jbd2, e.g. one journal commit per fsync),
  but it is the whole machine's: any other process writing meanwhile is in it too.
- **write calls** = `syscw`, write()-family system calls (Mosquitto's include one per packet to a socket).
- Every figure includes the broker's start-up, the clients' sessions and the log (a few hundred bytes per
  connection): the `persistence false` rows show that floor. None of them sees what an SD card's
  controller does with a small write (erase-block write amplification), which multiplies small
  scattered writes more than large sequential ones.
"""


if __name__ == "__main__":
    sys.exit(main())
