"""What the loop asks of the operating system besides reading and writing: a TCP socket's counters
(TCP_INFO), the loop thread's CPU scheduling policy, and the process's resident memory.

Each is Linux's where Linux has it, and answers "not known" (0, None, False) elsewhere, so that the
loop takes its general path there. Of ours it imports only log (the scheduling policy's messages);
server.py, the loop, is its one user.
"""
from __future__ import annotations

import _socket
import os
import struct
import sys

from . import log as L

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Optional

__all__ = ["accept_queue", "bytes_received", "NODELAY_INHERITED", "set_scheduling_policy", "follow_cpus",
           "resident_memory"]

_TCP_INFO = getattr(_socket, "TCP_INFO", None) if sys.platform.startswith("linux") else None


def _tcp_info_field(layout: str, doc: str) -> Callable[[_socket.socket], int]:
    """A reader of one field of a TCP socket's TCP_INFO (Linux), `layout` its offset and type as a
    struct format; it gives 0 where that is not known. (A function made per field, not one taking the
    field: it is on the connect path, where a call more was 1.5% of a connection's instructions.)"""
    unpack = struct.Struct(layout).unpack_from
    size = struct.calcsize(layout)

    def read(sock: _socket.socket) -> int:
        if _TCP_INFO is None:
            return 0
        try:
            return unpack(sock.getsockopt(_socket.IPPROTO_TCP, _TCP_INFO, size))[0]
        except (OSError, struct.error):
            return 0

    read.__doc__ = doc
    return read


accept_queue = _tcp_info_field(
    "=24xI", """The connections waiting in a listening TCP socket's accept queue; 0 where that is not known.
    Linux reports it in the listener's TCP_INFO as tcpi_unacked (offset 24; the kernel aliases the field
    for listeners, and `ss -lt` shows it as Recv-Q).""")
bytes_received = _tcp_info_field(
    "=128xQ", """The bytes a TCP socket has received so far (Linux's TCP_INFO, tcpi_bytes_received at
    offset 128: kernel 4.1 and later); 0 where that is not known.""")


#: Linux gives an accepted socket the listener's TCP_NODELAY (inet_csk_clone_lock copies the socket), so it
#: is set once on the listener, not by a system call per connection.
NODELAY_INHERITED = sys.platform.startswith("linux")


def set_scheduling_policy(policy: str, log: L.LogFunc) -> Optional[bool]:
    """Give the calling thread (the loop's) the CPU scheduling policy of Config.scheduling_policy, and
    log it when that changes anything. Returns, for `auto` when the thread had the normal policy, whether
    it may run on one CPU only (then `follow_cpus` keeps the choice up to date); None otherwise (a
    policy named in the configuration, or one a service manager chose: they stand)."""
    if not hasattr(os, "sched_setscheduler"):
        return None  # not Linux: the platform's default
    if policy == "auto":
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            return None  # a policy the service manager chose
        one_cpu = len(os.sched_getaffinity(0)) == 1
        if one_cpu:
            _set_policy("batch", log)
        return one_cpu
    _set_policy(policy, log)
    return None


def follow_cpus(one_cpu: bool, log: L.LogFunc) -> bool:
    """`auto` while the broker runs: the CPUs it may use can change (`taskset -p` on its pid, a cgroup
    cpuset changed). Given what was last seen, set the policy the CPUs now call for; return whether it
    may run on one CPU only."""
    now_one = len(os.sched_getaffinity(0)) == 1
    if now_one != one_cpu:
        _set_policy("batch" if now_one else "other", log)
    return now_one


def _set_policy(policy: str, log: L.LogFunc) -> None:
    target = os.SCHED_BATCH if policy == "batch" else os.SCHED_OTHER
    if os.sched_getscheduler(0) == target:
        return
    try:
        os.sched_setscheduler(0, target, os.sched_param(0))
    except OSError as exc:
        log(L.WARNING, f"Warning: cannot set scheduling_policy {policy}: {exc.strerror or exc}.")
        return
    if policy == "batch":
        log(L.NOTICE, "Scheduling policy SCHED_BATCH: clients on this CPU are not preempted when a packet "
                      "wakes the broker.")
    else:
        log(L.NOTICE, "Scheduling policy SCHED_OTHER.")


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory() -> int:
    """The process's resident set size in bytes (Linux), for $SYS/broker/heap; 0 where unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0
