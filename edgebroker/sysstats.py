"""Broker counters and the `$SYS/broker/...` values derived from them.

Counters are plain int attributes incremented inline by the core (no calls on the hot path); the
`$SYS` tree is computed from them every sys_interval and only topics whose value changed are
published, retained, as Mosquitto does.
"""
from __future__ import annotations

from typing import Dict

__all__ = ["Stats", "sys_values"]


class Stats:
    __slots__ = ("clients_connected", "clients_maximum", "clients_expired", "messages_received",
                 "messages_sent", "publish_received", "publish_sent", "publish_dropped",
                 "bytes_received", "bytes_sent")

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


def sys_values(stats: Stats, version: str, uptime: float, sessions: int, subscriptions: int,
               retained: int, stored: int) -> Dict[str, str]:
    """The `$SYS/broker/...` topics and their payloads (Mosquitto's names and formats)."""
    return {
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
        "$SYS/broker/bytes/received": str(stats.bytes_received),
        "$SYS/broker/bytes/sent": str(stats.bytes_sent),
        "$SYS/broker/subscriptions/count": str(subscriptions),
        "$SYS/broker/retained messages/count": str(retained),
    }
