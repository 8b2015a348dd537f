"""The shared codecs under real MicroPython 1.27 (WebAssembly port, node): the same vectors as CPython.

MicroPython computes what each vector of docs/serial-protocol.md describes (an encoding, a decoded
frame, a refusal reason, a line's publishes) and prints one JSON line per vector; the test compares
them with the document, so a construct MicroPython lacks or runs differently fails here.
"""
from __future__ import annotations

import json

import pytest

from micropython_runner import MicroPythonError, firmware_files, run
from serialvectors import load_vectors

# Runs under MicroPython: computes the outcome of every vector from its inputs only.
_VECTOR_PROGRAM = r"""
import json
import frames as F
import lines as L

TYPES = {"publish": F.PUBLISH, "subscribe": F.SUBSCRIBE, "ack": F.ACK, "ping": F.PING}
NAMES = {F.PUBLISH: "publish", F.SUBSCRIBE: "subscribe", F.ACK: "ack", F.PING: "ping"}

def unhex(text):
    return bytes.fromhex(text.replace(" ", ""))

def sp(data):
    return " ".join(["%02x" % b for b in data])

def describe(event):
    if isinstance(event, F.Bad):
        return {"bad": event.reason}
    return {"frame": NAMES[event.kind], "id": event.msg_id, "qos": event.qos, "retain": event.retain,
            "topic": event.topic, "payload_hex": sp(event.payload)}

for v in json.loads(VECTORS):
    out = {"_line": v["_line"]}
    if "crc16" in v:
        out["value"] = "%04x" % F.crc16(v["crc16"].encode())
    elif "cobs" in v:
        out["encoded"] = sp(F.cobs_encode(unhex(v["cobs"])))
        out["decoded"] = sp(F.cobs_decode(unhex(v["encoded"])))
    elif "frame" in v:
        payload = unhex(v["payload_hex"]) if "payload_hex" in v else v["payload"].encode()
        kind = TYPES[v["frame"]]
        out["body"] = sp(F.encode_body(kind, v["id"], v["topic"], payload, v["qos"], v["retain"]))
        out["wire"] = sp(F.encode(kind, v["id"], v["topic"], payload, v["qos"], v["retain"]))
        out["events"] = [describe(e) for e in F.FrameDecoder().feed(unhex(v["wire"]))]
    elif "decode" in v:
        decoder = F.FrameDecoder(v.get("max_length", F.DEFAULT_MAX_LENGTH))
        out["events"] = [describe(e) for e in decoder.feed(unhex(v["decode"]))]
    elif "input" in v:
        decoder = L.LineDecoder(v.get("max_length", L.DEFAULT_MAX_LENGTH))
        events = decoder.feed(v["input"].encode())
        result = []
        for e in events:
            if isinstance(e, bytes):
                e = L.parse(v["format"], e)
            if isinstance(e, F.Bad):
                result.append({"bad": e.reason})
            else:
                result.append({"publishes": [[t, p.decode()] for t, p in e]})
        out["events"] = result
    print(json.dumps(out))
"""


def _hex(data: bytes) -> str:
    return " ".join("%02x" % b for b in data)


def test_runner_is_real_micropython_and_reports_exceptions():
    out = run("import sys\nprint(sys.implementation.name, sys.implementation.version[:2])")
    assert out.split() == ["micropython", "(1,", "27)"]
    with pytest.raises(MicroPythonError, match="ValueError: boom"):
        run("print('before')\nraise ValueError('boom')")
    # A construct CPython has and MicroPython lacks fails there: the check is not vacuous.
    with pytest.raises(MicroPythonError):
        run("b = bytearray(b'abc')\ndel b[:1]")


def test_no_crc_hqx_on_micropython_so_the_table_runs():
    out = run("import frames\nimport binascii\nprint(hasattr(binascii, 'crc_hqx'), frames.crc16 is frames.crc16_py,"
              " hex(frames.crc16(b'123456789')))", firmware_files("frames.py"))
    assert out.split() == ["False", "True", "0x29b1"]


def test_vectors_under_micropython():
    vectors = load_vectors()
    program = "VECTORS = " + repr(json.dumps(vectors)) + "\n" + _VECTOR_PROGRAM
    out = run(program, firmware_files("frames.py", "lines.py"))
    results = {r["_line"]: r for r in map(json.loads, out.splitlines())}
    assert len(results) == len(vectors)
    for v in vectors:
        got = results[v["_line"]]
        where = f"docs/serial-protocol.md:{v['_line']}"
        if "crc16" in v:
            assert got["value"] == v["value"], where
        elif "cobs" in v:
            assert (got["encoded"], got["decoded"]) == (v["encoded"], v["cobs"]), where
        elif "frame" in v:
            assert (got["body"], got["wire"]) == (v["body"], v["wire"]), where
            payload = v["payload_hex"] if "payload_hex" in v else _hex(v["payload"].encode())
            expected = {"frame": v["frame"], "id": v["id"], "qos": v["qos"], "retain": v["retain"],
                        "topic": v["topic"], "payload_hex": payload}
            assert got["events"] == [expected], where
        elif "decode" in v:
            assert got["events"] == [{"bad": v["bad"]}], where
        else:
            if "bad" in v:
                assert got["events"] == [{"bad": v["bad"]}], where
            else:
                # MicroPython's dicts keep no insertion order: a JSON line's keys may come out in
                # another order there (the broker runs CPython, which keeps the line's order).
                (event,) = got["events"]
                assert sorted(map(tuple, event["publishes"])) == sorted(map(tuple, v["publishes"])), where


def test_random_garbage_under_micropython_never_raises():
    # A board decodes what the broker sends; noise on its UART must not crash its main loop.
    program = """
import frames, lines
import random
random.seed(7)
fd = frames.FrameDecoder(64)
ld = lines.LineDecoder(64)
count = 0
for _ in range(300):
    chunk = bytes([random.getrandbits(8) for _ in range(random.getrandbits(6))])
    count += len(fd.feed(chunk)) + len(ld.feed(chunk))
    assert fd.pending() <= 64
good = frames.encode_publish("t", b"1", 1, False, 5)
print(count > 0, fd.feed(b"\\x00" + good)[-1] == frames.Frame(frames.PUBLISH, 5, "t", b"1", 1))
"""
    assert run(program, firmware_files("frames.py", "lines.py")).split() == ["True", "True"]
