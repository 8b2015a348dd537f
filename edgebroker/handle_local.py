"""In-process clients of the core: bridges, serial ports and GPIO publish and subscribe through it
without a socket (their handle is `edgebroker.local.LocalClient`).

A mixin of `edgebroker.broker.Broker` (one file per concern, as Mosquitto keeps one per packet
handler): its methods run on the Broker and use its state; see broker.py's theory of operation."""
from __future__ import annotations

from . import log as L
from .codec import valid_topic_filter, valid_topic_name
from .local import LocalClient
from .session import Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from .local import OnMessage

__all__ = ["LocalHandlers"]


class LocalHandlers:
    def attach_local(self, client_id: str, on_message: OnMessage, username: Optional[str] = None,
                     retain_as_published: bool = False) -> LocalClient:
        """A client without a socket (bridge, serial port, GPIO): see edgebroker.local. Its id is its
        own namespace: a network client with the same id is a different client. retain_as_published (a
        bridge): live messages published retained reach it with retain set, as Mosquitto's bridges."""
        if client_id in self.local_clients:
            raise ValueError(f"a local client {client_id!r} is already attached")
        session = Session(client_id, clean=True)
        session.sink = on_message
        if self._acl_on:
            session.acl = self.security.subject(username, client_id)  # the broker-wide settings' ACL
        if retain_as_published:
            self._rap.add(session)
        client = self.local_clients[client_id] = LocalClient(self, client_id, username, session)
        return client

    def detach_local(self, client: LocalClient) -> None:
        """End a local client: its subscriptions go; nothing else was kept for it."""
        if self.local_clients.get(client.client_id) is not client:
            return
        del self.local_clients[client.client_id]
        session = client.session
        self._rap.discard(session)
        for topic_filter in session.subscriptions:
            self.tree.unsubscribe(topic_filter, session)
        session.subscriptions.clear()

    def local_publish(self, client: LocalClient, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if not valid_topic_name(topic) or qos not in (0, 1, 2):
            raise ValueError(f"invalid topic {topic!r} or QoS {qos!r} from local client {client.client_id}")
        stats = self.stats
        stats.publish_received += 1
        stats.publish_bytes_received += len(payload)
        stats.messages_received += 1
        if self.debug:
            self.log(L.DEBUG, f"Received PUBLISH from {client.client_id} (d0, q{qos}, r{int(retain)}, m0, "
                              f"'{topic}', ... ({len(payload)} bytes))")
        outer, self._local_source = self._local_source, client.session  # a sink may publish in turn
        try:
            if not self._incoming(client.client_id, topic, payload, qos, retain,
                                  acl=client.session.acl if self._acl_on else None):
                self.stats.publish_dropped += 1
                self.log(L.NOTICE, f"Dropped retained PUBLISH from {client.client_id} on '{topic}': "
                                   f"retain_available is false.")
        finally:
            self._local_source = outer

    def local_subscribe(self, client: LocalClient, topic_filter: str, qos: int) -> int:
        if not valid_topic_filter(topic_filter) or qos not in (0, 1, 2):
            raise ValueError(f"invalid topic filter {topic_filter!r} or QoS {qos!r} from local client "
                             f"{client.client_id}")
        session = client.session
        if self._acl_on and not session.acl.may_subscribe(topic_filter):  # type: ignore[union-attr]
            self.log(L.NOTICE, f"Denied SUBSCRIBE from {client.client_id} to '{topic_filter}': the ACL lets "
                               "it read nothing there")
            return 0x80
        self.tree.subscribe(topic_filter, session, qos)
        session.subscriptions[topic_filter] = qos
        self.log(L.SUBSCRIBE, f"{client.client_id} {qos} {topic_filter}")
        sink = session.sink
        for msg in self.retained.matching(topic_filter):
            if self._acl_on and not session.acl.may_read(msg.topic):  # type: ignore[union-attr]
                continue
            sink(msg.topic, msg.payload, qos if qos < msg.qos else msg.qos, True)  # type: ignore[misc]
        return qos

    def local_unsubscribe(self, client: LocalClient, topic_filter: str) -> None:
        session = client.session
        if session.subscriptions.pop(topic_filter, None) is not None:
            self.tree.unsubscribe(topic_filter, session)
        self.log(L.UNSUBSCRIBE, f"{client.client_id} {topic_filter}")
