"""edgebroker.tomlread: the TOML parser, imported without `typing` when nothing else has imported it.

Each case runs in a fresh interpreter (from 3.11 with -S, no site hooks; tomli is in site-packages),
since this test process has imported typing long ago. The parser imported with typing's stand-in must parse and refuse exactly as the one this
process imported the ordinary way; a parser that asks typing for a name the stand-in lacks must end up
imported with the real typing, working.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgebroker.tomlread import _NAME, toml

ROOT = Path(__file__).resolve().parent.parent

#: Every kind of TOML value and table, and documents the parser refuses.
DOCUMENT = '''
title = "basic \\u00e9 \\t string"
literal = 'C:\\path'
multi = """
two
lines"""
int = 1_000
hex = 0xff
neg = -17
float = 6.02e23
inf = inf
yes = true
offset = 1979-05-27T07:32:00-08:00
local = 1979-05-27T07:32:00.5
day = 1979-05-27
time = 07:32:00
array = [1, [2, 3], "x"]
inline = { a = 1, b.c = "d" }
dotted.key = 2
[table]
"quoted key" = [ { x = 1 }, { y = 2 } ]
[[tables]]
n = 1
[[tables]]
n = 2
'''
BAD = ["a = ", "a = 1\na = 2", "[t]\n[t]", "x = [1,", "= 1", "a = 1979-13-01", 'b = "\\q"', "c = 1__0"]

PROBE = """
import sys
from edgebroker import tomlread
if sys.argv[2]:
    tomlread._NAME = sys.argv[2]  # another parser package
parser = tomlread.toml()
print(repr(parser.loads(sys.argv[1])))
for bad in sys.argv[3:]:
    try:
        parser.loads(bad)
    except parser.TOMLDecodeError as exc:
        print(type(exc).__name__, isinstance(exc, ValueError), exc)
print("typing" in sys.modules, type(sys.modules.get("typing")).__name__)
"""


def _probe(document: str, bad: list, package: str = "", path: str = "") -> list:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), path) if p))
    flags = ["-S"] if sys.version_info >= (3, 11) else []
    out = subprocess.run([sys.executable] + flags + ["-c", PROBE, document, package] + bad, env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_the_parser_without_typing_parses_and_refuses_as_the_ordinary_one():
    lines = _probe(DOCUMENT, BAD)
    ordinary = toml()  # this process has typing: the ordinary import
    assert "typing" in sys.modules and ordinary is sys.modules[_NAME]
    assert lines[0] == repr(ordinary.loads(DOCUMENT))
    refused = []
    for bad in BAD:
        try:
            ordinary.loads(bad)
        except ordinary.TOMLDecodeError as exc:
            refused.append(f"{type(exc).__name__} True {exc}")
    assert lines[1:-1] == refused and len(refused) == len(BAD)
    assert lines[-1] == "False NoneType"  # and typing never imported


def test_a_parser_that_needs_more_of_typing_gets_the_real_one(tmp_path):
    # `cast` is not in the stand-in: the first import fails, the second one imports typing.
    package = tmp_path / "needsmore"
    package.mkdir()
    (package / "__init__.py").write_text(
        "from typing import Any, cast\n"
        "from ._parser import TOMLDecodeError\n"
        "def loads(s: str) -> Any:\n"
        "    if s.startswith('bad'):\n"
        "        raise TOMLDecodeError(s)\n"
        "    return cast(dict, {'parsed': s})\n")
    (package / "_parser.py").write_text("class TOMLDecodeError(ValueError):\n    pass\n")
    lines = _probe("x = 1", ["bad one"], "needsmore", path=str(tmp_path))
    assert lines == ["{'parsed': 'x = 1'}", "TOMLDecodeError True bad one", "True module"]


LAZY_PROBE = """
import sys
from edgebroker import tomlread
parser = tomlread.toml()
names = ("re", "enum", "string", "datetime", "typing", "functools", "collections", "types")
for document in sys.argv[1:]:
    print(repr(parser.loads(document)), *[n for n in names if n in sys.modules])
"""

#: What a configuration holds: integers (signed, zero), strings, booleans, arrays, tables.
PLAIN = '''port = 1883
log_dest = ["stderr", 'syslog']
persistence = true
zero = 0
offset = -17
inline = { a = +2, b = "c" }
[[listener]]
port = 8883
'''


def test_re_and_datetime_come_only_with_a_value_that_needs_them():
    # The stand-ins for re, string and datetime (edgebroker/tomlread.py): a plain configuration parses
    # without them (nor functools, collections or types, whose stand-ins stay); a float, a hexadecimal integer or a date imports what it needs and is parsed as the
    # ordinary parser parses it, and so is everything after.
    if sys.version_info < (3, 11):
        pytest.skip("tomli is in site-packages: the probe cannot run with -S, and a venv's site hooks (an "
                    "editable install's) may import re first")
    later = ["f = 6.02e23", "h = 0xff", "d = 1979-05-27", "t = 07:32:00", PLAIN]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-S", "-c", LAZY_PROBE, PLAIN] + later, env=env, cwd=str(ROOT),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    ordinary = toml()
    real = " functools collections types"  # the real re and enum import them
    assert lines[0] == repr(ordinary.loads(PLAIN))  # nothing imported
    assert lines[1] == repr(ordinary.loads(later[0])) + " re enum" + real
    assert lines[2] == repr(ordinary.loads(later[1])) + " re enum" + real
    assert lines[3] == repr(ordinary.loads(later[2])) + " re enum datetime" + real
    assert lines[4] == repr(ordinary.loads(later[3])) + " re enum datetime" + real
    assert lines[5] == repr(ordinary.loads(PLAIN)) + " re enum datetime" + real
