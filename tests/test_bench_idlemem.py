"""bench/idlemem.py, the per-connection memory of issue 19 (S6), keeps working: its rounds connect every
connection (the tool checks each CONNACK and SUBACK) and print figures, and the heap table names the
lines that allocate a connection's objects."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_rounds_and_heap_table_come_out_with_figures():
    out = subprocess.run([sys.executable, "-m", "bench.idlemem", "--conns", "40", "--rounds", "1", "--trace"],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"^\| 1 \| -?\d+\.\d{3} \| \d+\.\d \| \d+\.\d{3} \| -?\d+\.\d{3} \| \d+\.\d \|$", text, re.M), text
    assert re.search(r"Python heap per connection \(tracemalloc\): \d+ bytes", text), text
    assert "Connection(" in text and "Session(" in text, text
