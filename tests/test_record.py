"""edgebroker.record.NamedTuple: typing.NamedTuple's class syntax without importing typing.

The packets, the store's Loaded, auth's rules and the other tuple records are declared with it at run
time (a type checker sees typing.NamedTuple), so each test builds the same class both ways and checks
that the two behave alike: fields, defaults, the body's docstring and methods, equality with tuples,
_replace/_asdict, pickling, and the same errors for a class typing refuses.
"""
from __future__ import annotations

import pickle
import typing

import pytest

from edgebroker import record
from edgebroker.packets import Connect, Puback, Will


class Ours(record.NamedTuple):
    """A record with a default and a method."""
    name: str
    count: int
    note: typing.Optional[str] = None

    def twice(self) -> int:
        return 2 * self.count


class Theirs(typing.NamedTuple):
    """A record with a default and a method."""
    name: str
    count: int
    note: typing.Optional[str] = None

    def twice(self) -> int:
        return 2 * self.count


def test_the_class_is_a_namedtuple_like_typings():
    assert Ours.__mro__ == (Ours, tuple, object)
    assert Ours._fields == Theirs._fields == ("name", "count", "note")
    assert Ours._field_defaults == Theirs._field_defaults == {"note": None}
    assert Ours.__doc__ == Theirs.__doc__ == "A record with a default and a method."
    assert Ours.__module__ == Theirs.__module__ == __name__
    assert Ours.__qualname__ == "Ours" and Ours.__slots__ == ()
    assert list(Ours.__annotations__) == ["name", "count", "note"]


def test_instances_behave_like_typings():
    ours, theirs = Ours("a", 2), Theirs("a", 2)
    assert ours == theirs == ("a", 2, None) and hash(ours) == hash(theirs)
    assert ours.twice() == theirs.twice() == 4
    assert repr(ours) == "Ours(name='a', count=2, note=None)"
    assert ours._replace(note="x") == ("a", 2, "x") and ours._asdict() == theirs._asdict()
    assert Ours._make(["b", 3, "y"]) == Ours(name="b", count=3, note="y")
    assert pickle.loads(pickle.dumps(ours)) == ours
    with pytest.raises(AttributeError):
        ours.count = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Ours("a")  # type: ignore[call-arg]


def test_what_typing_refuses_is_refused():
    with pytest.raises(TypeError, match="cannot follow default"):
        class Late(record.NamedTuple):
            first: int = 0
            second: int
    with pytest.raises(AttributeError, match="_replace"):
        class Clash(record.NamedTuple):
            x: int

            def _replace(self) -> None: ...
    with pytest.raises(TypeError):
        class Mixed(record.NamedTuple, int):  # type: ignore[misc]
            x: int


def test_the_packets_are_its_tuples():
    assert Puback(7) == (7,) and Puback(7).packet_id == 7
    assert Connect("MQTT", 4, True, 60, "c")[5:] == (None, None, None)
    assert Will("t", b"p", 1, False)._replace(qos=2) == ("t", b"p", 2, False)


# ---- record.namedtuple: collections.namedtuple without the collections package ----------------------

import collections  # noqa: E402
import copy  # noqa: E402

Pair = record.namedtuple("Pair", ["left", "right"])
PairC = collections.namedtuple("PairC", ["left", "right"])
Three = record.namedtuple("Three", "a, b c", defaults=[2, 3])
ThreeC = collections.namedtuple("ThreeC", "a, b c", defaults=[2, 3])


def _error(call):
    try:
        call()
    except Exception as exc:
        return type(exc), str(exc).replace("ThreeC", "Three").replace("PairC", "Pair")
    raise AssertionError("no error")


@pytest.mark.parametrize("fields, defaults", [(["only"], None), (["a", "b", "c"], [2, 3]), ("x y", [1, 2]),
                                              ([], None)])
def test_namedtuple_makes_the_class_collections_makes(fields, defaults):
    ours = record.namedtuple("T", fields, defaults=defaults)
    theirs = collections.namedtuple("T", fields, defaults=defaults)
    for name in ("_fields", "_field_defaults", "__doc__", "__match_args__", "__slots__", "__module__",
                 "__qualname__", "__name__"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.__mro__[1:] == theirs.__mro__[1:] == (tuple, object)
    for method in ("__new__", "_make", "_replace", "__repr__", "_asdict", "__getnewargs__"):
        mine, real = getattr(ours, method), getattr(theirs, method)
        assert (mine.__doc__, mine.__qualname__) == (real.__doc__, real.__qualname__), method
    assert ours.__new__.__defaults__ == theirs.__new__.__defaults__
    for index, name in enumerate(ours._fields):
        assert getattr(ours, name).__doc__ == getattr(theirs, name).__doc__ == f"Alias for field number {index}"
    assert set(ours.__dict__) == set(theirs.__dict__)


def test_namedtuple_instances_behave_as_collections():
    for mine, real in ((Pair, PairC), (Three, ThreeC)):
        values = (1, "x") if mine is Pair else (1,)
        ours, theirs = mine(*values), real(*values)
        assert ours == theirs and hash(ours) == hash(theirs)
        assert repr(ours) == repr(theirs).replace(real.__name__, mine.__name__)
        assert ours._asdict() == theirs._asdict()
        assert ours._replace(**{mine._fields[0]: 9}) == theirs._replace(**{real._fields[0]: 9})
        assert mine._make(list(theirs)) == ours and copy.copy(ours) == ours
        assert pickle.loads(pickle.dumps(ours)) == ours and type(pickle.loads(pickle.dumps(ours))) is mine
        assert _error(lambda: ours._replace(nope=1)) == _error(lambda: theirs._replace(nope=1))
        assert _error(lambda: mine._make([1, 2, 3, 4])) == _error(lambda: real._make([1, 2, 3, 4]))
        assert _error(lambda: mine()) == _error(lambda: real())
        assert _error(lambda: mine(1, 2, 3, 4)) == _error(lambda: real(1, 2, 3, 4))
        assert _error(lambda: mine(1, b=2, x=3)) == _error(lambda: real(1, b=2, x=3))
        with pytest.raises(AttributeError):
            ours.left = 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("fields", [["a", "a"], ["_a"], ["a b"], ["1a"], ["a-b"]])
def test_namedtuple_refuses_the_names_collections_refuses(fields):
    assert _error(lambda: record.namedtuple("T", fields)) == _error(lambda: collections.namedtuple("T", fields))
    assert _error(lambda: record.namedtuple("T", ["a"], defaults=[1, 2])) == \
        _error(lambda: collections.namedtuple("T", ["a"], defaults=[1, 2]))
