"""The client side of one MQTT 3.1/3.1.1 session with a remote broker, sans-IO: the bridge's protocol.

Theory of operation: an `UplinkSession` lives as long as the bridge; each TCP (or TLS) connection calls
`connect(now)`, which queues the CONNECT, and then feeds what the socket reads to
`data_received(data, now)`, which returns events: `Connected`, `Refused`, `Received` (a message from the
remote), `Acked` (our PUBLISH completed: PUBACK, or PUBCOMP for QoS 2; it carries the caller's token),
`Subscribed`, `Lost`. Whatever must go to the remote accumulates in `out` (a list of byte strings); the
caller writes it to the socket and clears it. `tick(now)` runs the keepalive (a PINGREQ after
`keepalive` seconds without sending; the peer counts as dead when nothing, not even the PINGRESP, has
come back within another keepalive) and the CONNACK deadline, and returns when it next wants to run.
No sockets, no clock of its own, no logging: the bridge does those.

Packets we publish stay in `inflight` (packet id -> [state, token, topic, payload, qos, retain]) until
acknowledged, across connections: `resend()` after a reconnect sends them again in their original order,
PUBLISH with DUP set or PUBREL [MQTT-4.4.0-1]. `window` bounds how many may be in flight. The caller's
token (the row of its queue) comes back in `Acked`.

try_private: the CONNECT carries protocol level | 0x80, Mosquitto's bridge marker; a remote that answers
CONNACK 1 (unacceptable protocol version), or closes the connection before any CONNACK, is asked again
without it on the next connection (`private` turns false and stays false), as Mosquitto does.
"""
from __future__ import annotations

from .codec import Parser, encode, encode_publish, publish_head
from .errors import MalformedPacket
from .packets import (
    Connack, Connect, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Subscribe, Unsuback,
    Unsubscribe, Will,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple
else:
    from .record import NamedTuple

__all__ = ["UplinkSession", "Connected", "Refused", "Received", "Acked", "Subscribed", "Lost",
           "PROTOCOL_NAMES", "PRIVATE_FLAG"]

PROTOCOL_NAMES = {3: "MQIsdp", 4: "MQTT"}
#: Mosquitto's bridge marker: the top bit of the protocol level in CONNECT.
PRIVATE_FLAG = 0x80
#: Seconds to wait for the CONNACK when keepalive is off (otherwise one keepalive period).
CONNACK_TIMEOUT = 30.0

#: PUBLISH first bytes by QoS and retain flag (no DUP)
_FIRST = [bytes((0x30 | flags,)) for flags in range(8)]
_SENT, _RELEASED = 0, 1  # inflight states: PUBLISH awaiting PUBACK/PUBREC; PUBREL awaiting PUBCOMP
_PINGREQ = b"\xc0\x00"


class Connected(NamedTuple):
    session_present: bool


class Refused(NamedTuple):
    """CONNACK with a non-zero return code. `retry_plain`: it refused the private protocol level, and the
    next connection goes without it."""
    return_code: int
    retry_plain: bool


class Received(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Acked(NamedTuple):
    token: Any


class Subscribed(NamedTuple):
    packet_id: int
    return_codes: Tuple[int, ...]


class Lost(NamedTuple):
    """The session cannot go on over this connection: the caller closes the socket."""
    reason: str


class UplinkSession:
    def __init__(self, client_id: str, protocol_level: int = 4, clean_session: bool = False,
                 keepalive: int = 60, username: Optional[str] = None, password: Optional[bytes] = None,
                 will: Optional[Will] = None, try_private: bool = True, window: int = 20,
                 max_packet_size: int = 0) -> None:
        if protocol_level not in PROTOCOL_NAMES:
            raise ValueError(f"protocol level {protocol_level}: 3 (MQTT 3.1) or 4 (MQTT 3.1.1)")
        self.client_id = client_id
        self.protocol_level = protocol_level
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.username = username
        self.password = password
        self.will = will
        #: Send the private (bridge) protocol level; turns false for good once the remote refuses it.
        self.private = try_private
        self.window = window
        self.max_packet_size = max_packet_size
        self.out: List[bytes] = []
        self.out_size = 0
        self.connected = False   # CONNACK 0 received on the current connection
        self.connecting = False  # CONNECT sent, CONNACK not yet
        #: packet id -> [state, token, topic, payload, qos, retain], in the order they were first sent
        self.inflight: Dict[int, List[Any]] = {}
        self._awaiting_rel: Set[int] = set()  # incoming QoS 2 ids between PUBREC and PUBREL
        self._last_pid = 0
        self._parser = Parser(max_packet_size)
        self._connect_at = 0.0
        self._last_out = 0.0
        self._last_in = 0.0
        self._ping_sent: Optional[float] = None
        self._sent_private = False

    # ---- output ---------------------------------------------------------------------------------

    def _write(self, data: bytes, now: float) -> None:
        self.out.append(data)
        self.out_size += len(data)
        self._last_out = now

    def take_output(self) -> bytes:
        """All output queued so far, as one string; the queue is emptied."""
        data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
        self.out.clear()
        self.out_size = 0
        return data

    # ---- the connection -------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """A new connection is open: queue the CONNECT. Output of an earlier connection is dropped."""
        self.out.clear()
        self.out_size = 0
        self._parser = Parser(self.max_packet_size)
        self.connected = False
        self.connecting = True
        self._connect_at = now
        self._last_in = now
        self._ping_sent = None
        self._sent_private = self.private
        level = self.protocol_level | (PRIVATE_FLAG if self.private else 0)
        self._write(encode(Connect(PROTOCOL_NAMES[self.protocol_level], level, self.clean_session,
                                   self.keepalive, self.client_id, self.will, self.username, self.password)), now)

    def connection_lost(self) -> None:
        """The socket closed (for any reason). A remote that closes right after a private CONNECT is
        taken to refuse it, like a CONNACK 1."""
        if self.connecting and self._sent_private:
            self.private = False
        self.connected = self.connecting = False
        self.out.clear()
        self.out_size = 0

    def tick(self, now: float) -> Tuple[float, Optional[Lost]]:
        """Keepalive and CONNACK deadline: returns (when to call again, Lost or None)."""
        if self.connecting:
            limit = self._connect_at + (self.keepalive or CONNACK_TIMEOUT)
            if now >= limit:
                return float("inf"), Lost("no CONNACK within the keepalive period")
            return limit, None
        if not self.connected or not self.keepalive:
            return float("inf"), None
        if self._ping_sent is not None:
            # Dead peer: nothing came back within a keepalive period of our PINGREQ.
            if self._last_in >= self._ping_sent:
                self._ping_sent = None
            elif now >= self._ping_sent + self.keepalive:
                return float("inf"), Lost("no answer to PINGREQ within the keepalive period")
            else:
                return self._ping_sent + self.keepalive, None
        due = self._last_out + self.keepalive
        if now >= due:
            self._write(_PINGREQ, now)
            self._ping_sent = now
            return now + self.keepalive, None
        return due, None

    # ---- sending --------------------------------------------------------------------------------

    def _next_pid(self) -> int:
        for _ in range(65535):
            self._last_pid = self._last_pid % 65535 + 1  # 0 is never a packet identifier [MQTT-2.3.1-1]
            if self._last_pid not in self.inflight:
                return self._last_pid
        raise RuntimeError("all 65535 packet identifiers in flight")

    @property
    def window_free(self) -> bool:
        return len(self.inflight) < self.window

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, token: Any, now: float) -> int:
        """Send one PUBLISH (only while connected); QoS 1/2 are kept in flight until acknowledged and
        return their packet id; QoS 0 returns 0 and is done."""
        if qos == 0:
            self._write(encode_publish(topic, payload, 0, retain), now)
            return 0
        inflight = self.inflight
        pid = self._last_pid % 65535 + 1
        if pid in inflight:
            pid = self._next_pid()
        else:
            self._last_pid = pid
        inflight[pid] = [_SENT, token, topic, payload, qos, retain]
        # encode_publish's bytes, in pieces that take_output joins (once per message: a stream's)
        raw = topic.encode("utf-8")
        head = publish_head(4 + len(raw) + len(payload), raw)
        self.out += (_FIRST[(qos << 1) | (1 if retain else 0)], head, pid.to_bytes(2, "big"), payload)
        self.out_size += 3 + len(head) + len(payload)
        self._last_out = now
        return pid

    def resend(self, now: float) -> int:
        """After CONNACK on a new connection: everything in flight again, in order; returns the count."""
        for pid, entry in self.inflight.items():
            if entry[0] == _SENT:
                self._write(encode_publish(entry[2], entry[3], entry[4], entry[5], True, pid), now)
            else:
                self._write(encode(Pubrel(pid)), now)
        return len(self.inflight)

    def forget_inflight(self) -> List[Any]:
        """Drop everything in flight (the caller resends it itself, e.g. after a restart); returns the
        tokens, in order."""
        tokens = [entry[1] for entry in self.inflight.values()]
        self.inflight.clear()
        return tokens

    def subscribe(self, topics: List[Tuple[str, int]], now: float) -> int:
        pid = self._next_pid()
        self._write(encode(Subscribe(pid, tuple(topics))), now)
        return pid

    def unsubscribe(self, topics: List[str], now: float) -> int:
        pid = self._next_pid()
        self._write(encode(Unsubscribe(pid, tuple(topics))), now)
        return pid

    # ---- receiving ------------------------------------------------------------------------------

    def acked_tokens(self, data: bytes, now: float) -> Optional[List[Any]]:
        """When `data` is a run of PUBACKs only (the commonest read, in a stream): the tokens of the
        QoS 1 messages it completes, in order, what data_received would return as Acked events, without
        an event each. Otherwise None, and nothing is consumed: the caller then calls data_received."""
        if not self.connected:
            return None
        ids = self._parser.ack_run(data, 0x40)
        if ids is None:
            return None
        self._last_in = now
        tokens = []
        inflight = self.inflight
        for pid in ids:
            entry = inflight.get(pid)
            if entry is not None and entry[4] == 1:
                del inflight[pid]
                tokens.append(entry[1])
        return tokens

    def data_received(self, data: bytes, now: float) -> List[object]:
        tokens = self.acked_tokens(data, now)
        if tokens is not None:
            return [Acked(token) for token in tokens]
        self._last_in = now
        try:
            packets = self._parser.feed(data)
        except MalformedPacket as exc:
            events = self._handle(exc.packets, now)  # type: ignore[attr-defined]
            events.append(Lost(f"malformed packet from the remote: {exc}"))
            return events
        return self._handle(packets, now)

    def _handle(self, packets: List[object], now: float) -> List[object]:
        events: List[object] = []
        for p in packets:
            kind = type(p)
            if self.connecting:
                if kind is not Connack:
                    events.append(Lost(f"expected CONNACK, received {kind.__name__.upper()}"))
                    return events
                self.connecting = False
                if p.return_code != 0:  # type: ignore[attr-defined]
                    retry = p.return_code == 1 and self._sent_private  # type: ignore[attr-defined]
                    if retry:
                        self.private = False
                    events.append(Refused(p.return_code, retry))  # type: ignore[attr-defined]
                    return events
                self.connected = True
                events.append(Connected(p.session_present))  # type: ignore[attr-defined]
            elif kind is Puback or kind is Pubcomp:
                entry = self.inflight.get(p.packet_id)  # type: ignore[attr-defined]
                # A PUBACK completes a QoS 1 PUBLISH, a PUBCOMP a released QoS 2 one; others are stale.
                if entry is not None and ((kind is Puback and entry[4] == 1) or (kind is Pubcomp and entry[0] == _RELEASED)):
                    del self.inflight[p.packet_id]  # type: ignore[attr-defined]
                    events.append(Acked(entry[1]))
            elif kind is Pubrec:
                entry = self.inflight.get(p.packet_id)  # type: ignore[attr-defined]
                if entry is not None and entry[4] == 2:
                    entry[0] = _RELEASED
                    entry[3] = b""  # the remote has the message: only the id matters now
                self._write(encode(Pubrel(p.packet_id)), now)  # type: ignore[attr-defined]
            elif kind is Publish:
                self._on_publish(p, events, now)  # type: ignore[arg-type]
            elif kind is Pubrel:
                self._awaiting_rel.discard(p.packet_id)  # type: ignore[attr-defined]
                self._write(encode(Pubcomp(p.packet_id)), now)  # type: ignore[attr-defined]
            elif kind is Pingresp:
                self._ping_sent = None
            elif kind is Suback:
                events.append(Subscribed(p.packet_id, tuple(p.return_codes)))  # type: ignore[attr-defined]
            elif kind is Unsuback:
                pass
            else:
                events.append(Lost(f"unexpected {kind.__name__.upper()} from the remote"))
                return events
        return events

    def _on_publish(self, p: Publish, events: List[object], now: float) -> None:
        if p.qos == 2:
            # Delivered once, on its first PUBLISH; a resend before PUBREL is only acknowledged
            # [MQTT-4.3.3-2].
            if p.packet_id not in self._awaiting_rel:
                self._awaiting_rel.add(p.packet_id)
                events.append(Received(p.topic, bytes(p.payload), 2, p.retain))
            self._write(encode(Pubrec(p.packet_id)), now)
            return
        events.append(Received(p.topic, bytes(p.payload), p.qos, p.retain))
        if p.qos == 1:
            self._write(encode(Puback(p.packet_id)), now)
