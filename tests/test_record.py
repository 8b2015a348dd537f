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
