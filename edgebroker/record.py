"""Frozen record classes for the configuration: the part of `dataclasses` that edgebroker uses, without it.

`dataclasses` imports `inspect` (and with it ast, dis, tokenize and linecache) only to write a default
docstring; in a running broker that is 1.2 MiB of resident memory for its whole life (measured in
bench/README.md, "Issue 19"), for the few configuration classes declared at import time. `@record`
reads the class's annotations as `@dataclass(frozen=True)` does and gives it the same methods:
`__init__` (fields in order, keyword or positional, defaults, `field(default_factory=...)`, then
`__post_init__` when the class has one), `__repr__`, `__eq__` and `__hash__` over the fields with
compare true, and assignment refused (`FrozenInstanceError`, an AttributeError). `replace()` and
`fields()` are `dataclasses.replace` and `dataclasses.fields`. What it does not do: `ClassVar`/`InitVar`
fields, `init=False` fields, ordering, slots, keyword-only fields.

`NamedTuple` is `typing.NamedTuple`'s class syntax for the packets and other tuple records, without
importing `typing` (2.0 MiB of resident memory with `re` and the rest it imports, for a name that is
otherwise only in annotations). Modules import it as the type checker's `typing.NamedTuple` under
`if TYPE_CHECKING:` and as this one otherwise; the classes it makes are what typing.NamedTuple makes:
`collections.namedtuple` classes with the body's defaults, docstring and methods.

`namedtuple` is `collections.namedtuple` (without `rename`), written again over the C module
`_collections`: the collections package (with the operator, keyword and reprlib modules it imports and
the Python classes it defines: Counter, ChainMap, UserDict, ...) is about 0.4 MiB of resident memory
that a running broker never uses otherwise (`deque` and `OrderedDict` are `_collections`' own).
tests/test_record.py compares its classes with collections' on the same fields.
"""
from __future__ import annotations

import sys

from _collections import _tuplegetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

    T = TypeVar("T")

__all__ = ["record", "field", "fields", "replace", "FrozenInstanceError", "Field", "NamedTuple", "namedtuple"]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a record (as dataclasses.FrozenInstanceError)."""


class Field:
    """One field of a record: its name, its default or default factory, whether == compares it."""

    __slots__ = ("name", "default", "default_factory", "compare")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING, compare: bool = True) -> None:
        if default is not MISSING and default_factory is not MISSING:
            raise ValueError("cannot specify both default and default_factory")
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.compare = compare

    def __repr__(self) -> str:
        return f"Field(name={self.name!r}, default={self.default!r}, compare={self.compare})"


def field(*, default: Any = MISSING, default_factory: Any = MISSING, compare: bool = True) -> Any:
    """A field with a default factory, or one that == does not compare (as dataclasses.field)."""
    return Field(default, default_factory, compare)


def fields(obj: Any) -> Tuple[Field, ...]:
    """The record's (class or instance) fields in order."""
    try:
        return tuple(obj.__record_fields__.values())
    except AttributeError:
        raise TypeError("must be called with a record class or instance") from None


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record with some fields changed, built (and checked) by its __init__."""
    for name, f in obj.__record_fields__.items():  # type: ignore[attr-defined]
        if name not in changes:
            changes[name] = getattr(obj, name)
    return obj.__class__(**changes)


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def record(cls: type) -> type:
    """Make `cls` a frozen record of its annotated class attributes (as @dataclass(frozen=True))."""
    found: Dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        found.update(getattr(base, "__record_fields__", {}))
    for name in cls.__dict__.get("__annotations__", {}):
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(value)
        f.name = name
        if isinstance(value, Field):  # the class attribute becomes the plain default, as in dataclasses
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        found[name] = f
    names = tuple(found)
    compared = tuple(name for name, f in found.items() if f.compare)
    namespace: Dict[str, Any] = {"_set": object.__setattr__, "_FACTORY": MISSING}
    params, body = [], []
    for name, f in found.items():
        if f.default_factory is not MISSING:
            namespace[f"_factory_{name}"] = f.default_factory
            params.append(f"{name}=_FACTORY")
            body.append(f"_set(self, {name!r}, _factory_{name}() if {name} is _FACTORY else {name})")
        else:
            if f.default is not MISSING:
                namespace[f"_default_{name}"] = f.default
                params.append(f"{name}=_default_{name}")
            elif params and "=" in params[-1]:
                raise TypeError(f"non-default argument {name!r} follows default argument")
            else:
                params.append(name)
            body.append(f"_set(self, {name!r}, {name})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    exec(source, namespace)  # as dataclasses does: a real signature, and its TypeErrors for bad arguments
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"

    def __repr__(self: Any) -> str:
        return f"{type(self).__qualname__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in compared)

    def __hash__(self: Any) -> int:
        return hash(tuple(getattr(self, n) for n in compared))

    for method in (__repr__, __eq__, __hash__):
        method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
    for name, method in (("__init__", init), ("__repr__", __repr__), ("__eq__", __eq__),
                         ("__hash__", __hash__), ("__setattr__", _frozen_setattr),
                         ("__delattr__", _frozen_delattr)):
        setattr(cls, name, method)
    cls.__record_fields__ = found  # type: ignore[attr-defined]
    return cls


def namedtuple(typename: str, field_names: Any, *, defaults: Any = None, module: Optional[str] = None) -> type:
    """A tuple class with named fields, as `collections.namedtuple(typename, field_names,
    defaults=defaults, module=module)` makes it: the same attributes, methods, docstrings, signature
    of `__new__` (so the same TypeErrors), repr and pickling. Field names are checked as collections
    checks them but for keywords (`keyword` is one of the modules this avoids; no class body or list
    of ours can hold one)."""
    if isinstance(field_names, str):
        field_names = field_names.replace(",", " ").split()
    names = [str(name) for name in field_names]
    typename = sys.intern(str(typename))
    for name in [typename] + names:
        if not name.isidentifier():
            raise ValueError(f"Type names and field names must be valid identifiers: {name!r}")
    seen = set()
    for name in names:
        if name.startswith("_"):
            raise ValueError(f"Field names cannot start with an underscore: {name!r}")
        if name in seen:
            raise ValueError(f"Encountered duplicate field name: {name!r}")
        seen.add(name)
    field_defaults: Dict[str, Any] = {}
    if defaults is not None:
        defaults = tuple(defaults)
        if len(defaults) > len(names):
            raise TypeError("Got more default values than field names")
        field_defaults = dict(reversed(list(zip(reversed(names), reversed(defaults)))))
    fields_ = tuple(sys.intern(name) for name in names)
    count = len(fields_)
    arg_list = ", ".join(fields_) + ("," if count == 1 else "")
    repr_fmt = "(" + ", ".join(f"{name}=%r" for name in fields_) + ")"
    tuple_new = tuple.__new__
    namespace = {"_tuple_new": tuple_new, "__builtins__": {}, "__name__": f"namedtuple_{typename}"}
    __new__ = eval(f"lambda _cls, {arg_list}: _tuple_new(_cls, ({arg_list}))", namespace)
    __new__.__name__ = "__new__"
    __new__.__doc__ = f"Create new instance of {typename}({arg_list})"
    if defaults is not None:
        __new__.__defaults__ = defaults

    def _make(cls: type, iterable: Any) -> Any:
        result = tuple_new(cls, iterable)
        if len(result) != count:
            raise TypeError(f"Expected {count} arguments, got {len(result)}")
        return result

    _make.__doc__ = f"Make a new {typename} object from a sequence or iterable"

    def _replace(self: Any, /, **kwds: Any) -> Any:
        result = self._make(map(kwds.pop, fields_, self))
        if kwds:
            raise ValueError(f"Got unexpected field names: {list(kwds)!r}")
        return result

    _replace.__doc__ = f"Return a new {typename} object replacing specified fields with new values"

    def __repr__(self: Any) -> str:
        "Return a nicely formatted representation string"
        return self.__class__.__name__ + repr_fmt % self

    def _asdict(self: Any) -> Dict[str, Any]:
        "Return a new dict which maps field names to their values."
        return dict(zip(self._fields, self))

    def __getnewargs__(self: Any) -> Tuple[Any, ...]:
        "Return self as a plain tuple.  Used by copy and pickle."
        return tuple(self)

    for method in (__new__, _make, _replace, __repr__, _asdict, __getnewargs__):
        method.__qualname__ = f"{typename}.{method.__name__}"
    class_namespace: Dict[str, Any] = {
        "__doc__": f"{typename}({arg_list})", "__slots__": (), "_fields": fields_,
        "_field_defaults": field_defaults, "__new__": __new__, "_make": classmethod(_make),
        "_replace": _replace, "__repr__": __repr__, "_asdict": _asdict, "__getnewargs__": __getnewargs__,
        "__match_args__": fields_}
    for index, name in enumerate(fields_):
        class_namespace[name] = _tuplegetter(index, sys.intern(f"Alias for field number {index}"))
    result = type(typename, (tuple,), class_namespace)
    if module is None:
        module = sys._getframe(1).f_globals.get("__name__", "__main__")
    result.__module__ = module
    return result


#: What a NamedTuple class body may not set: the names collections.namedtuple defines (as typing refuses).
_PROHIBITED = frozenset({"__new__", "__init__", "__slots__", "__getnewargs__", "_fields", "_field_defaults",
                         "_make", "_replace", "_asdict", "_source"})


class _NamedTupleMeta(type):
    def __new__(mcls, name: str, bases: Tuple[type, ...], namespace: Dict[str, Any]) -> Any:
        if bases != (NamedTuple,):
            raise TypeError("a NamedTuple class derives from NamedTuple alone")
        annotations = namespace.get("__annotations__", {})
        defaults = []
        for field_name in annotations:
            if field_name in namespace:
                defaults.append(namespace[field_name])
            elif defaults:
                raise TypeError(f"non-default namedtuple field {field_name} cannot follow default fields")
        cls = namedtuple(name, list(annotations), defaults=defaults,  # type: ignore[misc]
                         module=namespace["__module__"])
        cls.__annotations__ = dict(annotations)
        for key, value in namespace.items():
            if key in _PROHIBITED:
                raise AttributeError(f"cannot overwrite NamedTuple attribute {key}")
            if key not in ("__module__", "__annotations__") and key not in annotations:
                setattr(cls, key, value)
        return cls


NamedTuple = type.__new__(_NamedTupleMeta, "NamedTuple", (), {})
