"""What both configuration syntaxes share below the option tables: where an option was set (`Origin`),
the kinds of value, and how each syntax reads a value of a kind, with errors naming file, line and option.

configfile.py (global options, listeners, devices, the builder) and configbridge.py (bridge blocks) read
files with these. The names keep their leading underscore: they are the readers' internals, not an API.
"""
from __future__ import annotations

from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, NamedTuple, Optional, Protocol, Sequence, Tuple
else:
    from .record import NamedTuple


class Origin(NamedTuple):
    """Where an option was set: file, line (None when unknown) and the option as the file spells it."""
    file: str
    line: Optional[int]
    option: str


if TYPE_CHECKING:
    class _Warns(Protocol):
        """What the value readers need of the builder: somewhere to put a warning."""

        def warn(self, origin: Origin, message: str) -> None: ...

# Kinds of value. Mosquitto's syntax has one whitespace-free token for numbers and booleans, and the rest
# of the line for strings (paths may contain spaces); TOML has typed values.
_INT, _FLOAT, _BOOL, _STR, _DURATION, _ENUM = "int", "float", "bool", "str", "duration", "enum"


def parse_duration(text: str) -> int:
    """Mosquitto's duration syntax, in seconds: a whole number and one of h d w m y (hour, day, week,
    month = 30 days, year = 365 days), e.g. `2d`. ValueError otherwise, and for 0."""
    if len(text) < 2 or not text[:-1].isdecimal() or text[-1] not in "hdwmy":
        raise ValueError(text)
    seconds = int(text[:-1]) * {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}[text[-1]]
    if seconds <= 0:
        raise ValueError(text)
    return seconds


# ---- errors located at an option ----------------------------------------------------------------

def _bare(exc: ConfigError) -> str:
    """The message of a ConfigError without its `option: ` prefix (Config raises without file/line)."""
    text = str(exc)
    prefix = f"{exc.option}: " if exc.option else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _relocate(exc: ConfigError, origin: Origin) -> ConfigError:
    return ConfigError(_bare(exc), origin.file, origin.line, origin.option)


def _error(origin: Origin, message: str) -> ConfigError:
    return ConfigError(message, origin.file, origin.line, origin.option)


def _unknown(origin: Origin, known: List[str]) -> ConfigError:
    import difflib  # only for an unknown option: not worth its memory for the broker's whole life

    close = difflib.get_close_matches(origin.option, known, n=1, cutoff=0.7)
    return _error(origin, "unknown option" + (f" (did you mean {close[0]}?)" if close else ""))


# ---- mosquitto.conf values: the rest of an `option value` line ---------------------------------

def _m_token(origin: Origin, rest: str) -> str:
    """The one whitespace-free value of a line. A `# comment` after it is allowed (Mosquitto reads one
    token and ignores the rest); any other extra text is an error (Mosquitto would ignore it silently)."""
    if not rest:
        raise _error(origin, "missing value")
    parts = rest.split(None, 1)
    if len(parts) > 1 and not parts[1].startswith("#"):
        raise _error(origin, f"expected one value, got {rest!r}")
    return parts[0]


def _m_string(origin: Origin, rest: str, builder: _Warns) -> str:
    """The rest of the line, as Mosquitto takes strings (paths may contain spaces)."""
    if not rest:
        raise _error(origin, "missing value")
    if " #" in rest or "\t#" in rest:
        builder.warn(origin, f"the value is {rest!r}: for this option Mosquitto and edgebroker take the "
                             "whole rest of the line, so a trailing comment is part of it")
    return rest


def _m_int(origin: Origin, rest: str) -> int:
    token = _m_token(origin, rest)
    if not whole_number(token):
        raise _error(origin, f"expected a whole number, got {token!r}")
    return int(token)


def _m_bool(origin: Origin, rest: str) -> bool:
    token = _m_token(origin, rest)
    if token not in ("true", "false"):
        raise _error(origin, f"expected true or false, got {token!r}")
    return token == "true"


# ---- TOML values and lines ---------------------------------------------------------------------

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "a table"}


def _t_describe(value: Any) -> str:
    return f"{value!r} ({_TYPE_NAMES.get(type(value), type(value).__name__)})"


def _t_value(kind: str, origin: Origin, value: Any, choices: Tuple[str, ...] = ()) -> Any:
    """A TOML value of `kind`; an _ENUM must be one of `choices`."""
    if kind == _INT:
        if type(value) is not int:
            raise _error(origin, f"expected an integer, got {_t_describe(value)}")
        return value
    if kind == _FLOAT:
        if type(value) not in (int, float):
            raise _error(origin, f"expected a number of seconds, got {_t_describe(value)}")
        return float(value)
    if kind == _BOOL:
        if type(value) is not bool:
            raise _error(origin, f"expected true or false, got {_t_describe(value)}")
        return value
    if kind == _DURATION:
        if type(value) in (int, float):
            return float(value)
        if type(value) is str:
            try:
                return float(parse_duration(value))
            except ValueError:
                pass
        raise _error(origin, "expected seconds or a duration such as \"2d\" (h d w m y: hour, day, week, "
                             f"month, year), got {_t_describe(value)}")
    if type(value) is not str:
        raise _error(origin, f"expected a string, got {_t_describe(value)}")
    if kind == _ENUM and value not in choices:
        raise _error(origin, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _t_strings(origin: Origin, value: Any) -> List[str]:
    """A string or an array of strings."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(type(v) is str for v in items):
        raise _error(origin, f"expected a string or an array of strings, got {_t_describe(value)}")
    return list(items)


def whole_number(token: str) -> bool:
    """`[+-]?\\d+` (digits as re's \\d: Unicode decimals, which int() reads): written out, since a
    configuration file's reader imports no `re` (about 0.6 MiB with the enum it imports)."""
    return (token[1:] if token[:1] in ("+", "-") else token).isdecimal()


def decimal_number(token: str) -> bool:
    """`[+-]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)`, as whole_number()."""
    whole, dot, fraction = (token[1:] if token[:1] in ("+", "-") else token).partition(".")
    if not dot:
        return whole.isdecimal()
    return (whole.isdecimal() and (not fraction or fraction.isdecimal())) or (not whole and fraction.isdecimal())


def _then(line: str, starts: List[int], texts: Sequence[str]) -> List[int]:
    """Where `\\s*(?:texts[0]|texts[1]|...)` ends in `line` when tried at each of `starts`, every way
    re would try it (whitespace as str.isspace, which is re's \\s)."""
    ends: List[int] = []
    for j in starts:
        while True:
            ends += [j + len(t) for t in texts if line.startswith(t, j)]
            if j < len(line) and line[j].isspace():
                j += 1
            else:
                break
    return ends


class _TomlLines:
    """Finds the line of a key by a plain text search (tomllib does not report positions): top-level
    keys live before the first table header, a table's keys between its header and the next. A line is
    a key's if it matches `\\s*(?:KEY|"KEY"|'KEY')\\s*[=.]`; a header `\\s*\\[`; a table's key's header
    `\\s*\\[\\[?\\s*(?:KEY|"KEY")\\s*[].]`; an array of tables' `\\s*\\[\\[\\s*TABLE\\s*\\]\\]` (matched by _then)."""

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")

    @staticmethod
    def _is_header(line: str) -> bool:
        return bool(_then(line, [0], ["["]))

    @staticmethod
    def _is_key(line: str, key: str) -> bool:
        return bool(_then(line, _then(line, [0], [key, f'"{key}"', f"'{key}'"]), ["=", "."]))

    def top(self, key: str) -> Optional[int]:
        """The line of a top-level `key = ...`, else of a `[key]` or `[[key]]` header."""
        for number, line in enumerate(self.lines, 1):
            if self._is_header(line):
                break
            if self._is_key(line, key):
                return number
        for number, line in enumerate(self.lines, 1):
            opened = _then(line, [0], ["["])
            opened += [end + 1 for end in opened if line.startswith("[", end)]
            if _then(line, _then(line, opened, [key, f'"{key}"']), ["]", "."]):
                return number
        return None

    def header(self, table: str, index: int) -> Optional[int]:
        seen = -1
        for number, line in enumerate(self.lines, 1):
            if _then(line, _then(line, _then(line, [0], ["[["]), [table]), ["]]"]):
                seen += 1
                if seen == index:
                    return number
        return None

    def in_table(self, table: str, index: int, key: str) -> Optional[int]:
        start = self.header(table, index)
        if start is None:
            return None
        for number in range(start + 1, len(self.lines) + 1):
            line = self.lines[number - 1]
            if self._is_header(line):
                return None
            if self._is_key(line, key):
                return number
        return None
