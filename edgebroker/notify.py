"""systemd's notify protocol (sd_notify(3)), written out: one datagram per message, no dependency.

A service started with Type=notify finds the address of the service manager's socket in $NOTIFY_SOCKET
(a path, or an abstract name written with a leading '@') and sends it newline-separated KEY=VALUE
lines: READY=1 when it serves, RELOADING=1 (with MONOTONIC_USEC=) then READY=1 around a reload,
STOPPING=1 on the way out, STATUS= free text for `systemctl status`, WATCHDOG=1 keep-alives when the
unit sets WatchdogSec (then $WATCHDOG_USEC holds the interval; $WATCHDOG_PID, when set, names the
process meant).

The loop owns the clock: it calls `Notifier.tick(now, clients)` once per turn, which sends what is due
(a watchdog ping every half interval, a STATUS line at most once a second when the client count
changed) and returns when it next needs a turn. With no $NOTIFY_SOCKET `from_environ()` returns None
and the loop does nothing at all. A send that fails (the manager went away) is dropped: notification is
advice, never a reason to stop serving.
"""
from __future__ import annotations

import os
import _socket
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Mapping, Optional

__all__ = ["Notifier", "STATUS_INTERVAL"]

#: Least time between two STATUS updates caused by clients coming and going (a connect storm must not
#: become a datagram storm).
STATUS_INTERVAL = 1.0

_NEVER = float("inf")


class Notifier:
    """Sends notifications to one service-manager socket. Construct with `from_environ()`."""

    def __init__(self, address: str, watchdog_interval: Optional[float] = None) -> None:
        """`address` as in $NOTIFY_SOCKET; `watchdog_interval` in seconds (None: no watchdog)."""
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval = watchdog_interval
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._next_watchdog = _NEVER
        self._clients = -1         # the count the last STATUS line showed
        self._status_after = 0.0   # monotonic time before which no client-count STATUS goes out

    @classmethod
    def from_environ(cls, environ: Optional[Mapping[str, str]] = None) -> Optional["Notifier"]:
        """A Notifier for $NOTIFY_SOCKET, or None when the process was not started by a service
        manager that listens. $WATCHDOG_USEC is honoured unless $WATCHDOG_PID names another process."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        if not address or not (address.startswith("/") or address.startswith("@")):
            return None  # unset, or a vsock address (vsock:CID:PORT) we do not speak
        interval: Optional[float] = None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
            pid = int(env.get("WATCHDOG_PID", "") or os.getpid())
        except ValueError:
            usec, pid = 0, 0
        if usec > 0 and pid == os.getpid():
            interval = usec / 1e6
        return cls(address, interval)

    def send(self, message: str) -> bool:
        """Send one notification (lines joined by newlines); False when it could not be delivered."""
        try:
            self._sock.sendto(message.encode("utf-8", "replace"), self.address)
        except OSError:
            return False
        return True

    def ready(self, now: float, clients: int = 0) -> None:
        """The broker serves: READY=1 with the first STATUS; starts the watchdog clock."""
        self._clients = clients
        self._status_after = now + STATUS_INTERVAL
        self.send(f"READY=1\nSTATUS={_status(clients)}")
        if self.watchdog_interval is not None:
            self.send("WATCHDOG=1")
            self._next_watchdog = now + self.watchdog_interval / 2

    def reloading(self) -> None:
        """A reload begins: RELOADING=1 with CLOCK_MONOTONIC in microseconds, as Type=notify-reload
        requires (older managers ignore the extra line). Follow it with `reloaded()`."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=Reloading the configuration")

    def reloaded(self, error: Optional[str] = None) -> None:
        """The reload is over, applied or not (a bad file keeps the running configuration)."""
        status = _status(max(self._clients, 0))
        if error is not None:
            error = " ".join(error.split())  # one line: a newline would start another KEY=VALUE
            status = f"Reload failed, running configuration kept: {error}; {status}"
        self.send(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=Stopping")

    def tick(self, now: float, clients: int) -> float:
        """Send what is due at monotonic time `now`; returns when the next turn is needed (inf: none)."""
        wake = self._next_watchdog
        if now >= wake:
            self.send("WATCHDOG=1")
            assert self.watchdog_interval is not None
            wake = self._next_watchdog = now + self.watchdog_interval / 2
        if clients != self._clients:
            if now >= self._status_after:
                self._clients = clients
                self._status_after = now + STATUS_INTERVAL
                self.send(f"STATUS={_status(clients)}")
            elif self._status_after < wake:
                wake = self._status_after
        return wake

    def close(self) -> None:
        self._sock.close()


def _status(clients: int) -> str:
    return f"Serving: {clients} client{'' if clients == 1 else 's'} connected"
