"""The TOML parser (the standard library's tomllib, tomli before Python 3.11), imported only when a
configuration file is TOML and, when nothing else has imported `typing`, without it.

tomllib (Python 3.11 to 3.13, and tomli 2.0) takes Any, BinaryIO, NamedTuple, Callable and Tuple from
typing: for annotations, two aliases of its own (`Callable[[str], Any]`, `Tuple[str, ...]`) and one
NamedTuple class. Importing typing for them would cost a broker started with `-c edgebroker.toml` (the
Pi's service, and every bench scenario with a setting) 0.7 MiB of resident memory for its whole life
(bench/README.md, "Issue 19"). So while tomllib is imported, its own modules' `from typing import ...`
get a stand-in that has exactly those names (and TYPE_CHECKING, false); any other import, by tomllib
or by another thread meanwhile, goes to Python's import as usual. Should a tomllib or tomli ask for a
name the stand-in lacks, or its import fail in any other way, it is imported again with the real typing.
(tomli 2.5 imports typing only under `if TYPE_CHECKING:` itself, so there is nothing to stand in for.)
"""
from __future__ import annotations

import builtins
import sys
import types

from .record import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping, Optional, Sequence

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


def _stand_in() -> types.ModuleType:
    module = types.ModuleType("typing", "typing's names tomllib imports (edgebroker.tomlread)")
    for name in ("Any", "BinaryIO", "Callable", "Tuple"):
        setattr(module, name, _Alias(name))
    module.NamedTuple = NamedTuple  # type: ignore[attr-defined]
    module.TYPE_CHECKING = False  # type: ignore[attr-defined]
    return module


def _import_without_typing() -> Optional[types.ModuleType]:
    """tomllib imported with the stand-in for its own typing imports; None (and nothing of it left in
    sys.modules) if that did not work."""
    stand_in = _stand_in()
    real_import = builtins.__import__

    def import_(name: str, globals: Optional[Mapping[str, object]] = None,
                locals: Optional[Mapping[str, object]] = None, fromlist: Optional[Sequence[str]] = (),
                level: int = 0) -> types.ModuleType:
        if name == "typing" and not level and globals and \
                str(globals.get("__name__", "")).partition(".")[0] == _NAME:
            return stand_in
        return real_import(name, globals, locals, fromlist, level)

    builtins.__import__ = import_
    try:
        module = real_import(_NAME)
        module.loads("checked = [1, 'a', { b = 2.5 }]\n[t]\nd = 2026-12-06")
        return module
    except Exception:
        for name in [n for n in sys.modules if n == _NAME or n.startswith(_NAME + ".")]:
            del sys.modules[name]
        return None
    finally:
        builtins.__import__ = real_import


def toml() -> Any:
    """The tomllib (or tomli) module: `toml().loads(text)`, `toml().TOMLDecodeError`."""
    module = sys.modules.get(_NAME)
    if module is None and "typing" not in sys.modules:
        module = _import_without_typing()
    if module is None:
        module = __import__(_NAME)
    return module
