"""Hosted concerns (bridges, serial ports, GPIO) in the loop: the hooks `Server` offers them, as the mixin
`Hosting` (server.py holds the loop itself; this file, what the loop does for its guests).

Their file descriptors enter the loop's selector (`add_reader`, `add_writer`: a `_Watch` holds the
callbacks of one descriptor), their timers are asked each turn when they next want to run
(`add_timer`), a thread of theirs hands work over with `wake()` and a handler the loop runs on its own
thread (`add_wake_handler`), output that acknowledges what a turn made durable leaves after the commit
(`add_flusher`), and `add_service` registers what the server stops at exit and reconfigures on SIGHUP.
A callback that raises is logged (`_failed`) and the loop goes on: one hosted device must not stop the
broker. Every hook but `wake` is called on the loop's thread (or before `serve_forever`).

The mixin uses the server's attributes: `_sel` (the Poller), `_timers`, `_wake_handlers`, `_flushers`,
`_services`, `_wake_w` (the wake-up socket's writing end) and `log`.
"""
from __future__ import annotations

from . import log as L
from .poller import EVENT_READ, EVENT_WRITE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional, Union

    #: What add_reader/add_writer take: an object with fileno(), or a file descriptor.
    FileLike = Union[int, Any]
    #: A hosted callback: called with the loop's monotonic time.
    Callback = Callable[[float], Any]

__all__ = ["Hosting"]


class _Watch:
    """A hosted file descriptor in the selector: what to call when it is readable or writable."""
    __slots__ = ("reader", "writer")

    def __init__(self) -> None:
        self.reader: Optional[Callback] = None
        self.writer: Optional[Callback] = None


class Hosting:
    """The server's hooks for hosted concerns (see the module's docstring)."""

    def add_reader(self, fileobj: FileLike, callback: Callback) -> None:
        """Call `callback(now)` on the loop's thread whenever `fileobj` is readable. Call on the
        loop's thread (or before serve_forever), like every hook here but `wake`."""
        self._watch(fileobj, "reader", callback)

    def add_writer(self, fileobj: FileLike, callback: Callback) -> None:
        """Call `callback(now)` whenever `fileobj` is writable (a connect in progress, a backlog);
        remove it when there is nothing more to write, or the loop spins."""
        self._watch(fileobj, "writer", callback)

    def remove_reader(self, fileobj: FileLike) -> None:
        self._watch(fileobj, "reader", None)

    def remove_writer(self, fileobj: FileLike) -> None:
        self._watch(fileobj, "writer", None)

    def _watch(self, fileobj: FileLike, which: str, callback: Optional[Callback]) -> None:
        sel = self._sel
        try:
            watch = sel.get_key(fileobj).data
        except KeyError:
            if callback is None:
                return
            watch = _Watch()
            setattr(watch, which, callback)
            sel.register(fileobj, EVENT_READ if which == "reader" else EVENT_WRITE, watch)
            return
        if watch.__class__ is not _Watch:
            raise ValueError(f"{fileobj!r} is one of the server's own sockets")
        setattr(watch, which, callback)
        events = (EVENT_READ if watch.reader is not None else 0) | (
            EVENT_WRITE if watch.writer is not None else 0)
        if events:
            sel.modify(fileobj, events, watch)
        else:
            sel.unregister(fileobj)

    def add_timer(self, callback: Callable[[float], float]) -> None:
        """Call `callback(now)` every loop turn; it returns the monotonic time it next needs a turn
        (float('inf') for none), and the loop wakes by then."""
        self._timers.append(callback)

    def remove_timer(self, callback: Callable[[float], float]) -> None:
        if callback in self._timers:
            self._timers.remove(callback)

    def wake(self) -> None:
        """Wake the loop, which then runs every wake handler on its thread. Safe from any thread."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the loop has stopped, or a wake-up is already pending (the buffer is full)

    def add_wake_handler(self, callback: Callback) -> None:
        """Run `callback(now)` on the loop's thread after each `wake()` (and other wake-ups: a handler
        checks its own queue and returns when it is empty)."""
        self._wake_handlers.append(callback)

    def remove_wake_handler(self, callback: Callback) -> None:
        if callback in self._wake_handlers:
            self._wake_handlers.remove(callback)

    def add_flusher(self, callback: Callback) -> None:
        """Call `callback(now)` after each turn's commit, where the loop flushes its connections: the
        place for output that acknowledges what the turn made durable (a serial port's ACKs). While
        the commit window holds changes it is not called; it is once they are committed."""
        self._flushers.append(callback)

    def add_service(self, service: Any) -> None:
        """A hosted concern the server ends: `service.stop()` when the loop stops (before the core
        closes its connections) or the server is closed, and `service.reload(config)`, when it has
        one, after a SIGHUP reload (raising keeps the service as it was, logged)."""
        self._services.append(service)

    def _run_timers(self, now: float, next_timer: float) -> float:
        for timer in self._timers[:]:
            try:
                due = timer(now)
            except Exception:
                self._failed(timer)
                continue
            if due < next_timer:
                next_timer = due
        return next_timer

    def _call(self, callback: Callback, now: float) -> None:
        try:
            callback(now)
        except Exception:
            self._failed(callback)

    def _failed(self, callback: Any) -> None:
        import traceback  # only when a hosted callback fails (linecache, tokenize: 270 KiB at start)
        lines = traceback.format_exc().rstrip().splitlines()
        self.log(L.ERR, f"Error in {getattr(callback, '__qualname__', callback)!s}: {lines[-1]}")
        for line in lines[:-1]:
            self.log(L.DEBUG, line)

    def _stop_services(self) -> None:
        services, self._services = self._services, []
        for service in reversed(services):
            try:
                service.stop()
            except Exception:
                self._failed(service.stop)
