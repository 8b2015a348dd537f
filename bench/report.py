"""Turning run records into medians, a Markdown report and a ratio chart."""
from __future__ import annotations

import os
import statistics
from typing import Any, Dict, List, Optional, Tuple

from .scenarios import Metric, Scenario

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
                _f(r, "{:.2f}"),
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
                texts.append(f"{r:.2f}")
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
