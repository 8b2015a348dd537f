"""Broker counters and the `$SYS/broker/...` values derived from them.

Counters are plain int attributes incremented inline by the core (no calls on the hot path); the
`$SYS` tree is computed from them every sys_interval and only topics whose value changed are
published, retained, as Mosquitto does.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Optional

__all__ = ["Stats", "LoadAverages", "sys_values"]

#: math.e, for the load averages' decay: `math` is a shared library of its own in some builds of Python
#: (the bench's pyenv 3.11: 76 KiB resident), and e ** x is all the broker wanted of it.
_E = 2.718281828459045


class Stats:
    __slots__ = ("clients_connected", "clients_maximum", "clients_expired", "messages_received",
                 "messages_sent", "publish_received", "publish_sent", "publish_dropped",
                 "bytes_received", "bytes_sent", "connections", "sockets", "publish_bytes_received",
                 "publish_bytes_sent", "connections_refused")

    def __init__(self) -> None:
        self.clients_connected = 0
        self.clients_maximum = 0
        self.clients_expired = 0
        self.messages_received = 0  # every MQTT packet received, as Mosquitto's messages/received
        self.messages_sent = 0      # every MQTT packet sent
        self.publish_received = 0
        self.publish_sent = 0
        self.publish_dropped = 0    # publishes not delivered because a bound was hit
        self.bytes_received = 0
        self.bytes_sent = 0
        self.connections = 0        # CONNECTs accepted since start
        self.sockets = 0            # sockets accepted since start
        self.publish_bytes_received = 0  # payload bytes of PUBLISH received / sent (Mosquitto's)
        self.publish_bytes_sent = 0
        self.connections_refused = 0     # connections closed at accept: out of file descriptors (ours)


#: The counters with load averages, by their $SYS/broker/load/... name.
_LOAD_COUNTERS = (
    ("messages/received", "messages_received"), ("messages/sent", "messages_sent"),
    ("publish/received", "publish_received"), ("publish/sent", "publish_sent"),
    ("publish/dropped", "publish_dropped"), ("bytes/received", "bytes_received"),
    ("bytes/sent", "bytes_sent"), ("connections", "connections"), ("sockets", "sockets"),
)
_WINDOWS = (("1min", 60.0), ("5min", 300.0), ("15min", 900.0))


class LoadAverages:
    """Mosquitto's load figures: per-minute rates of each counter, smoothed by exponential moving
    averages over 1, 5 and 15 minutes (like the Unix load average), updated every sys_interval."""

    def __init__(self, stats: Stats, now: float) -> None:
        self._stats = stats
        self._last_time = now
        self._last = {attr: getattr(stats, attr) for _, attr in _LOAD_COUNTERS}
        self._value = {(name, window): 0.0 for name, _ in _LOAD_COUNTERS for window, _ in _WINDOWS}

    def update(self, now: float) -> Dict[str, str]:
        elapsed = now - self._last_time
        if elapsed > 0:
            self._last_time = now
            for name, attr in _LOAD_COUNTERS:
                count = getattr(self._stats, attr)
                per_minute = (count - self._last[attr]) * 60.0 / elapsed
                self._last[attr] = count
                for window, seconds in _WINDOWS:
                    decay = _E ** (-elapsed / seconds)
                    key = (name, window)
                    self._value[key] = decay * self._value[key] + (1.0 - decay) * per_minute
        return {f"$SYS/broker/load/{name}/{window}": f"{value:.2f}"
                for (name, window), value in self._value.items()}


def sys_values(stats: Stats, version: str, uptime: float, sessions: int, subscriptions: int,
               retained: int, stored: int, stored_bytes: int, rss: Optional[int] = None) -> Dict[str, str]:
    """The `$SYS/broker/...` topics and their payloads (Mosquitto's names and formats). Mosquitto's
    heap figures count its own allocations; ours is the process's resident memory (RSS)."""
    values = {
        "$SYS/broker/version": f"edgebroker version {version}",
        "$SYS/broker/uptime": f"{int(uptime)} seconds",
        "$SYS/broker/clients/connected": str(stats.clients_connected),
        "$SYS/broker/clients/active": str(stats.clients_connected),
        "$SYS/broker/clients/total": str(sessions),
        "$SYS/broker/clients/disconnected": str(sessions - stats.clients_connected),
        "$SYS/broker/clients/inactive": str(sessions - stats.clients_connected),
        "$SYS/broker/clients/maximum": str(stats.clients_maximum),
        "$SYS/broker/clients/expired": str(stats.clients_expired),
        "$SYS/broker/messages/received": str(stats.messages_received),
        "$SYS/broker/messages/sent": str(stats.messages_sent),
        "$SYS/broker/messages/stored": str(stored),
        "$SYS/broker/store/messages/count": str(stored),
        "$SYS/broker/publish/messages/received": str(stats.publish_received),
        "$SYS/broker/publish/messages/sent": str(stats.publish_sent),
        "$SYS/broker/publish/messages/dropped": str(stats.publish_dropped),
        "$SYS/broker/publish/bytes/received": str(stats.publish_bytes_received),
        "$SYS/broker/publish/bytes/sent": str(stats.publish_bytes_sent),
        "$SYS/broker/bytes/received": str(stats.bytes_received),
        "$SYS/broker/bytes/sent": str(stats.bytes_sent),
        "$SYS/broker/subscriptions/count": str(subscriptions),
        "$SYS/broker/retained messages/count": str(retained),
        "$SYS/broker/store/messages/bytes": str(stored_bytes),
        # No shared subscriptions here ($share/... is an ordinary filter): Mosquitto's topic, truly 0.
        "$SYS/broker/shared_subscriptions/count": "0",
        # Ours: connections accepted and closed at once because the process ran out of descriptors.
        "$SYS/broker/connections/refused": str(stats.connections_refused),
    }
    if rss is not None:
        values["$SYS/broker/heap/current"] = str(rss)
    return values
