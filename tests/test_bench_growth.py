"""bench/growth.py, what a scenario's load adds to edgebroker's resident memory (issue 19, the QoS 1/2
rows), keeps working: a round prints its start, peak and growth, and `--detail` splits it (pymalloc's
pools, the anonymous mappings) and names what each connection held at most, from a broker that ran
the load under its wrapper."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_round_with_detail_prints_the_growth_and_where_it_went():
    out = subprocess.run([sys.executable, "-m", "bench.growth", "--scenarios", "S2", "--rounds", "1", "--quick",
                          "--detail"], cwd=str(ROOT), capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"^S2 +round 1: OK, start \d+\.\d\d MiB, peak \d+\.\d\d MiB, growth -?[\d,]+ KiB$", text, re.M), text
    assert re.search(r"VmRSS [\d,]+ -> [\d,]+ KiB \(anonymous", text), text
    assert re.search(r"pymalloc: pools in use [\d,]+ -> [\d,]+, free pools [\d,]+ -> [\d,]+, "
                     r"free 20-item tuples [\d,]+ -> [\d,]+", text), text
    # the subscriber's session had QoS 1 messages in flight (at most the default window of 20)
    held = re.search(r"most held at once for bench-s2-sub0: .*in flight (\d+)", text)
    assert held and 1 <= int(held.group(1)) <= 20, text
