"""Password hashes verified off the loop: one worker thread, answers handed back through the loop's wake.

Theory of operation: PBKDF2 with a high iteration count costs tens to hundreds of milliseconds (see
docs/security.md); done in the loop it would stall every client for that long. The core hands such a
verification to `Verifier.submit(key, job, token)` and pauses that one connection (it reads nothing
more from it); the worker thread runs `job()` and puts `(token, result)` in a queue, then calls the
server's `wake()`; the loop, on its own thread, passes each answer to `Broker.password_checked`.

Fairness: jobs wait in one queue per key (the client's address) and the worker takes one from each
address in turn, so a client guessing passwords as fast as it can connect gets its share of the
worker and no more: a client at another address waits for at most one of the guesser's hashes.
hashlib releases the GIL while it hashes, so the loop keeps serving meanwhile.
"""
from __future__ import annotations

from _collections import OrderedDict, deque  # collections' own, without that package (record.namedtuple)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    import threading
    from typing import Any, Callable, Deque, List, Optional, Tuple

__all__ = ["Verifier"]


class Verifier:
    """A service of the server (start/stop): the thread starts with the first job."""

    def __init__(self) -> None:
        # The lock and the answers' queue come with the first job: a broker without a password file
        # never imports threading and queue (0.3 MiB of resident memory, bench/README.md "Issue 19").
        self._lock: Optional[threading.Condition] = None
        #: address -> jobs, in the order addresses first had one waiting (round robin)
        self._waiting: "OrderedDict[str, Deque[Tuple[Callable[[], bool], object]]]" = OrderedDict()
        self._done: "Optional[queue.SimpleQueue[Tuple[object, bool]]]" = None
        self._thread: Optional[threading.Thread] = None
        self._stopping = False
        self._server: Any = None

    def start(self, server: Any) -> None:
        self._server = server
        server.add_wake_handler(self._deliver)
        server.broker.verify_async = self.submit

    def stop(self) -> None:
        if self._lock is None:  # never had a job
            self._stopping = True
            return
        with self._lock:
            self._stopping = True
            self._waiting.clear()
            self._lock.notify()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def submit(self, key: str, job: Callable[[], bool], token: object) -> None:
        """Called on the loop's thread."""
        if self._lock is None:
            import queue
            import threading

            self._lock = threading.Condition()
            self._done = queue.SimpleQueue()
        with self._lock:
            if self._stopping:
                return
            self._waiting.setdefault(key, deque()).append((job, token))
            self._lock.notify()
        if self._thread is None:
            import threading

            self._thread = threading.Thread(target=self._run, name="edgebroker-hashing", daemon=True)
            self._thread.start()

    def pending(self) -> int:
        if self._lock is None:
            return 0
        with self._lock:
            return sum(len(jobs) for jobs in self._waiting.values())

    def _next(self) -> Optional[Tuple[Callable[[], bool], object]]:
        assert self._lock is not None  # the thread starts after the first job made it
        with self._lock:
            while not self._waiting and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            key, jobs = next(iter(self._waiting.items()))
            item = jobs.popleft()
            del self._waiting[key]
            if jobs:
                self._waiting[key] = jobs  # to the back of the line: the next address goes first
            return item

    def _run(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            job, token = item
            try:
                ok = bool(job())
            except Exception:  # a hash that cannot be computed refuses the client, it does not crash
                ok = False
            self._done.put((token, ok))  # type: ignore[union-attr]
            self._server.wake()

    def _deliver(self, now: float) -> None:
        """Wake handler, on the loop's thread: hand every answer to the core."""
        if self._done is None:  # no job yet: another handler's wake
            return
        broker = self._server.broker
        answers: List[Tuple[object, bool]] = []
        while not self._done.empty():  # only this thread takes from it
            answers.append(self._done.get_nowait())
        for token, ok in answers:
            broker.password_checked(token, ok, now)
