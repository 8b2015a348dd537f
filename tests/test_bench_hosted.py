"""The bench's own code for scenarios that start their own processes (bridges B1-B3, serial SER-*):
they are part of the main runner's list, selectable by family, and the runner turns what they report
into a row of the results table with its ratio and the measured broker's columns. No broker, no
process, no timing: the measurements themselves are `python -m bench --scenarios B,SER`."""
from __future__ import annotations

from bench import report, run
from bench.scenarios import FULL, QUICK, Metric, Outcome, Scenario, scenarios

HOSTED = ["B1", "B2", "B3", "SER-lines", "SER-S1", "SER-latency"]


def test_bridge_and_serial_rows_are_scenarios_of_the_main_runner_at_both_sizes():
    for sz in (FULL, QUICK):
        by_id = {s.id: s for s in scenarios(sz)}
        assert [i for i in by_id if by_id[i].hosted] == HOSTED
        assert {by_id[i].family for i in HOSTED} == {"B", "SER"}
        for i in HOSTED:
            assert by_id[i].run is not None and by_id[i].metrics
            # a full run stays near 10 minutes; B1 (a few seconds a round) takes the median of three
            assert 0 < by_id[i].max_rounds <= (3 if i == "B1" else 2)
    assert QUICK.b1_count < FULL.b1_count and QUICK.ser_lines < FULL.ser_lines


def _hosted(fn):
    return Scenario("X1", "test", (Metric("rate", "msg/s", "higher"),), fn, hosted=True)


def test_a_hosted_run_becomes_a_record_with_the_measured_brokers_cpu_and_peak_rss():
    seen = []

    def fake(kind, sz, timeout):
        seen.append((kind, sz, timeout))
        o = Outcome(metrics={"rate": 200.0 if kind == "edgebroker" else 100.0}, gen_cpu=0.5, wall=2.0)
        o.broker_cpu, o.hwm_kib = 1.25, 4096
        return o

    sc = _hosted(fake)
    records = [run.run_one(kind, sc, QUICK, 7.0, 1) for kind in ("edgebroker", "mosquitto")]
    assert seen == [("edgebroker", QUICK, 7.0), ("mosquitto", QUICK, 7.0)]
    assert records[0]["broker_cpu"] == 1.25 and records[0]["hwm_kib"] == 4096 and records[0]["status"] == "OK"
    row = report.results_table(records, [sc]).splitlines()[2]
    assert row.split("|")[1:7] == [" X1 ", " msg/s ", " higher ", " 200 ", " 100 ", " 2.00 "]
    assert "4.0 / 4.0" in row and "1.25 / 1.25" in row


def test_a_hosted_run_that_raises_is_one_error_row_not_a_crash():
    def broken(kind, sz, timeout):
        raise RuntimeError("timed out waiting for the bridge")

    rec = run.run_one("edgebroker", _hosted(broken), QUICK, 7.0, 1)
    assert rec["status"] == "ERROR" and "timed out waiting for the bridge" in rec["detail"]
    assert report.failures([rec]).startswith("- X1 on edgebroker, round 1: **ERROR**")
