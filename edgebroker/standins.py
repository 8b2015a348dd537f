"""Importing a module while its own imports of a few standard-library modules get stand-ins.

Some modules a broker needs import a whole standard-library module for one name: the C module
`_sqlite3` (Python 3.11 and later) imports `functools` at its import for `lru_cache`, its statement
cache; tomllib (tomli before 3.11) imports `functools` for `lru_cache`, `collections.abc` for
`Iterable`, `types` for `MappingProxyType`, and typing, re, string and datetime (edgebroker/tomlread.py).
`functools` imports the `collections` package, which imports `operator`, `keyword` and `reprlib` and
defines Python classes a broker never uses (Counter, ChainMap, UserDict, ...): about 0.5 MiB of
resident memory for the process's whole life (bench/README.md, Issue 19), in a broker that otherwise
takes `deque` and `OrderedDict` from `_collections` and makes its tuple classes with
`record.namedtuple`.

`import_with_stand_ins(name, stand_ins, check)` imports `name` while imports of the stand-ins' names
that are not imported yet, made by this thread (and with `importers`, by those packages' modules
only), get the stand-in modules; `check(module)` then tries the module, and if that or the import
fails, nothing of it is left in sys.modules and the caller imports it the ordinary way. Any other
import, by another thread or of another name, goes to Python's import as usual.

`lru_cache` is functools.lru_cache for what those modules ask of it (`lru_cache(maxsize)(function)`,
`@lru_cache`), over the very C object functools uses (`_functools._lru_cache_wrapper`), without
functools' `update_wrapper` (the cached function's name and docstring are not copied onto it).
"""
from __future__ import annotations

import _thread
import builtins
import sys

from _functools import _lru_cache_wrapper

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

__all__ = ["lru_cache", "functools", "module", "import_with_stand_ins"]


def _cache_info(hits: int, misses: int, maxsize: Optional[int], currsize: int) -> Any:
    """What the wrapper's cache_info() returns: functools' CacheInfo fields, as a plain tuple."""
    return (hits, misses, maxsize, currsize)


def lru_cache(maxsize: Any = 128, typed: bool = False) -> Any:
    """functools.lru_cache: `lru_cache(maxsize, typed)(function)`, or `@lru_cache` on a function."""
    if callable(maxsize) and isinstance(typed, bool):
        return _lru_cache_wrapper(maxsize, 128, typed, _cache_info)
    if isinstance(maxsize, int) and maxsize < 0:
        maxsize = 0
    elif maxsize is not None and not isinstance(maxsize, int):
        raise TypeError("Expected first argument to be an integer, a callable, or None")

    def decorating_function(user_function: Callable[..., Any]) -> Any:
        return _lru_cache_wrapper(user_function, maxsize, typed, _cache_info)

    return decorating_function


def module(name: str, doc: str, **names: Any) -> ModuleType:
    """A module object called `name` holding `names`."""
    made = type(sys)(name, doc)
    for key, value in names.items():
        setattr(made, key, value)
    return made


def functools() -> ModuleType:
    """The stand-in for functools: lru_cache alone."""
    return module("functools", "functools.lru_cache alone (edgebroker.standins)", lru_cache=lru_cache)


def import_with_stand_ins(name: str, stand_ins: Dict[str, ModuleType], check: Callable[[ModuleType], None],
                          importers: Iterable[str] = (), registered: bool = False) -> Optional[ModuleType]:
    """`name` imported while this thread's imports of the stand-ins' names not imported yet (made by
    the modules of the packages `importers`, when given) get the stand-ins, and checked by `check`;
    None, and nothing of `name` left in sys.modules, if either failed. `registered`: the stand-ins are
    also in sys.modules while `name` is imported, for a C module, whose import of a module (C's
    PyImport_Import) takes the module from sys.modules once imported; the process's other threads
    would see them there too, so only where there are none yet (the broker's start: a process that
    started one through `threading` has imported functools, which threading imports)."""
    if name in sys.modules:
        return sys.modules[name]
    waiting = {key: value for key, value in stand_ins.items() if key not in sys.modules}
    if registered:
        sys.modules.update(waiting)
    packages = frozenset(importers)
    thread = _thread.get_ident()
    real_import = builtins.__import__

    def import_(wanted: str, globals: Optional[Mapping[str, object]] = None,
                locals: Optional[Mapping[str, object]] = None, fromlist: Optional[Sequence[str]] = (),
                level: int = 0) -> ModuleType:
        if wanted in waiting and not level and _thread.get_ident() == thread and (
                not packages or (globals and str(globals.get("__name__", "")).partition(".")[0] in packages)):
            return waiting[wanted]
        return real_import(wanted, globals, locals, fromlist, level)

    builtins.__import__ = import_
    try:
        imported = real_import(name)
        for part in name.split(".")[1:]:
            imported = getattr(imported, part)
        check(imported)
        return imported
    except Exception:
        for key in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[key]
        return None
    finally:
        builtins.__import__ = real_import
        for key, value in waiting.items():
            if registered and sys.modules.get(key) is value:
                del sys.modules[key]
