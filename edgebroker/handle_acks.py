"""The acknowledgements of QoS 1/2 messages the broker sent (PUBACK, PUBREC, PUBCOMP) and of those it
received (PUBREL), and the wrong-kind acknowledgements that close a connection.

A mixin of `edgebroker.broker.Broker` (one file per concern, as Mosquitto keeps one per packet
handler): its methods run on the Broker and use its state; see broker.py's theory of operation."""
from __future__ import annotations

from . import log as L
from .connection import Connection
from .packets import Puback, Pubcomp, Pubrec, Pubrel
from .session import INFLIGHT_RELEASED, INFLIGHT_SENT, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Sequence

__all__ = ["AckHandlers"]


class AckHandlers:
    def _on_puback(self, conn: Connection, p: Puback, now: float) -> bool:
        """Returns True when the window has room again and messages wait (see _handle)."""
        return self._acked(conn, (p.packet_id,), now)

    def _acked(self, conn: Connection, ids: Sequence[int], now: float) -> bool:
        """PUBACKs for `ids` (one packet, or a read of nothing else): each frees the slot of a QoS 1
        message in flight. True when one did and messages wait: the caller refills the window once."""
        session: Session = conn.session  # type: ignore[assignment]
        inflight = session.inflight
        get = inflight.get
        remove = self.store.delivery_remove
        debug = self.debug
        done = False
        for pid in ids:
            if debug:
                self.log(L.DEBUG, f"Received PUBACK from {conn.client_id} (Mid: {pid}, RC:0)")
            entry = get(pid)
            if entry is not None:
                if entry[1] != 1:
                    self._wrong_ack(conn, "PUBACK", pid, "QoS 2 message", now)
                    return False
                del inflight[pid]
                done = True
                if entry[3]:
                    remove(entry[3], entry[0])
        if done:
            session.last_progress = now
            session.stalled = False
            return bool(session.queue)
        return False

    def _on_pubrec(self, conn: Connection, p: Pubrec, now: float) -> None:
        session = conn.session
        entry = session.inflight.get(p.packet_id)  # type: ignore[union-attr]
        if self.debug:
            self.log(L.DEBUG, f"Received PUBREC from {conn.client_id} (Mid: {p.packet_id})")
        if entry is not None:
            if entry[1] != 2:
                self._wrong_ack(conn, "PUBREC", p.packet_id, "QoS 1 message", now)
                return
            if entry[2] == INFLIGHT_SENT:
                entry[2] = INFLIGHT_RELEASED
                if entry[3]:
                    self.store.delivery_update(entry[3], p.packet_id, INFLIGHT_RELEASED)
        self._send_ack(conn, 0x62, p.packet_id, "PUBREL")  # [MQTT-4.3.3-3]

    def _on_pubrel(self, conn: Connection, p: Pubrel, now: float) -> None:
        session: Session = conn.session  # type: ignore[assignment]
        if self.debug:
            self.log(L.DEBUG, f"Received PUBREL from {conn.client_id} (Mid: {p.packet_id})")
        awaiting = session.awaiting_rel
        if p.packet_id in awaiting:
            held = awaiting.pop(p.packet_id)
            if not session.clean:
                self.store.inbound_remove(session.client_id, p.packet_id)
            # [MQTT-4.3.3-2]; with a commit window it waits for the deliveries the release makes
            self._send_ack(conn, 0x70, p.packet_id, "PUBCOMP", hold=held is not None)
            if held is not None:  # released now, after the PUBCOMP as Mosquitto sends them
                self._source = conn
                self._incoming(conn.client_id, held[0], held[1], 2, held[2], False, p.packet_id,
                               exclude=session if conn.bridge else None)
                self._source = None
            return
        self._send_ack(conn, 0x70, p.packet_id, "PUBCOMP")  # [MQTT-4.3.3-2]

    def _on_pubcomp(self, conn: Connection, p: Pubcomp, now: float) -> bool:
        """Returns True when the window has room again and messages wait (see _handle)."""
        session: Session = conn.session  # type: ignore[assignment]
        entry = session.inflight.get(p.packet_id)
        if self.debug:
            self.log(L.DEBUG, f"Received PUBCOMP from {conn.client_id} (Mid: {p.packet_id}, RC:0)")
        if entry is None:
            return False
        if entry[1] != 2 or entry[2] != INFLIGHT_RELEASED:
            self._wrong_ack(conn, "PUBCOMP", p.packet_id,
                            "QoS 1 message" if entry[1] != 2 else "QoS 2 message whose PUBREC has not come", now)
            return False
        del session.inflight[p.packet_id]
        session.last_progress = now
        session.stalled = False
        if entry[3]:
            self.store.delivery_remove(entry[3], entry[0])
        return bool(session.queue)

    def _wrong_ack(self, conn: Connection, name: str, pid: int, what: str, now: float) -> None:
        """An acknowledgement of the wrong kind for a message in flight: a protocol violation, so the
        connection closes [MQTT-4.8.0-1], as Mosquitto does. QoS 1 is acknowledged by PUBACK alone
        [MQTT-4.3.2-1]; QoS 2 by PUBREC, then PUBCOMP for the PUBREL [MQTT-4.3.3-1]. The message stays
        in flight: a persistent session gets it again on reconnect."""
        self._close(conn, now, f"protocol error: {name} for packet id {pid}, a {what}")
