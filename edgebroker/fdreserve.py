"""Running out of file descriptors at accept(): refuse at once, back off, say it once.

When the process (or the system) has no descriptor left, accept() fails with EMFILE (ENFILE) and the
connection stays in the listen backlog: the listening socket stays readable, and a loop that polls it
spins at 100 % CPU, logging the error each turn (about 17 MB/s of log, measured). The usual remedy,
done here: one spare descriptor is kept open; when accept() fails for want of descriptors, the spare is
closed, the waiting connections are accepted and closed at once (their clients see the connection
closed, not a hang, and retry later), and the spare is opened again. The server then stops polling
that listener until a descriptor frees (one of its connections closes) or RETRY seconds pass.
"""
from __future__ import annotations

import errno
import os
import _socket

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

__all__ = ["DescriptorReserve", "OUT_OF_DESCRIPTORS", "RETRY", "descriptor_limit"]

#: errno values of accept() that mean "no descriptor (or kernel memory) for a new socket"
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: Seconds a listener stays unpolled after running out, unless a connection closes first (descriptors
#: may also be freed by something that is not a connection: a closed database or log file).
RETRY = 1.0


class DescriptorReserve:
    """One descriptor held in reserve (/dev/null, read-only) to refuse connections with."""

    def __init__(self) -> None:
        self._spare: Optional[int] = self._open()

    @staticmethod
    def _open() -> Optional[int]:
        try:
            return os.open(os.devnull, os.O_RDONLY)
        except OSError:
            return None

    def refuse_waiting(self, sock: _socket.socket, limit: int) -> Optional[int]:
        """Accept and close at once up to `limit` connections waiting on `sock`, using the spare
        descriptor; returns how many were refused, None when not even the spare could be had. 0 means
        none was waiting: accept() looks for a free descriptor before it looks at the queue, so it
        fails with EMFILE on an empty queue too once the last descriptor is taken."""
        if self._spare is None:
            self._spare = self._open()
            if self._spare is None:
                return None
        os.close(self._spare)
        self._spare = None
        refused = 0
        try:
            for _ in range(limit):
                try:
                    fd, _ = sock._accept()  # type: ignore[attr-defined]
                except OSError:
                    break
                os.close(fd)
                refused += 1
        finally:
            self._spare = self._open()
        return refused

    def close(self) -> None:
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


def descriptor_limit() -> str:
    """The process's soft limit on open files, for the log line ("unknown" off Unix)."""
    try:
        import resource
    except ImportError:
        return "unknown"
    return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
