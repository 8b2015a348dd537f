"""The broker command's start-up as a service: `-d` (daemon), `user` (dropping root) and `-t` checks.

Theory of operation, in start-up order (cli/broker.py drives it through the Server's hooks):
1. listeners bound (as root when the ports need it);
2. `after_bind`: `-d` forks (`daemonize`): the foreground process stays, waiting on a pipe, until the
   daemon reports that it is serving (exit 0) or why it is not (the message printed, exit 1), so
   every start-up failure reaches the terminal and the exit status; the pid file is written; with
   `user`, the default data directory is created and given to that user (`prepare_data_dir`);
3. the database is opened, locked and migrated, still as root: the migration runs in a child
   interpreter, which must be able to read the Python installation (under /root, say);
4. `after_open`: the database's files are given to the user and root is dropped (`drop_privileges`).
   Modules the broker may load later (on a reload) are loaded first, and a Python installation the
   user cannot read is logged as a warning.

`check_paths(config)` is `-t`'s look at what can be checked without starting.
"""
from __future__ import annotations

import errno
import os
import _socket
import sys

from ..config import Config
from ..dblock import lock_path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

__all__ = ["daemonize", "report_ready", "report_failure", "prepare_data_dir", "drop_privileges",
           "check_paths"]

_READY = b"\0ready"


def daemonize() -> int:
    """Mosquitto's -d: detach (double fork, new session, stdio to /dev/null). Returns, in the daemon,
    the pipe on which to report to the foreground process (`report_ready` / `report_failure`); the
    foreground process waits on it and exits 0 once the daemon serves, 1 (printing the error) when it
    does not."""
    r, w = os.pipe()
    if os.fork() > 0:
        os.close(w)
        chunks = []
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        if data == _READY:
            os._exit(0)
        message = data.decode("utf-8", "replace").strip() or \
            "the broker stopped during start-up without saying why (see its log)"
        sys.stderr.write(f"Error: {message}\n")
        sys.stderr.flush()
        os._exit(1)
    os.close(r)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return w


def report_ready(fd: int) -> None:
    _send(fd, _READY)


def report_failure(fd: int, message: str) -> None:
    _send(fd, message.encode("utf-8", "replace"))


def _send(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass  # the foreground process is gone (killed): nobody to tell
    finally:
        os.close(fd)


def prepare_data_dir(config: Config) -> None:
    """As root, before the database is opened: create the default data directory when persistence
    uses it, and give the database's directory to `user` when root owns it."""
    import pwd

    if not config.persistence:
        return
    entry = pwd.getpwnam(config.user)  # type: ignore[arg-type]
    directory = os.path.dirname(config.database_path()) or "."
    if config.persistence_location is None:
        os.makedirs(directory, exist_ok=True)
    elif not os.path.isdir(directory):
        return  # the store refuses a missing persistence_location and says so
    if os.stat(directory).st_uid == 0:
        os.chown(directory, entry.pw_uid, entry.pw_gid)


def drop_privileges(config: Config) -> Optional[str]:
    """Switch from root to `user` (Mosquitto's option), once the database is open: its files (database,
    -wal, -shm, lock) are given to the user first. Returns a warning to log, or None."""
    import pwd

    entry = pwd.getpwnam(config.user)  # type: ignore[arg-type]
    if config.persistence:
        path = config.database_path()
        for name in (path, path + "-wal", path + "-shm", lock_path(path)):
            try:
                if os.stat(name).st_uid == 0:
                    os.chown(name, entry.pw_uid, entry.pw_gid)
            except FileNotFoundError:
                pass
    # Loaded lazily by a reload (an unknown option's suggestion, log_dest syslog): load them while the
    # installation is surely readable.
    import difflib  # noqa: F401
    import syslog  # noqa: F401
    os.initgroups(entry.pw_name, entry.pw_gid)
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    library = os.path.dirname(os.__file__)
    if not os.access(library, os.R_OK) or not os.access(library, os.X_OK):
        return (f"user {entry.pw_name} cannot read the Python installation ({library}): the broker runs, "
                "but a feature loaded later (a reloaded configuration enabling one) may fail; install "
                "edgebroker where that user can read it (e.g. a virtualenv under /opt) to be safe")
    return None


# ---- -t: what can be checked without starting -------------------------------------------------------

def check_paths(config: Config) -> List[str]:
    """Problems `-t` can see without starting: the log file's, pid file's and database's directories
    must exist and be writable (a missing default data directory is fine: it is created), and every
    listener's address must exist on this host (a bind to the address with an ephemeral port, closed at
    once, so a running broker on the configured port does not make the check fail). As root with
    `user`, the directories are judged as root: the broker gives its data directory to the user."""
    problems: List[str] = []
    if config.log_file:
        problems += _writable_file("log file (log_dest file)", config.log_file)
    if config.pid_file:
        problems += _writable_file("pid_file", config.pid_file)
    if config.persistence:
        path = config.database_path()
        directory = os.path.dirname(path) or "."
        if config.persistence_location is None and not os.path.exists(directory):
            pass  # the default data directory: created at start
        elif not os.path.isdir(directory):
            problems.append(f"persistence_location: the directory {directory} does not exist")
        elif not (os.access(directory, os.W_OK) and os.access(directory, os.X_OK)):
            problems.append(f"persistence_location: the directory {directory} is not writable")
        elif os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):  # novm
            problems.append(f"persistence_file: {path} is not readable and writable")
    for listener in config.listeners:
        problem = _check_address(listener.address, listener.unix_socket)
        if problem:
            problems.append(f"{listener.describe()}: {problem}")
    return problems


def _writable_file(what: str, path: str) -> List[str]:
    if os.path.exists(path):
        if os.path.isdir(path):
            return [f"{what}: {path} is a directory"]
        if not os.access(path, os.W_OK):
            return [f"{what}: {path} is not writable"]
        return []
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        return [f"{what}: the directory {directory} of {path} does not exist"]
    if not (os.access(directory, os.W_OK) and os.access(directory, os.X_OK)):
        return [f"{what}: the directory {directory} of {path} is not writable"]
    return []


def _check_address(address: Optional[str], unix_socket: Optional[str]) -> Optional[str]:
    if unix_socket is not None:
        directory = os.path.dirname(unix_socket) or "."
        if not os.path.isdir(directory):
            return f"the directory {directory} does not exist"
        if os.path.exists(unix_socket) and not _is_socket(unix_socket):
            return f"{unix_socket} exists and is not a socket"
        return None
    if address is None:
        return None  # all addresses
    try:
        infos = _socket.getaddrinfo(address, 0, _socket.AF_UNSPEC, _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE)
    except OSError as exc:
        return f"address {address} does not resolve ({exc.strerror or exc})"
    for family, kind, proto, _, sockaddr in infos:
        try:
            s = _socket.socket(family, kind, proto)  # the C socket: no context manager
            try:
                s.bind(sockaddr)  # port 0: any free port, so a broker already running is no problem
            finally:
                s.close()
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"address {address} is not an address of this host"
            return f"cannot bind address {address}: {exc.strerror or exc}"
    return None


def _is_socket(path: str) -> bool:
    import stat
    return stat.S_ISSOCK(os.stat(path).st_mode)
