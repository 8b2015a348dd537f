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
"""
from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, Tuple, TypeVar

    T = TypeVar("T")

__all__ = ["record", "field", "fields", "replace", "FrozenInstanceError", "Field", "NamedTuple"]


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
