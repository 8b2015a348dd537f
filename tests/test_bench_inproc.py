"""bench/inproc.py, the in-process A/B tool for the hot path, keeps working as the core changes: each
case runs a few hundred messages and every message it sends reaches its subscriber(s)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_case_runs_and_prints_a_figure():
    out = subprocess.run([sys.executable, "-m", "bench.inproc", "--scale", "0.001"], cwd=str(ROOT),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert str(ROOT / "edgebroker") in lines[0]
    figures = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    assert set(figures) == {"Q0", "Q1", "FAN", "Q1P"}
    assert all(value > 0 for value in figures.values())


def test_the_loop_cases_run_the_real_loop():
    """TURN and TURNX wait for each message at the subscriber before sending the next, CONNL for each
    connection's CONNACK and SUBACK (checked) before the next, LIFE also for the broker's close after
    the client's (and fails if a connection is left open): a run that finishes delivered every message,
    answered every handshake and closed every connection, through serve_forever's thread."""
    out = subprocess.run([sys.executable, "-m", "bench.inproc", "--cases", "TURN,TURNX,CONNL,LIFE", "--scale",
                          "0.01"], cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    figures = {line.split()[0]: float(line.split()[1]) for line in out.stdout.splitlines()[1:]}
    assert set(figures) == {"TURN", "TURNX", "CONNL", "LIFE"}
    assert all(value > 0 for value in figures.values())


def test_the_cases_deliver_what_they_count(monkeypatch):
    """The cases measure real work: a QoS 1 case whose messages were not delivered and acknowledged
    would spin on an empty window; check the subscriber's side directly."""
    sys.path.insert(0, str(ROOT))
    from bench import inproc
    delivered = []
    real_taken = inproc._taken

    def taken(conn):
        delivered.append(b"".join(conn.out).count(b"bench/"))
        real_taken(conn)
    monkeypatch.setattr(inproc, "_taken", taken)
    inproc.case_q0(1000)
    assert sum(delivered) >= 1000
    delivered.clear()
    inproc.case_q1(640)
    assert sum(delivered) >= 640
    for case in ("DRAIN", "DRAINU", "DRAIN1"):
        delivered.clear()
        inproc.CASES[case](300)
        assert sum(delivered) >= 300, case


def test_the_connection_case_gets_every_connack_and_suback(monkeypatch):
    """CONN measures whole handshakes: each connection is answered CONNACK accepted and SUBACK QoS 0."""
    sys.path.insert(0, str(ROOT))
    from bench import inproc
    answers = []
    real_taken = inproc._taken

    def taken(conn):
        answers.append(b"".join(conn.out))
        real_taken(conn)
    monkeypatch.setattr(inproc, "_taken", taken)
    inproc.case_conn(200)
    assert len(answers) == 200
    assert all(a == b"\x20\x02\x00\x00\x90\x03\x00\x01\x00" for a in answers)
