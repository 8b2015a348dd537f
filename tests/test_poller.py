"""The loop's selector (edgebroker/poller.py): the parts of `selectors`' interface the loop uses, and what
`poll` reports, checked on real socket pairs (and on the standard library's selector behind the same
face, where a platform has no epoll)."""
from __future__ import annotations

import selectors
import socket
from typing import Iterator, Tuple

import pytest

from edgebroker.poller import EVENT_READ, EVENT_WRITE, Poller


@pytest.fixture(params=["epoll", "fallback"])
def poller(request: pytest.FixtureRequest) -> Iterator[Poller]:
    p = Poller()
    if request.param == "fallback":
        if p._epoll is not None:
            p._epoll.close()
        p._epoll = None
        p._fallback = selectors.DefaultSelector()
    yield p
    p.close()


@pytest.fixture
def pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_nothing_ready_returns_nothing_at_timeout_zero(poller: Poller, pair) -> None:
    a, _ = pair
    poller.register(a, EVENT_READ, "a")
    assert poller.poll(0) == []


def test_readable_socket_is_reported_with_its_data(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a, EVENT_READ, "a")
    b.send(b"x")
    assert poller.poll(1.0) == [("a", EVENT_READ)]


def test_modify_changes_events_and_data(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a, EVENT_READ, "old")
    poller.modify(a, EVENT_READ | EVENT_WRITE, "new")
    assert poller.get_key(a).events == EVENT_READ | EVENT_WRITE
    assert poller.poll(1.0) == [("new", EVENT_WRITE)]  # an empty send buffer: writable, nothing to read
    poller.modify(a, EVENT_READ, "same events, new data")
    b.send(b"x")
    assert poller.poll(1.0) == [("same events, new data", EVENT_READ)]


def test_registering_twice_is_an_error(poller: Poller, pair) -> None:
    a, _ = pair
    poller.register(a, EVENT_READ)
    with pytest.raises(KeyError):
        poller.register(a, EVENT_WRITE)


def test_unregistered_socket_is_no_longer_reported(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a, EVENT_READ, "a")
    poller.unregister(a)
    b.send(b"x")
    assert poller.poll(0) == []
    with pytest.raises(KeyError):
        poller.get_key(a)


def test_a_socket_closed_while_registered_can_still_be_unregistered(poller: Poller, pair) -> None:
    a, _ = pair
    fd = a.fileno()
    poller.register(a, EVENT_READ, "a")
    a.close()  # fileno() is -1 now: found by identity, as selectors does
    assert poller.unregister(a).fd == fd
    with pytest.raises(KeyError):
        poller.get_key(fd)


def test_peer_hang_up_wakes_a_reader_only_with_the_events_it_asked_for(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a, EVENT_READ, "a")
    b.close()
    assert poller.poll(1.0) == [("a", EVENT_READ)]  # the read then sees end of file
    assert a.recv(10) == b""


def test_file_descriptor_numbers_work_like_objects(poller: Poller, pair) -> None:
    a, b = pair
    poller.register(a.fileno(), EVENT_READ, "by number")
    b.send(b"x")
    assert poller.poll(1.0) == [("by number", EVENT_READ)]
    assert poller.get_key(a).data == "by number"


def test_every_ready_descriptor_is_reported_in_one_poll_and_a_reused_one_with_its_new_data(poller: Poller) -> None:
    pairs = [socket.socketpair() for _ in range(20)]
    try:
        for k, (a, b) in enumerate(pairs):
            poller.register(a, EVENT_READ, k)
            b.send(b"x")
        assert sorted(poller.poll(1.0)) == [(k, EVENT_READ) for k in range(20)]
        a, b = pairs[3]
        poller.unregister(a)
        poller.register(a, EVENT_READ, "again")
        assert ("again", EVENT_READ) in poller.poll(1.0) and (3, EVENT_READ) not in poller.poll(0)
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_reader_that_also_waits_to_write_gets_its_read_while_its_send_buffer_is_full(poller: Poller, pair) -> None:
    """A connection with a write backlog (READ | WRITE) whose peer sends while the backlog fills its send
    buffer: epoll reports EPOLLIN alone, and it must come back as a read (a slow subscriber's PUBACKs)."""
    a, b = pair
    a.setblocking(False)
    try:
        while True:
            a.send(b"x" * 65536)
    except BlockingIOError:
        pass
    poller.register(a, EVENT_READ | EVENT_WRITE, "backlog")
    assert poller.poll(0) == []
    b.send(b"ack")
    assert poller.poll(1.0) == [("backlog", EVENT_READ)]
    assert poller.get_key(a).events == EVENT_READ | EVENT_WRITE
    poller.modify(a, EVENT_READ, "idle")
    assert poller.poll(0) == [("idle", EVENT_READ)] and poller.get_key(a).data == "idle"
    assert poller.unregister(a).data == "idle"


def test_register_read_is_register_for_reading(poller: Poller, pair) -> None:
    """The accept path's registration (`register_read`, its descriptor given) is `register(..., EVENT_READ,
    data)`: the same key, the same events reported, unregistered the same way; a second one is an error."""
    a, b = pair
    poller.register_read(a.fileno(), a, "a")
    key = poller.get_key(a)
    assert (key.fileobj, key.fd, key.events, key.data) == (a, a.fileno(), EVENT_READ, "a")
    with pytest.raises(KeyError):
        poller.register_read(a.fileno(), a, "again")
    b.send(b"x")
    assert poller.poll(1.0) == [("a", EVENT_READ)]
    poller.modify(a, EVENT_READ | EVENT_WRITE, "a")
    assert poller.poll(1.0) == [("a", EVENT_READ | EVENT_WRITE)]
    poller.unregister(a)
    assert poller.poll(0) == []


@pytest.mark.parametrize("closing", [False, True])
def test_forget_is_unregister_by_descriptor(poller: Poller, closing: bool) -> None:
    """The close path's `forget(fd)`: the registration is gone (no key, nothing reported, the number free
    for the next socket, registered again without error), whatever its events; an unknown number is no
    error. With `closing` (no epoll_ctl: the caller's close takes the descriptor out of the epoll set)
    the socket must be closed right after, as the loop does."""
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        fd = a.fileno()
        poller.register(a, EVENT_READ | EVENT_WRITE, "a")
        poller.register_read(c.fileno(), c, "c")
        poller.forget(fd, closing)
        poller.forget(fd, closing)  # (taken out already: nothing to do)
        if closing:
            a.close()  # (closed: the kernel took it out of the epoll set)
        else:
            b.send(b"x")
        d.send(b"y")
        assert poller.poll(1.0) == [("c", EVENT_READ)]
        with pytest.raises(KeyError):
            poller.get_key(fd)
        poller.forget(c.fileno(), closing)
        if closing:
            c.close()
        assert poller.poll(0) == []
        e, f = socket.socketpair()  # a new socket may get the number back
        try:
            poller.register(e, EVENT_READ, "e")
            f.send(b"z")
            assert poller.poll(1.0) == [("e", EVENT_READ)]
        finally:
            e.close()
            f.close()
    finally:
        for s in (a, b, c, d):
            s.close()
