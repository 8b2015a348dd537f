"""One database, one broker: an exclusive lock held for the broker's whole life.

Theory of operation: beside the database `FILE` lives `FILE.lock`, holding the pid of the broker that
owns the database. The broker opens it and takes flock(LOCK_EX | LOCK_NB) on it before SQLite opens the
database; a second broker on the same database finds the lock taken and refuses to start, naming the
file and the pid written in the lock file. The kernel drops the lock when its process dies (kill -9,
power cut), so a stale lock file never blocks a restart.

A separate file, not the database itself: SQLite keeps POSIX (fcntl) locks on the database, and a
process that closes any descriptor of a file loses all its POSIX locks on it, so the database file is
not ours to open and close; flock on the database could also be turned into POSIX locks by the kernel
on network file systems.

The lock file is removed at a clean stop, while still locked. A broker that opened the file just
before (and waits for nothing: LOCK_NB) may then lock the removed file; it checks after locking that
the path still names the file it locked, and starts over otherwise.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pwd

from .errors import StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

__all__ = ["DatabaseLock", "DatabaseInUse", "lock_path", "check_directory"]

_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC  # novm
_LOCK_FLAGS = fcntl.LOCK_EX | fcntl.LOCK_NB  # novm
_WRITE_AND_ENTER = os.W_OK | os.X_OK  # novm


class DatabaseInUse(StoreError):
    """Another process holds the database's lock; the message names the file and the holder."""


def lock_path(database: str) -> str:
    return database + ".lock"


class DatabaseLock:
    """`DatabaseLock(database_path)` takes the lock or raises DatabaseInUse (or OSError when the lock
    file cannot be created); `release()` removes the lock file and drops the lock."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.path = lock_path(database)
        self._fd: Optional[int] = None
        for _ in range(100):  # each retry means the file was replaced under us: bounded, never loops
            try:
                fd = os.open(self.path, _OPEN_FLAGS, 0o644)
            except OSError as exc:
                raise StoreError(f"persistence database {database}: cannot create its lock file {self.path} "
                                 f"({exc.strerror or exc}). Fix the directory's permissions, or point "
                                 "persistence_location elsewhere.") from None
            try:
                fcntl.flock(fd, _LOCK_FLAGS)
            except OSError as exc:
                holder = _read_pid(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = f"process {holder}" if holder else "another process"
                raise DatabaseInUse(f"persistence database {database} is in use by {who} (lock file "
                                    f"{self.path}): is another edgebroker running? Stop it, or give this "
                                    "broker its own persistence_location.") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed it while stopping: lock the new file
        else:  # pragma: no cover - would need another process replacing the file 100 times in a row
            raise DatabaseInUse(f"persistence database {database}: cannot take its lock file {self.path}")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        except OSError as exc:  # a full disk: the lock holds without the pid (only the refusal's message uses it)
            if exc.errno != errno.ENOSPC:
                os.close(fd)
                raise
        self._fd = fd

    def release(self) -> None:
        """Idempotent. Removes the lock file first, then unlocks (see the module's docstring)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)


def check_directory(database: str, create: bool) -> None:
    """The database's directory must exist and be writable (SQLite creates the -wal and -shm files
    beside the database, and we the lock file). `create`: make it when missing (the default data
    directory); a configured persistence_location that does not exist is an error, as in Mosquitto.
    Raises StoreError naming the directory and the cause."""
    directory = os.path.dirname(database) or "."
    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise StoreError(f"persistence database {database}: {directory} is not a directory. Point "
                             "persistence_location at a directory.")
        if not create:
            raise StoreError(f"persistence database {database}: the directory {directory} does not exist. "
                             "Create it (writable by the user the broker runs as), or set "
                             "persistence_location to an existing directory.")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"persistence database {database}: cannot create its directory {directory} "
                             f"({exc.strerror or exc}). Create it, or set persistence_location to a writable "
                             "directory.") from None
    if not os.access(directory, _WRITE_AND_ENTER):
        raise StoreError(f"persistence database {database}: the directory {directory} is not writable by "
                         f"{_whoami()} (the broker creates the database, its -wal and -shm files and a lock "
                         "file there). Fix the directory's owner or permissions, or point "
                         "persistence_location elsewhere.")


def _whoami() -> str:
    try:
        return f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return "this user"


def _read_pid(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None
