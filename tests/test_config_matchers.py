"""The configuration file's readers match without `re` (issue 19: re and the enum it imports are about
0.6 MiB of a broker started with -c): each written-out matcher against the regular expression it stands
for, on generated text, so that no configuration reads differently.

- configread: whole_number, decimal_number, parse_duration, and _TomlLines (the line a key is on);
- configfile: a mosquitto.conf line's option and value;
- auth: a password file's base64 (base64.b64decode with validate=True);
- tomlread: the stand-in patterns tomllib compiles while it is imported without re.
"""
from __future__ import annotations

import base64
import binascii
import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from edgebroker import configread, tomlread
from edgebroker.auth import _b64
from edgebroker.configread import _TomlLines, decimal_number, parse_duration, whole_number

#: Characters that matter to the patterns, Unicode digits and spaces among them.
TOKEN = st.text(alphabet="0123456789+-._eExXbBoOhdwmyz \t\u0660\u00b2\u2003\u00a0:TZ", max_size=12)


@settings(max_examples=3000)
@given(TOKEN)
def test_number_tokens_as_the_patterns_read_them(token):
    assert whole_number(token) == bool(re.fullmatch(r"[+-]?\d+", token))
    assert decimal_number(token) == bool(re.fullmatch(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", token))
    assert token.isdecimal() == bool(re.fullmatch(r"\d+", token))
    m = re.fullmatch(r"(\d+)([hdwmy])", token)
    try:
        seconds = parse_duration(token)
    except ValueError:
        seconds = None
    if m is None:
        assert seconds is None
    else:
        scale = {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}[m.group(2)]
        expected = int(m.group(1)) * scale
        assert seconds == (expected if expected > 0 else None)


class _RegexLines:
    """_TomlLines as it was written with re (before issue 19's cut): the reference."""

    _HEADER = re.compile(r"\s*\[")

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")

    @staticmethod
    def _key_re(key: str) -> re.Pattern:
        k = re.escape(key)
        return re.compile(rf"\s*(?:{k}|\"{k}\"|'{k}')\s*[=.]")

    def top(self, key: str):
        pattern = self._key_re(key)
        for number, line in enumerate(self.lines, 1):
            if self._HEADER.match(line):
                break
            if pattern.match(line):
                return number
        header = re.compile(rf"\s*\[\[?\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*[].]")
        for number, line in enumerate(self.lines, 1):
            if header.match(line):
                return number
        return None

    def header(self, table: str, index: int):
        pattern = re.compile(rf"\s*\[\[\s*{re.escape(table)}\s*\]\]")
        seen = -1
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                seen += 1
                if seen == index:
                    return number
        return None

    def in_table(self, table: str, index: int, key: str):
        start = self.header(table, index)
        if start is None:
            return None
        pattern = self._key_re(key)
        for number in range(start + 1, len(self.lines) + 1):
            line = self.lines[number - 1]
            if self._HEADER.match(line):
                return None
            if pattern.match(line):
                return number
        return None


KEYS = st.sampled_from(["a", "ab", " a", "a ", "[a", "a]", '"a', "a.b", "", "\u2003a"])
LINE = st.lists(st.sampled_from(["a", "b", "ab", " ", "\t", "\u2003", "\u00a0", "[", "]", "[[", "]]", "=", ".",
                                 '"', "'", "#", "1"]), max_size=9).map("".join)


@settings(max_examples=3000)
@given(st.lists(LINE, min_size=1, max_size=6), KEYS, KEYS, st.integers(0, 2))
def test_the_line_of_a_key_as_the_patterns_find_it(lines, key, table, index):
    text = "\n".join(lines)
    ours, theirs = _TomlLines(text), _RegexLines(text)
    assert ours.top(key) == theirs.top(key)
    assert ours.header(table, index) == theirs.header(table, index)
    assert ours.in_table(table, index, key) == theirs.in_table(table, index, key)


def test_the_line_of_a_key_in_a_real_file():
    text = ('# c\nport = 1883\n"max_queued_messages" = 5\n log.type = 1\n[[listener]]\nport = 8883\n'
            '[[ listener ]]\n  address = "::1"\n[bridge.x]\n')
    for lines in (_TomlLines(text), _RegexLines(text)):
        assert (lines.top("port"), lines.top("max_queued_messages"), lines.top("log"), lines.top("bridge"),
                lines.top("listener"), lines.top("address")) == (2, 3, 4, 9, 5, None)
        assert (lines.header("listener", 0), lines.header("listener", 1), lines.header("listener", 2)) == (5, 7, None)
        assert (lines.in_table("listener", 0, "port"), lines.in_table("listener", 1, "address")) == (6, 8)


@settings(max_examples=2000)
@given(st.text(alphabet=" \t\u2003\u00a0\x1cab=#[\r", min_size=1, max_size=12))
def test_a_mosquitto_line_splits_as_the_pattern_does(raw):
    line = raw.strip()
    if not line:
        return
    m = re.match(r"(\S+)\s*(.*)$", line)
    parts = line.split(None, 1)
    assert (parts[0], parts[1].strip() if len(parts) > 1 else "") == (m.group(1), m.group(2).strip())


@settings(max_examples=3000)
@given(st.one_of(st.text(alphabet="AZaz09+/=\u00e9 \n-_.", max_size=14),
                 st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
                 st.tuples(st.binary(max_size=40), st.integers(0, 3)).map(
                     lambda t: base64.b64encode(t[0]).decode().rstrip("=") + "=" * t[1])))
def test_a_password_files_base64_decodes_as_base64_does(text):
    try:
        expected = base64.b64decode(text, validate=True) if text else None
    except (binascii.Error, ValueError):
        expected = None
    assert _b64(text) == expected


# ---- tomllib's patterns ------------------------------------------------------------------------

def _tomllib_patterns():
    """The patterns of this Python's TOML parser, as it compiled them (this process imported it with the
    real re)."""
    parser = tomlread.toml()
    module = __import__(parser.__name__ + "._re", fromlist=["RE_NUMBER"])
    return [module.RE_NUMBER, module.RE_LOCALTIME, module.RE_DATETIME]


VALUE = st.text(alphabet="0123456789+-_.eExbo:TtZz ab\u0660", max_size=16)


def _same(real, stand_in, src, pos):
    expected, got = real.match(src, pos), stand_in.match(src, pos)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert (got.end(), got.group(), got.group("floatpart") if "floatpart" in real.groupindex else None) == \
        (expected.end(), expected.group(), expected.group("floatpart") if "floatpart" in real.groupindex else None)
    assert got.groups() == expected.groups() and got.start() == expected.start()


@settings(max_examples=4000)
@given(VALUE, st.integers(0, 4))
def test_tomllibs_patterns_match_as_the_real_ones(src, pos):
    for real in _tomllib_patterns():
        stand_in = tomlread._Pattern(real.pattern, real.flags & ~re.UNICODE)
        _same(real, stand_in, src, pos)


def test_the_stand_in_patterns_know_tomllibs_and_stay_uncompiled_for_plain_values():
    reals = _tomllib_patterns()
    number, localtime, date = (tomlread._Pattern(p.pattern, p.flags & ~re.UNICODE) for p in reals)
    assert (number.kind, localtime.kind, date.kind) == ("number", "time", "date")
    for src, pos in (("1883", 0), ("port = 1883", 7), ("-17]", 0), ("0,", 0), ("+5 }", 0), ("true", 0),
                     ('"x"', 0), ("12,", 0), ("2026]", 0), ("32:00", 0)):
        for real, stand_in in zip(reals, (number, localtime, date)):
            expected, got = real.match(src, pos), stand_in.match(src, pos)  # what tomllib asks of a match:
            assert (got is None) == (expected is None)
            if got is not None:
                assert (got.end(), got.group(), got.group("floatpart")) == \
                    (expected.end(), expected.group(), expected.group("floatpart"))
    assert number.real is None and localtime.real is None and date.real is None
    # what needs the real pattern gets it, and keeps it
    assert number.match("6.02e23").group() == "6.02e23" and number.real is not None
    assert date.match("1979-05-27").groups()[:3] == ("1979", "05", "27") and date.real is not None
    other = tomlread._Pattern("[a-z]+")
    assert other.kind == "" and other.match("ab1").group() == "ab" and other.pattern == "[a-z]+"


def test_the_stand_in_modules_have_what_tomllib_takes():
    stand_ins = tomlread._stand_ins()
    for name in ("ascii_letters", "digits", "hexdigits"):
        assert getattr(stand_ins["string"], name) == getattr(string, name)
    assert stand_ins["re"].VERBOSE == re.VERBOSE
    lazy = stand_ins["datetime"]
    import datetime
    assert lazy.date(2026, 12, 6) == datetime.date(2026, 12, 6) and type(lazy.date(2026, 12, 6)) is datetime.date
    assert lazy.timezone.utc is datetime.timezone.utc
    assert lazy.datetime(1979, 5, 27, 7, 32, tzinfo=lazy.timezone(lazy.timedelta(hours=-8))) == \
        datetime.datetime(1979, 5, 27, 7, 32, tzinfo=datetime.timezone(datetime.timedelta(hours=-8)))
