"""bench/footprint.py, the memory breakdown of issue 19, keeps working: each table comes out with a
figure in every row, and the queue it builds is really drained (its client waits for every message)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_table_comes_out_with_figures():
    out = subprocess.run([sys.executable, "-m", "bench.footprint", "--queued", "300"], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for heading in ("## The interpreter alone", "## The broker's imports", "## A running broker"):
        assert heading in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    imports = [row for row in rows if row.startswith("| `edgebroker.")]
    assert len(imports) == 2 * 11  # with and without site (_sqlite3 as the store imports it: a row of ours)
    states = {row.split("|")[1].strip(): row for row in rows}
    for state in ("started again, existing database", "started with -c edgebroker.toml",
                  "started with -c FILE.conf (mosquitto.conf syntax: persistence false)",
                  "started with -c, a TLS listener, one TLS client connected",
                  "started with -c, a password file, one client logged in ($7$, 101 iterations)",
                  "300 QoS 1 messages of 64 B queued for an offline session", "after the session drained them"):
        assert re.search(r"\| \d+\.\d \| \d+\.\d \|", states[state]), state
    assert re.search(r"Per queued message: -?\d+ bytes", text)
