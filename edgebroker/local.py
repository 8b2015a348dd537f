"""In-process clients of the broker core: a bridge, a serial port, a GPIO pin publishing and subscribing
without a socket.

Theory of operation: a LocalClient is a clean session whose delivery is a callback instead of a
connection. `Broker.attach_local` creates it; its session sits in the topic tree like any other, with
`Session.sink` set to the callback, so routing finds it without a second tree. The core calls the sink
synchronously while it routes, inside the loop turn: whatever the callee records in the store is part
of that turn's commit, and so is durable before the publisher's acknowledgement leaves. A local client
never receives its own messages (no-local), so a bridge cannot loop what it forwards.

A local client has no wire, no inflight window and no queue: the callee owns what happens next (the
uplink queues on disk, a serial port buffers for its device). Its publishes enter the core exactly as a
network client's PUBLISH does (retained handling, size limit, `$SYS` counters, deliveries to persistent
sessions), without the acknowledgement.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    #: on_message(topic, payload, qos, retain): qos is min(published QoS, subscription QoS); retain is
    #: set only for retained messages sent when the client subscribes.
    OnMessage = Callable[[str, bytes, int, bool], None]

__all__ = ["LocalClient"]


class LocalClient:
    """Handle of one in-process client. Create it with `Broker.attach_local`; end it with
    `Broker.detach_local`."""

    __slots__ = ("client_id", "username", "session", "_broker")

    def __init__(self, broker: Any, client_id: str, username: Optional[str], session: Any) -> None:
        self._broker = broker
        self.client_id = client_id
        self.username = username
        self.session = session

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Publish as this client. Returns once the message is routed (delivered or queued)."""
        self._broker.local_publish(self, topic, payload, qos, retain)

    def subscribe(self, topic_filter: str, qos: int) -> int:
        """Subscribe; retained messages matching the filter are delivered at once (retain set).
        Returns the granted QoS, 0x80 when refused."""
        return self._broker.local_subscribe(self, topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self._broker.local_unsubscribe(self, topic_filter)

    def __repr__(self) -> str:
        return f"<LocalClient {self.client_id!r}>"
