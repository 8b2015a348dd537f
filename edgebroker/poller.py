"""The loop's selector: `selectors`' register/modify/unregister/get_key, and a `poll` that costs less per
turn.

At a low message rate every message is a loop turn of its own, and `selectors.EpollSelector.select`
was a tenth of the loop's own work in such a turn (rounding the timeout, a method call per ready
descriptor to find its key, a tuple per event). `poll` hands epoll's answer back as (data, events)
pairs with one dict lookup each; epoll rounds the timeout up to whole milliseconds itself. Where
there is no epoll (not Linux), the standard library's selector does the work behind the same face.
"""
from __future__ import annotations

import select

from .record import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Tuple

__all__ = ["Poller", "EVENT_READ", "EVENT_WRITE", "SelectorKey"]

#: `selectors`' values. That module (with the collections.abc and math it imports) is loaded only where
#: there is no epoll: 0.2 MiB of resident memory a broker on Linux does without (bench/README.md, Issue 19).
EVENT_READ = 1
EVENT_WRITE = 2
#: A registration, as `selectors.SelectorKey` has it
SelectorKey = namedtuple("SelectorKey", ["fileobj", "fd", "events", "data"])


class Poller:
    """Watches file descriptors (or objects with fileno()) for EVENT_READ/EVENT_WRITE, each with its data."""

    def __init__(self) -> None:
        #: a descriptor registered for reading only (every idle connection): what `poll` reports for
        #: it, (data, EVENT_READ), made once when it is registered (a SelectorKey's fields are slow
        #: attributes, and a turn at a low rate pays for every distinct operation with cold caches);
        #: its SelectorKey is made when asked for (get_key, unregister), not kept: 80 bytes less per
        #: idle connection
        self._readable: Dict[int, Tuple[Any, int]] = {}
        #: any other registration's SelectorKey (a connection waiting to write, one paused: rare)
        self._keys: Dict[int, SelectorKey] = {}
        #: every registered descriptor's object, as given (an int for a number)
        self._files: Dict[int, Any] = {}
        self._max_events = 1  # epoll's maxevents: every registered descriptor (at least 1)
        self._epoll: Any = select.epoll() if hasattr(select, "epoll") else None
        self._fallback: Any = None
        if self._epoll is None:
            import selectors
            self._fallback = selectors.DefaultSelector()

    def _store(self, fileobj: Any, fd: int, events: int, data: Any) -> None:
        if events == EVENT_READ:
            self._readable[fd] = (data, EVENT_READ)
        else:
            self._keys[fd] = SelectorKey(fileobj, fd, events, data)

    def register(self, fileobj: Any, events: int, data: Any = None) -> None:
        fd = self._fd(fileobj)
        if fd in self._files:
            raise KeyError(f"{fileobj!r} (fd {fd}) is already registered")
        if self._epoll is not None:
            self._epoll.register(fd, _mask(events))
        else:
            self._fallback.register(fd, events, data)
        self._files[fd] = fileobj
        self._store(fileobj, fd, events, data)
        self._max_events = len(self._files)

    def register_read(self, fd: int, fileobj: Any, data: Any) -> None:
        """`register(fileobj, EVENT_READ, data)` for a descriptor the caller knows (`fd`): a socket just
        accepted, the connect path's one registration, without the general call's steps."""
        files = self._files
        if self._epoll is None or fd in files:
            self.register(fileobj, EVENT_READ, data)  # (raises KeyError for a second registration)
            return
        self._epoll.register(fd, _EPOLLIN)
        files[fd] = fileobj
        self._readable[fd] = (data, EVENT_READ)
        self._max_events = len(files)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> None:
        fd = self._fd(fileobj)
        key = self._key(fd)
        if self._epoll is None:
            self._fallback.modify(fd, events, data)
        elif events != key.events:
            self._epoll.modify(fd, _mask(events))
        self._readable.pop(fd, None)
        self._keys.pop(fd, None)
        self._store(key.fileobj, fd, events, data)

    def unregister(self, fileobj: Any) -> SelectorKey:
        fd = self._fd(fileobj)
        key = self._key(fd)
        del self._files[fd]
        self._readable.pop(fd, None)
        self._keys.pop(fd, None)
        self._max_events = len(self._files) or 1
        self._drop(fd)
        return key

    def forget(self, fd: int, closing: bool = False) -> None:
        """`unregister` by descriptor, without making the registration's SelectorKey; nothing happens
        for a descriptor not registered (flow control may have taken it out). `closing`: the caller
        closes the descriptor right after and it is the only one of its file (a socket the loop
        accepted: not inheritable, never duplicated), which takes it out of the epoll set (epoll(7)):
        no system call here then."""
        if self._files.pop(fd, None) is None:
            return
        if self._readable.pop(fd, None) is None:
            self._keys.pop(fd, None)
        self._max_events = len(self._files) or 1
        if not (closing and self._epoll is not None):
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        """Take `fd` out of the kernel's set (unregister, forget)."""
        try:
            if self._epoll is not None:
                self._epoll.unregister(fd)
            else:
                self._fallback.unregister(fd)
        except (OSError, KeyError, ValueError):
            pass  # closed already: the kernel dropped it from the set

    def get_key(self, fileobj: Any) -> SelectorKey:
        return self._key(self._fd(fileobj))

    def _key(self, fd: int) -> SelectorKey:
        """The registration of `fd` (KeyError when there is none)."""
        pair = self._readable.get(fd)
        if pair is not None:
            return SelectorKey(self._files[fd], fd, EVENT_READ, pair[0])
        return self._keys[fd]

    def _fd(self, fileobj: Any) -> int:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd < 0:
            # A socket closed while registered (fileno -1): found by identity, as `selectors` does,
            # so that it can still be unregistered.
            for known, obj in self._files.items():
                if obj is fileobj:
                    return known
            raise ValueError(f"invalid file descriptor {fd} for {fileobj!r}")
        return fd

    def poll(self, timeout: float) -> List[Tuple[Any, int]]:
        """Wait up to `timeout` seconds (0: do not block) for events; (data, events) per ready one."""
        if self._epoll is None:
            return [(key.data, events) for key, events in self._fallback.select(timeout)]
        readable = self._readable
        ready = []
        for fd, ev in self._epoll.poll(timeout, self._max_events):
            pair = readable.get(fd)
            if ev == _EPOLLIN and pair is not None:  # the usual event: an idle connection's read
                ready.append(pair)
                continue
            if pair is not None:
                data, registered = pair
            else:
                key = self._keys.get(fd)
                if key is None:
                    continue
                data, registered = key.data, key.events
            # Errors and hang-ups wake both directions, as in `selectors`: the read or the send then
            # sees what happened.
            events = (EVENT_WRITE if ev & ~_EPOLLIN else 0) | (EVENT_READ if ev & ~_EPOLLOUT else 0)
            ready.append((data, events & registered))
        return ready

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        else:
            self._fallback.close()
        self._keys.clear()
        self._readable.clear()
        self._files.clear()


_EPOLLIN = getattr(select, "EPOLLIN", 1)
_EPOLLOUT = getattr(select, "EPOLLOUT", 4)


def _mask(events: int) -> int:
    return (_EPOLLIN if events & EVENT_READ else 0) | (_EPOLLOUT if events & EVENT_WRITE else 0)
