"""The TOML parser (the standard library's tomllib, tomli before Python 3.11), imported only when a
configuration file is TOML and, for what nothing else has imported yet, without `typing`, `re`,
`string`, `datetime`, `functools`, `collections` and `types`.

tomllib (Python 3.11 to 3.13, and tomli 2.x) imports:
- typing's Any, BinaryIO, NamedTuple, Callable and Tuple: for annotations, two aliases of its own
  (`Callable[[str], Any]`, `Tuple[str, ...]`) and one NamedTuple class;
- re, to compile its three patterns (numbers, local times, dates and date-times), and string (which
  imports re) for three constants; re imports enum;
- datetime, for the values of TOML's dates and times, which a broker's configuration never holds;
- functools for lru_cache (one function's cache of time zones), collections.abc for Iterable (an
  annotation) and types for MappingProxyType: functools imports the collections package (0.5 MiB with
  what it imports, edgebroker/standins.py).
Together they cost a broker started with `-c edgebroker.toml` (the Pi's service, and every bench
scenario with a setting) about 1.5 MiB of resident memory for its whole life (bench/README.md, "Issue
19"). So while tomllib is imported, its own modules' imports of these names get stand-ins:
- typing: exactly the names tomllib takes (and TYPE_CHECKING, false);
- string: its three constants;
- datetime: classes that import the real datetime when a value is made and then are the real ones' stand-in
  (`_Lazy`): a configuration with a date gets the very date, time or datetime objects as before;
- re: `compile` gives a pattern (`_Pattern`) that says "no match" where its first characters cannot
  match (a date needs four digits and `-`, a time two digits and `:`), matches a plain decimal integer
  (`1883`, `-17`: what a configuration holds) itself, and compiles the real pattern for anything else
  (`1_000`, `0xff`, `6.02e23`, a date) and from then on is only that;
- functools: standins.lru_cache, over functools' own C cache; collections.abc and types: the very
  Iterable and MappingProxyType (from `_collections_abc` and `type(type.__dict__)`).
Any other import, by tomllib or by another thread meanwhile, goes to Python's import as usual; a module
already imported is used as it is. Should a tomllib or tomli ask for a name a stand-in lacks, or its
import fail in any other way, it is imported again the ordinary way.
"""
from __future__ import annotations

import _collections_abc
import sys

from . import standins
from .record import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Dict, Optional

__all__ = ["toml"]

_NAME = "tomllib" if sys.version_info >= (3, 11) else "tomli"


class _Alias:
    """Any, BinaryIO, Callable or Tuple as tomllib uses them at import: `Callable[[str], Any]` and
    `Tuple[str, ...]` give the alias back."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getitem__(self, item: object) -> _Alias:
        return self

    def __repr__(self) -> str:
        return f"typing.{self.name} (edgebroker.tomlread's stand-in)"


class _Lazy:
    """One of datetime's classes, imported with the first value made of it (or the first attribute
    asked for: `timezone.utc`)."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(__import__("datetime"), self.name)(*args, **kwargs)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(getattr(__import__("datetime"), self.name), attribute)

    def __repr__(self) -> str:
        return f"datetime.{self.name} (edgebroker.tomlread's stand-in)"


_VERBOSE = 64  # re.VERBOSE
_DIGITS = "0123456789"
#: tomllib's number pattern (tomli's too), its whitespace and comments taken out as re.VERBOSE does.
_NUMBER = ("0(?:x[0-9A-Fa-f](?:_?[0-9A-Fa-f])*|b[01](?:_?[01])*|o[0-7](?:_?[0-7])*)|[+-]?(?:0|[1-9](?:_?[0-9])*)"
           "(?P<floatpart>(?:\\.[0-9](?:_?[0-9])*)?(?:[eE][+-]?[0-9](?:_?[0-9])*)?)")
#: The start of its date and date-time pattern, and of its time pattern (hours, then a colon).
_DATE_START, _TIME_START = "([0-9]{4})-", "([01][0-9]|2[0-3]):"


def _unverbose(pattern: str) -> str:
    """The pattern without the whitespace and `#` comments re.VERBOSE ignores (tomllib's patterns have
    no escaped space or `#`, and no space or `#` in a character class)."""
    return "".join(line.partition("#")[0] for line in pattern.split("\n")).replace(" ", "").replace("\t", "")


def _ascii_digits(text: str, pos: int, count: int) -> bool:
    return len(text) >= pos + count and all(c in _DIGITS for c in text[pos:pos + count])


def _date_may_start(src: str, pos: int) -> bool:
    return _ascii_digits(src, pos, 4) and src[pos + 4:pos + 5] == "-"


def _time_may_start(src: str, pos: int) -> bool:
    return src[pos:pos + 1] in ("0", "1", "2") and _ascii_digits(src, pos + 1, 1) and src[pos + 2:pos + 3] == ":"


class _Pattern:
    """A pattern of tomllib's, compiled by the real `re` only when a value needs it: see the module's
    docstring. `match(src, pos)` is what tomllib calls; anything else is the real pattern's."""

    __slots__ = ("pattern", "flags", "real", "kind")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        self.pattern, self.flags, self.real = pattern, flags, None
        text = _unverbose(pattern) if flags & _VERBOSE else pattern
        self.kind = ("number" if text == _NUMBER else "date" if text.startswith(_DATE_START) else
                     "time" if text.startswith(_TIME_START) else "")

    def compiled(self) -> Any:
        if self.real is None:
            import re
            self.real = re.compile(self.pattern, self.flags)
        return self.real

    def match(self, src: str, pos: int = 0, *rest: int) -> Any:
        if self.real is None and not rest:
            if self.kind == "date" and not _date_may_start(src, pos):
                return None
            if self.kind == "time" and not _time_may_start(src, pos):
                return None
            if self.kind == "number":
                end = _plain_integer_end(src, pos)
                if end is not None:
                    return _IntegerMatch(self, src, pos, end) if end > pos else None
        return self.compiled().match(src, pos, *rest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.compiled(), name)


def _plain_integer_end(src: str, pos: int) -> Optional[int]:
    """Where tomllib's number pattern's match at `pos` ends if it is a plain decimal integer (`1883`,
    `-17`, `0`), `pos` if that pattern cannot match there at all, None for anything else (a leading zero,
    `_`, a fraction, an exponent, `0x`, `0b`, `0o`: the real pattern decides)."""
    i = pos + 1 if src[pos:pos + 1] in ("+", "-") else pos
    start = i
    while i < len(src) and src[i] in _DIGITS:
        i += 1
    if i == start:  # no digit: neither a sign's number nor 0x, 0b, 0o can follow
        return pos
    if (src[start] == "0" and i - start > 1) or (i < len(src) and src[i] in "._eExbo"):
        return None
    return i


class _IntegerMatch:
    """The number pattern's match of a plain decimal integer: what tomllib asks of it (`end()`,
    `group()`, `group("floatpart")`, which is empty); anything else is the real match's."""

    __slots__ = ("pattern", "string", "pos", "stop")

    def __init__(self, pattern: _Pattern, string: str, pos: int, stop: int) -> None:
        self.pattern, self.string, self.pos, self.stop = pattern, string, pos, stop

    def end(self, group: int = 0) -> int:
        return self.stop if group == 0 else self.__getattr__("end")(group)

    def group(self, *groups: Any) -> Any:
        if groups == () or groups == (0,):
            return self.string[self.pos:self.stop]
        if groups == ("floatpart",):
            return ""
        return self.__getattr__("group")(*groups)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pattern.compiled().match(self.string, self.pos), name)


def _stand_ins() -> Dict[str, ModuleType]:
    """The stand-ins for what tomllib imports, by module name."""
    typing = standins.module("typing", "typing's names tomllib imports (edgebroker.tomlread)",
                             NamedTuple=NamedTuple, TYPE_CHECKING=False,
                             **{name: _Alias(name) for name in ("Any", "BinaryIO", "Callable", "Tuple")})
    string = standins.module("string", "string's constants tomllib uses (edgebroker.tomlread)",
                             ascii_letters="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                             digits=_DIGITS, hexdigits=_DIGITS + "abcdefABCDEF")
    re = standins.module("re", "re.compile for tomllib's patterns, compiled when used (edgebroker.tomlread)",
                         compile=_Pattern, VERBOSE=_VERBOSE)
    datetime = standins.module("datetime", "datetime's classes, imported when used (edgebroker.tomlread)",
                               **{name: _Lazy(name) for name in ("date", "datetime", "time", "timedelta",
                                                                 "timezone", "tzinfo")})
    abc = standins.module("collections.abc", "collections.abc's Iterable (edgebroker.tomlread)",
                          Iterable=_collections_abc.Iterable)
    types = standins.module("types", "types.MappingProxyType (edgebroker.tomlread)",
                            MappingProxyType=type(type.__dict__))
    return {"typing": typing, "string": string, "re": re, "datetime": datetime, "functools": standins.functools(),
            "collections.abc": abc, "types": types}


def _check(module: ModuleType) -> None:
    checked = module.loads("checked = [1, -2, 'a', { b = true }]\n[t]\nd = 0\n")
    if checked != {"checked": [1, -2, "a", {"b": True}], "t": {"d": 0}}:
        raise ImportError(f"{_NAME} with stand-ins parsed {checked!r}")


def toml() -> Any:
    """The tomllib (or tomli) module: `toml().loads(text)`, `toml().TOMLDecodeError`."""
    module = sys.modules.get(_NAME)
    if module is None:
        module = standins.import_with_stand_ins(_NAME, _stand_ins(), _check, importers=(_NAME,))
    if module is None:
        module = __import__(_NAME)
    return module
