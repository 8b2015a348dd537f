"""Turning run records into medians, a Markdown report and a ratio chart."""
from __future__ import annotations

import os
import statistics
from typing import Any, Dict, List, Optional, Tuple

from .scenarios import S9_CONFIGS, Metric, Scenario

BAD = ("FAIL", "TIMEOUT", "ERROR")
KINDS = ("edgebroker", "mosquitto")


def _median(values: List[float]) -> Optional[float]:
    return statistics.median(values) if values else None


class Cell:
    """One (scenario, broker) over all rounds."""

    def __init__(self, runs: List[Dict[str, Any]]) -> None:
        self.runs = runs
        self.n = len(runs)
        bad = [r for r in runs if r["status"] in BAD]
        self.bad = len(bad)
        self.worst = bad[0]["status"] if bad else ("LOSSY" if any(r["status"] == "LOSSY" for r in runs) else "OK")
        self.rss_mib = _median([r["hwm_kib"] / 1024 for r in runs if r.get("hwm_kib")])
        self.cpu = _median([r["broker_cpu"] for r in runs if "broker_cpu" in r])
        self.gen_cpu = _median([r["gen_cpu"] for r in runs if "gen_cpu" in r])

    def value(self, key: str) -> Optional[float]:
        if self.bad or not self.runs:
            return None
        return _median([r["metrics"][key] for r in self.runs if key in r["metrics"]])

    def text(self, m: Metric) -> str:
        if not self.runs:
            return "-"
        if self.bad:
            return self.worst + (f" ({self.bad}/{self.n})" if self.n > 1 else "")
        v = self.value(m.key)
        if v is None:
            return "-"
        s = m.fmt.format(v)
        return s + " (lossy)" if self.worst == "LOSSY" else s


def cells(records: List[Dict[str, Any]], scen: List[Scenario]) -> Dict[Tuple[str, str], Cell]:
    out = {}
    for sc in scen:
        for kind in KINDS:
            out[(sc.id, kind)] = Cell([r for r in records if r["scenario"] == sc.id and r["broker"] == kind])
    return out


def ratio(eb: Optional[float], mq: Optional[float]) -> Optional[float]:
    if eb is None or mq is None or mq == 0:
        return None
    return eb / mq


def _f(v: Optional[float], fmt: str = "{:,.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def _ratio_text(r: Optional[float]) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}" if r < 10 else (f"{r:.1f}" if r < 100 else f"{r:,.0f}")


def results_table(records: List[Dict[str, Any]], scen: List[Scenario]) -> str:
    cs = cells(records, scen)
    lines = [
        "| Scenario | Metric | Better | edgebroker | Mosquitto | ratio eb/mosq | peak RSS MiB eb / mosq "
        "| broker CPU s eb / mosq | generator CPU s eb / mosq |",
        "|---|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for sc in scen:
        eb, mq = cs[(sc.id, "edgebroker")], cs[(sc.id, "mosquitto")]
        if sc.run is None:
            lines.append(f"| {sc.id} | {sc.title} | | | | | | | |")
            continue
        for i, m in enumerate(sc.metrics):
            r = ratio(eb.value(m.key), mq.value(m.key))
            first = i == 0
            lines.append("| " + " | ".join([
                sc.id if first else "",
                m.label,
                m.better,
                eb.text(m),
                mq.text(m),
                _ratio_text(r),
                f"{_f(eb.rss_mib)} / {_f(mq.rss_mib)}" if first else "",
                f"{_f(eb.cpu, '{:.2f}')} / {_f(mq.cpu, '{:.2f}')}" if first else "",
                f"{_f(eb.gen_cpu, '{:.2f}')} / {_f(mq.gen_cpu, '{:.2f}')}" if first else "",
            ]) + " |")
    return "\n".join(lines)


def scenario_list(scen: List[Scenario]) -> str:
    return "\n".join(f"- **{sc.id}**: {sc.title}" for sc in scen)


def failures(records: List[Dict[str, Any]]) -> str:
    bad = [r for r in records if r["status"] in BAD or r["status"] == "LOSSY"]
    if not bad:
        return "None: every run delivered every message it had to."
    out = []
    for r in bad:
        out.append(f"- {r['scenario']} on {r['broker']}, round {r['round']}: **{r['status']}**: {r['detail']}")
    return "\n".join(out)


def notes_table(records: List[Dict[str, Any]], scen: List[Scenario]) -> str:
    ncpu = os.cpu_count() or 1
    lines = ["| Scenario | Broker | Round | Status | Wall s | Broker CPU s | Generator CPU s | Machine busy | Notes |",
             "|---|---|--:|---|--:|--:|--:|--:|---|"]
    order = {sc.id: i for i, sc in enumerate(scen)}
    for r in sorted(records, key=lambda r: (order.get(r["scenario"], 99), r["broker"], r["round"])):
        notes = "; ".join(r.get("notes", []) + ([r["note"]] if r.get("note") else []))
        wall = r.get("wall", 0.0)
        busy = (r.get("broker_cpu", 0.0) + r.get("gen_cpu", 0.0)) / (ncpu * wall) if wall else 0.0
        lines.append(f"| {r['scenario']} | {r['broker']} | {r['round']} | {r['status']} | {wall:.2f} | "
                     f"{r.get('broker_cpu', 0):.2f} | {r.get('gen_cpu', 0):.2f} | {busy:.0%} | {notes} |")
    return "\n".join(lines)


def calibration_table(cal: List[Dict[str, Any]]) -> str:
    if not cal:
        return "(calibration skipped)"
    lines = ["| Generator side against a do-nothing sink | Ceiling | Generator CPU s | Sink CPU s | Wall s | Notes |",
             "|---|--:|--:|--:|--:|---|"]
    for c in cal:
        val = f"{c['metrics']['rate']:,.0f}" if c["status"] == "OK" and "rate" in c["metrics"] else c["status"]
        lines.append(f"| {c['label']} | {val} | {c['gen_cpu']:.2f} | {c['sink_cpu']:.2f} | {c['wall']:.2f} | "
                     f"{'; '.join(c.get('notes', []))}{(' ' + c['detail']) if c.get('detail') else ''} |")
    return "\n".join(lines)


def chart(records: List[Dict[str, Any]], scen: List[Scenario], path: str, subtitle: str) -> bool:
    """Horizontal bars of edgebroker/Mosquitto per metric on a log axis; green where edgebroker is
    better, red where it is worse, a FAIL label where there is no ratio. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cs = cells(records, scen)
    labels, values, colors, texts = [], [], [], []
    for sc in scen:
        if sc.run is None:
            continue
        eb, mq = cs[(sc.id, "edgebroker")], cs[(sc.id, "mosquitto")]
        for m in sc.metrics:
            labels.append(f"{sc.id} {m.label} ({m.better} is better)")
            r = ratio(eb.value(m.key), mq.value(m.key))
            if r is None:
                values.append(1.0)
                colors.append("#bbbbbb")
                texts.append(f"eb {eb.text(m)} / mosq {mq.text(m)}")
            else:
                better = r > 1 if m.better == "higher" else r < 1
                values.append(r)
                colors.append("#2a9d55" if better else "#d1495b")
                texts.append(_ratio_text(r))
    if not labels:
        return False
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(labels) + 1.6))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, [v - 1 for v in values], left=1.0, color=colors, height=0.6)
    ax.set_xscale("log")
    lo = min(values + [0.5]) / 1.6
    hi = max(values + [2.0]) * 1.6
    ax.set_xlim(lo, hi)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    for yy, v, t in zip(y, values, texts):
        ax.text(v * (1.05 if v >= 1 else 0.95), yy, t, va="center", ha="left" if v >= 1 else "right", fontsize=7)
    ax.set_xlabel("edgebroker / Mosquitto (log scale); green = edgebroker better, red = worse, grey = no ratio")
    ax.set_title("edgebroker vs Mosquitto, median ratio per metric\n" + subtitle, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---- S9: the cost of persistence ---------------------------------------------------------------------

#: The S9 phases, in report order: S9-* (online stream), S9q-* (queued, drained), S9t-* (a trickle).
S9_PHASES = ("online", "queued", "trickle")


def _s9_groups(records: List[Dict[str, Any]], scen: List[Scenario], phase: str) -> List[Tuple[str, str, List[Dict[str, Any]]]]:
    """(broker, configuration label, that configuration's own runs) per S9 configuration of a phase, in
    scenario order, each configuration once (Mosquitto's runs shared by several pairs count once)."""
    out: List[Tuple[str, str, List[Dict[str, Any]]]] = []
    seen = set()
    for sc in scen:
        if sc.family != "S9" or sc.phase != phase:
            continue
        for kind in KINDS:
            label = sc.labels.get(kind, "")
            if (kind, label) in seen:
                continue
            runs = [r for r in records if r["scenario"] == sc.id and r["broker"] == kind and not r.get("shared_from")]
            if runs:
                seen.add((kind, label))
                out.append((kind, label, runs))
    return out


def _disk_med(runs: List[Dict[str, Any]], key: str) -> Optional[float]:
    return _median([r["disk"][key] for r in runs if r["status"] == "OK" and key in (r.get("disk") or {})])


def _ok_med(values: List[Optional[float]]) -> Optional[float]:
    return _median([v for v in values if v is not None])


def s9_rows(records: List[Dict[str, Any]], scen: List[Scenario], phase: str) -> List[Dict[str, Any]]:
    """Medians per S9 configuration of a phase ("online", "queued" or "trickle")."""
    rows = []
    groups = _s9_groups(records, scen, phase)
    for kind, label, runs in groups:
        ok = [r for r in runs if r["status"] == "OK"]
        row: Dict[str, Any] = dict(broker=kind, config=label, n=len(runs), ok=len(ok),
                                   status="OK" if len(ok) == len(runs) else
                                   next(r["status"] for r in runs if r["status"] != "OK"))
        row["rate"] = _ok_med([r["metrics"].get("rate") for r in ok])
        row["ms"] = _ok_med([r["metrics"].get("ms") for r in ok])
        row["queue_rate"] = _ok_med([r.get("raw", {}).get("publish_rate") for r in ok])
        for key in ("disk_kib_per_1000", "wchar_kib_per_1000", "device_kib_per_1000", "syscw_per_1000",
                    "data_bytes_end", "data_bytes_before_stop", "shutdown_s"):
            row[key] = _disk_med(runs, key)
        row["cpu"] = _ok_med([r.get("broker_cpu") for r in ok])
        rows.append(row)
    # Relative to the same broker with persistence off (the configuration whose options say so).
    off = {r["broker"]: r for r in rows if r["config"].startswith("persistence false")}
    for r in rows:
        base = off.get(r["broker"])
        r["rate_vs_off"] = ratio(r["rate"], base["rate"]) if base else None
        r["ms_vs_off"] = ratio(r["ms"], base["ms"]) if base else None
        r["queue_vs_off"] = ratio(r["queue_rate"], base["queue_rate"]) if base else None
    return rows


def s9_table(records: List[Dict[str, Any]], scen: List[Scenario], phase: str) -> str:
    rows = s9_rows(records, scen, phase)
    if not rows:
        return "(not run)"
    pct = "{:.0%}"
    if phase != "queued":
        head = ("| Broker | Configuration | msg/s | vs its persistence off | disk writes KiB / 1,000 msgs "
                "| file write() KiB / 1,000 | device KiB / 1,000 | write calls / 1,000 | data before SIGTERM KiB "
                "| data after exit KiB | shutdown ms | broker CPU s |")
        lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    else:
        head = ("| Broker | Configuration | queueing msg/s | vs its persistence off | CONNECT to last message, ms "
                "| vs its persistence off | disk writes KiB / 1,000 msgs | file write() KiB / 1,000 | device KiB / 1,000 "
                "| write calls / 1,000 | data before SIGTERM KiB | data after exit KiB | shutdown ms | broker CPU s |")
        lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        status = "" if r["status"] == "OK" else f" **{r['status']} ({r['n'] - r['ok']}/{r['n']})**"
        kib = lambda v: _f(None if v is None else v / 1024, "{:,.0f}")  # noqa: E731
        common = [
            _f(r["disk_kib_per_1000"]), _f(r["wchar_kib_per_1000"]), _f(r["device_kib_per_1000"]),
            _f(r["syscw_per_1000"], "{:,.0f}"), kib(r["data_bytes_before_stop"]), kib(r["data_bytes_end"]),
            _f(None if r["shutdown_s"] is None else r["shutdown_s"] * 1e3, "{:,.0f}"), _f(r["cpu"], "{:.2f}"),
        ]
        if phase != "queued":
            cells_ = [_f(r["rate"], "{:,.0f}"), _f(r["rate_vs_off"], pct)] + common
        else:
            cells_ = [_f(r["queue_rate"], "{:,.0f}"), _f(r["queue_vs_off"], pct), _f(r["ms"], "{:,.1f}"),
                      _f(r["ms_vs_off"], pct)] + common
        lines.append(f"| {r['broker']} | {r['config']}{status} | " + " | ".join(cells_) + " |")
    return "\n".join(lines)


def _find(rows: List[Dict[str, Any]], broker: str, label: str) -> Optional[Dict[str, Any]]:
    for r in rows:
        if r["broker"] == broker and r["config"] == label and r["status"] == "OK":
            return r
    return None


def _x(a: Optional[float], b: Optional[float]) -> str:
    r = ratio(a, b)
    if r is None:
        return "-"
    return f"{r:,.0f}x" if r >= 10 else f"{r:,.1f}x"


def s9_summary(records: List[Dict[str, Any]], scen: List[Scenario], payload: int, rate: float) -> str:
    """The S9 medians in sentences (generated, so that they always match the tables); rate: S9t's pace."""
    out: List[str] = []
    for phase in S9_PHASES:
        rows = s9_rows(records, scen, phase)
        if not rows:
            continue
        conf = {c[0]: c for c in S9_CONFIGS}
        eb = {k: _find(rows, "edgebroker", c[2]) for k, c in conf.items()}
        mq = {"on": _find(rows, "mosquitto", conf["sync"][4]), "as1": _find(rows, "mosquitto", conf["as1"][4]),
              "off": _find(rows, "mosquitto", conf["off"][4])}
        disk = lambda r: "-" if r is None else _f(r["disk_kib_per_1000"])  # noqa: E731
        per_msg = lambda r: "-" if r is None else f"{r['disk_kib_per_1000'] * 1024 / 1000:,.0f} B"  # noqa: E731
        pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
        levels = [k for k in ("sync", "crash", "periodic") if eb[k]]
        if phase == "online":
            speed = "; ".join(f"{k} {_f(eb[k]['rate'], '{:,.0f}')} msg/s ({pct(eb[k]['rate_vs_off'])} of its rate "
                              f"with persistence off)" for k in levels)
            mq_speed = (f"Mosquitto with persistence true: {_f(mq['on']['rate'], '{:,.0f}')} msg/s "
                        f"({pct(mq['on']['rate_vs_off'])} of its rate with persistence off)") if mq["on"] else ""
            out.append(f"- **Online persistent-session QoS 1 stream (S9-\\*)**. Throughput, edgebroker: {speed}. "
                       f"{mq_speed}.")
        elif phase == "trickle":
            out.append(f"- **A trickle through a persistent session (S9t-\\*)**: one QoS 1 message at a time at "
                       f"{rate:g} msg/s, each acknowledged before the next, so each is a loop turn and, at `crash` "
                       f"and `sync`, a commit of its own; the disk figures include the broker's start and exit, "
                       f"which the persistence-off rows show.")
        else:
            speed = "; ".join(f"{k} {_f(eb[k]['queue_rate'], '{:,.0f}')} msg/s queued "
                              f"({pct(eb[k]['queue_vs_off'])} of persistence off), drained in "
                              f"{_f(eb[k]['ms'], '{:,.0f}')} ms" for k in levels)
            mq_speed = (f"Mosquitto with persistence true: {_f(mq['on']['queue_rate'], '{:,.0f}')} msg/s queued, "
                        f"drained in {_f(mq['on']['ms'], '{:,.0f}')} ms") if mq["on"] else ""
            out.append(f"- **Queued for an offline persistent session, then drained (S9q-\\*)**. edgebroker: "
                       f"{speed}. {mq_speed}.")
        if mq["on"]:
            per = "; ".join(f"{k} {disk(eb[k])} KiB (about {per_msg(eb[k])} per {payload}-byte message, "
                            f"{_x(eb[k]['disk_kib_per_1000'], mq['on']['disk_kib_per_1000'])} Mosquitto's figure)"
                            for k in levels)
            floor = (f" With persistence off both write only their log: {disk(eb['off'])} KiB (edgebroker), "
                     f"{disk(mq['off'])} KiB (Mosquitto) per 1,000 messages; Mosquitto's autosave_interval 1800 "
                     f"figure is that plus one small save at exit, so the ratios to it mostly say that it writes "
                     f"nothing for the messages themselves during the run." if eb["off"] and mq["off"] else "")
            out.append(f"  Disk writes per 1,000 messages (write_bytes, start to exit): edgebroker {per}; Mosquitto "
                       f"with autosave_interval 1800: {disk(mq['on'])} KiB.{floor}")
        if eb["as1"] and mq["as1"]:
            out.append(f"  Both saving every second (autosave_interval 1), the like-for-like save frequency: edgebroker "
                       f"{disk(eb['as1'])} KiB, Mosquitto {disk(mq['as1'])} KiB per 1,000 messages "
                       f"({_x(eb['as1']['disk_kib_per_1000'], mq['as1']['disk_kib_per_1000'])}); drained in "
                       f"{_f(eb['as1']['ms'], '{:,.0f}')} and {_f(mq['as1']['ms'], '{:,.0f}')} ms.")
    return "\n".join(out)
