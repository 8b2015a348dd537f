"""SUBSCRIBE and UNSUBSCRIBE: the subscription tree, SUBACK codes (ACL refusals: 0x80), and the replay of
retained messages to a new subscription, in slices of REFILL_BYTES.

A mixin of `edgebroker.broker.Broker` (one file per concern, as Mosquitto keeps one per packet
handler): its methods run on the Broker and use its state; see broker.py's theory of operation."""
from __future__ import annotations

from _collections import deque  # collections.deque, without the collections package (record.namedtuple)

from . import log as L
from .codec import encode_remaining_length
from .connection import EARLY_FLUSH, Q0_REPLAY, REFILL_BYTES, Connection
from .packets import Subscribe, Unsubscribe
from .session import Session

__all__ = ["SubscribeHandlers"]


class SubscribeHandlers:
    def _on_subscribe(self, conn: Connection, p: Subscribe, now: float) -> None:
        session: Session = conn.session  # type: ignore[assignment]
        debug = self.debug
        if debug:
            self.log(L.DEBUG, f"Received SUBSCRIBE from {conn.client_id}")
        codes = []
        granted = []
        for topic_filter, qos in p.topics:
            if self._acl_on and not session.acl.may_subscribe(topic_filter):  # type: ignore[union-attr]
                codes.append(0x80)  # [MQTT-3.9.3-1]: failure; Mosquitto 2.0's acl_file grants it instead
                self.log(L.NOTICE, f"Denied SUBSCRIBE from {conn.client_id} to '{topic_filter}': the ACL lets it read "
                         "nothing there")
                continue
            granted.append((topic_filter, qos))
            self.tree.subscribe(topic_filter, session, qos)  # replaces an identical filter [MQTT-3.8.4-3]
            session.subscriptions[topic_filter] = qos
            if not session.clean:
                self.store.subscription_add(session.client_id, topic_filter, qos)
            codes.append(qos)
            if debug:
                self.log(L.DEBUG, f"\t{topic_filter} (QoS {qos})")
            if self.log_subscribe:  # not built when log_type subscribe is off (Mosquitto's default)
                self.log(L.SUBSCRIBE, f"{conn.client_id} {qos} {topic_filter}")
        # SUBACK with the same packet id [MQTT-3.8.4-2], one return code per filter [MQTT-3.8.4-5].
        pid = p.packet_id
        if len(codes) < 126:  # a one-byte remaining length: the SUBACK in one bytes() call
            conn.write(bytes((0x90, 2 + len(codes), pid >> 8, pid & 0xFF, *codes)))
        else:
            conn.write(b"".join((b"\x90", encode_remaining_length(2 + len(codes)), pid.to_bytes(2, "big"),
                                 bytes(codes))))
        self.stats.messages_sent += 1
        if debug:
            self.log(L.DEBUG, f"Sending SUBACK to {conn.client_id}")
        for topic_filter, qos in granted:
            self._send_retained(session, conn, topic_filter, qos)

    def _send_retained(self, session: Session, conn: Connection, topic_filter: str, sub_qos: int) -> None:
        """Retained messages matching a new subscription, with the retain flag set [MQTT-3.3.1-6]
        [MQTT-3.3.1-8]. QoS 1/2 ones go the way of any delivery (window, queue, store); QoS 0 ones join
        the connection's replay, sent in slices of REFILL_BYTES (`_replay`), so that a subscription to
        thousands of them does not hold every other client for the whole replay."""
        matches = self.retained.matching(topic_filter)
        if self._acl_on and session.acl is not None:
            matches = [m for m in matches if session.acl.may_read(m.topic)]  # type: ignore[attr-defined]
        if not matches:
            return
        replay = conn.replay
        if replay is None:
            replay = conn.replay = deque()
            if conn.q0_limit > 0:  # (a backed-up connection's limit says so already)
                conn.q0_limit = Q0_REPLAY  # live QoS 0 messages now queue behind the replay (see _route)
        for msg in matches:
            qos = sub_qos if sub_qos < msg.qos else msg.qos
            if qos == 0:
                replay.append(msg)
            else:
                self._deliver(session, msg, qos)
        self._replay(conn)

    def _replay(self, conn: Connection) -> None:
        """Send the connection's pending QoS 0 replay up to REFILL_BYTES of output; the rest goes on
        after the loop has sent that (`output_drained`), like a refill."""
        replay = conn.replay
        assert replay is not None
        out = conn.buffer()
        size = 0
        budget = REFILL_BYTES - conn.out_size
        sent = pbytes = 0
        debug = self.debug
        while replay:
            if size >= budget:
                conn.refill_held = True
                break
            msg = replay.popleft()
            data = msg.q0()
            out.append(data)
            size += len(data)
            sent += 1
            pbytes += len(msg.payload)
            if debug:
                self._log_sent(conn, msg, 0, 0, False)
        conn.out_size += size
        stats = self.stats
        stats.publish_sent += sent
        stats.messages_sent += sent
        stats.publish_bytes_sent += pbytes
        if not replay:
            conn.replay = None
            if conn.q0_limit == Q0_REPLAY:
                conn.q0_limit = EARLY_FLUSH
            conn.replay_live = 0

    def _on_unsubscribe(self, conn: Connection, p: Unsubscribe, now: float) -> None:
        session: Session = conn.session  # type: ignore[assignment]
        if self.debug:
            self.log(L.DEBUG, f"Received UNSUBSCRIBE from {conn.client_id}")
        for topic_filter in p.topics:
            if session.subscriptions.pop(topic_filter, None) is not None:
                self.tree.unsubscribe(topic_filter, session)
                if not session.clean:
                    self.store.subscription_remove(session.client_id, topic_filter)
            self.log(L.UNSUBSCRIBE, f"{conn.client_id} {topic_filter}")
        # UNSUBACK even when nothing matched [MQTT-3.10.4-4] [MQTT-3.10.4-5].
        self._send_ack(conn, 0xB0, p.packet_id, "UNSUBACK")
