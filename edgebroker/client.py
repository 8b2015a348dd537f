"""A small blocking MQTT 3.1/3.1.1 client over one socket, for the command-line tools (and later bridges).

Theory of operation: `Client.connect()` opens the socket, sends CONNECT and waits for the CONNACK;
after that the caller drives the connection with `loop(timeout)`, which waits (select) at most until
the next keepalive PINGREQ is due, reads what arrived, feeds our sans-IO codec and answers the
protocol by itself: PUBACK for an incoming QoS 1 PUBLISH, PUBREC / PUBCOMP for QoS 2, PUBREL for our
own QoS 2 PUBLISH once the PUBREC arrives. `loop` returns what the caller may care about as events:
`Message` (delivered to the application: QoS 0/1 on arrival, QoS 2 on PUBREL, as libmosquitto does, so
output order matches mosquitto_sub), `Published` (our PUBLISH completed its handshake), `Subscribed`,
`Unsubscribed`. `publish`, `subscribe` and `unsubscribe` only send; the caller loops until the event it
waits for arrives.

Packet identifiers ("mid" in Mosquitto's words) come from one counter shared by PUBLISH (any QoS, as
libmosquitto counts them, though a QoS 0 PUBLISH carries none on the wire), SUBSCRIBE and UNSUBSCRIBE.

Every error is a `ClientError`; `rc` is the exit code the mosquitto_pub/mosquitto_sub tools use for
the same failure (1 for a socket error, the CONNACK return code for a refusal, 7 for a lost
connection), and `str(error)` is the message they print. With `debug` set, every packet sent or
received is reported in libmosquitto's log format ("Client mosq-... sending CONNECT").
"""
from __future__ import annotations

import errno
import os
import random
import select
import socket
import string
import time
from collections import deque

from .codec import Parser, encode
from .errors import EdgebrokerError, MalformedPacket
from .packets import (
    Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback,
    Subscribe, Unsuback, Unsubscribe, Will,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple, Union
else:
    from .record import NamedTuple

__all__ = [
    "Client", "ClientError", "ConnectFailed", "ConnectionRefused", "ConnectionLost", "ProtocolError",
    "Message", "Published", "Subscribed", "Unsubscribed", "connack_string", "random_client_id",
    "PROTOCOL_NAMES", "RC_CONN_LOST", "RC_PROTOCOL",
]

#: Protocol name for each protocol level we speak: MQTT 3.1 (level 3) and 3.1.1 (level 4).
PROTOCOL_NAMES = {3: "MQIsdp", 4: "MQTT"}

#: libmosquitto's error numbers that the tools return as exit codes (mosquitto.h, enum mosq_err_t).
RC_ERRNO = 1  # not MOSQ_ERR_ERRNO (14): the tools exit 1 after printing strerror
RC_PROTOCOL = 2
RC_CONN_LOST = 7

#: Bytes read per recv.
RECV_SIZE = 65536

#: mosquitto_connack_string(): the text mosquitto_pub/sub print after "Connection error: ".
_CONNACK_STRINGS = {
    0: "Connection Accepted.",
    1: "Connection Refused: unacceptable protocol version.",
    2: "Connection Refused: identifier rejected.",
    3: "Connection Refused: broker unavailable.",
    4: "Connection Refused: bad user name or password.",
    5: "Connection Refused: not authorised.",
}


def connack_string(code: int) -> str:
    return _CONNACK_STRINGS.get(code, "Connection Refused: unknown reason.")


def random_client_id(prefix: str = "mosq-") -> str:
    """A client id like libmosquitto's generated ones: "mosq-" and 18 random letters and digits.
    MQTT 3.1 needs one (an empty id is a 3.1.1 feature [MQTT-3.1.3-6]); 23 characters fit the limit
    that 3.1 brokers may enforce [MQTT-3.1.3-5]."""
    alphabet = string.ascii_letters + string.digits
    return prefix + "".join(random.choice(alphabet) for _ in range(18))


class ClientError(EdgebrokerError):
    """A failure of the client; `rc` is the exit code Mosquitto's tools use for it."""

    rc = 1


class ConnectFailed(ClientError):
    """The TCP (or unix socket) connection could not be made; the message is what mosquitto_pub prints,
    e.g. "Error: Connection refused" or "Unable to connect (Lookup error.)."."""

    rc = RC_ERRNO


class ConnectionRefused(ClientError):
    """The broker answered CONNECT with a non-zero return code; `rc` is that code, as the tools exit."""

    def __init__(self, return_code: int) -> None:
        super().__init__(f"Connection error: {connack_string(return_code)}")
        self.return_code = return_code
        self.rc = return_code


class ConnectionLost(ClientError):
    """The connection closed or broke after it was established (MOSQ_ERR_CONN_LOST)."""

    rc = RC_CONN_LOST

    def __init__(self, message: str = "Error: The connection was lost.") -> None:
        super().__init__(message)


class ProtocolError(ClientError):
    """The broker sent something the protocol does not allow (MOSQ_ERR_PROTOCOL)."""

    rc = RC_PROTOCOL

    def __init__(self, detail: str = "") -> None:
        super().__init__("Error: A network protocol error occurred when communicating with the broker."
                         + (f" ({detail})" if detail else ""))
        self.detail = detail


class Message(NamedTuple):
    """An application message delivered to us."""
    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int  # packet identifier, 0 for QoS 0


class Published(NamedTuple):
    """Our PUBLISH with this mid completed: sent (QoS 0), PUBACK (QoS 1) or PUBCOMP (QoS 2) received."""
    mid: int


class Subscribed(NamedTuple):
    mid: int
    granted: Tuple[int, ...]


class Unsubscribed(NamedTuple):
    mid: int


if TYPE_CHECKING:
    Event = Union[Message, Published, Subscribed, Unsubscribed]


class Client:
    """One MQTT connection. Not thread-safe; one caller drives it with `loop`.

    client_id None: send an empty id with MQTT 3.1.1 (the broker assigns one [MQTT-3.1.3-6]) and call
    ourselves "(null)" in debug lines, as libmosquitto does; with MQTT 3.1 a random "mosq-..." id.
    """

    def __init__(self, client_id: Optional[str] = None, clean_session: bool = True, keepalive: int = 60,
                 protocol_level: int = 4, will: Optional[Will] = None, username: Optional[str] = None,
                 password: Optional[bytes] = None, debug: Optional[Callable[[str], None]] = None,
                 max_inflight: int = 20) -> None:
        if protocol_level not in PROTOCOL_NAMES:
            raise ValueError(f"protocol level {protocol_level} not supported (3 = MQTT 3.1, 4 = MQTT 3.1.1)")
        if client_id is None and protocol_level == 3:
            client_id = random_client_id()
        self.client_id = client_id
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.protocol_level = protocol_level
        self.will = will
        self.username = username
        self.password = password
        self.debug = debug
        #: QoS 1/2 PUBLISHes awaiting their handshake at most (libmosquitto's default 20).
        self.max_inflight = max_inflight
        self.sock: Optional[socket.socket] = None
        self.parser = Parser()
        self.session_present = False
        self._last_mid = 0
        self._last_out = 0.0
        self._last_in = 0.0
        self._ping_sent: Optional[float] = None
        self._inflight_out: Dict[int, int] = {}     # mid -> QoS, our PUBLISHes not yet complete
        self._incoming_qos2: Dict[int, Message] = {}  # mid -> message awaiting PUBREL
        self._events: List[Event] = []
        self._unhandled: Deque[object] = deque()  # packets received, not yet handled
        #: Set by `loop` when it returned because a `wake` file descriptor became readable.
        self.woken = False

    # --- naming, logging -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """How debug lines name us: our id, or "(null)" when the broker assigns it."""
        return self.client_id if self.client_id is not None else "(null)"

    def _log(self, text: str) -> None:
        if self.debug is not None:
            self.debug(f"Client {self.name} {text}")

    # --- connection ------------------------------------------------------------------------------

    def connect(self, host: str = "localhost", port: int = 1883, bind_address: Optional[str] = None,
                unix_path: Optional[str] = None, nodelay: bool = False,
                timeout: Optional[float] = None, tls: Optional["ssl.SSLContext"] = None) -> Connack:
        """Open the connection and complete the CONNECT/CONNACK exchange; with `tls` (a context from
        edgebroker.tls.client_context) over TLS, the broker's certificate checked against `host`.

        Raises ConnectFailed (socket), ConnectionRefused (CONNACK return code != 0; the socket is left
        open for the caller to `close` or `disconnect`), ConnectionLost or ProtocolError. `timeout`
        bounds the wait for the CONNACK (default: 1.5 keepalive periods, or 60 s without keepalive)."""
        self.close()
        if timeout is None:
            timeout = self.keepalive * 1.5 if self.keepalive else 60.0
        self.sock = self._open_socket(host, port, bind_address, unix_path, nodelay)
        if tls is not None:
            self.sock = self._start_tls(self.sock, tls, host, timeout)
        self.parser = Parser()
        now = time.monotonic()
        self._last_in = self._last_out = now
        self._ping_sent = None
        self._incoming_qos2.clear()
        self._inflight_out.clear()
        self._events.clear()
        self._unhandled.clear()
        self._send(Connect(PROTOCOL_NAMES[self.protocol_level], self.protocol_level, self.clean_session,
                           self.keepalive, self.client_id or "", self.will, self.username, self.password),
                   "sending CONNECT")
        deadline = time.monotonic() + timeout
        pending: List[object] = []
        while not pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.close()
                raise ConnectionLost("Error: Timed out waiting for CONNACK.")
            pending = self._read(remaining)
        first = pending[0]
        if not isinstance(first, Connack):
            self.close()
            raise ProtocolError(f"expected CONNACK, received {type(first).__name__.upper()}")
        self._log(f"received CONNACK ({first.return_code})")
        if first.return_code != 0:
            # The socket stays open: the caller closes it, or sends DISCONNECT first as mosquitto_sub
            # does; the broker closes its end anyway [MQTT-3.2.2-5].
            raise ConnectionRefused(first.return_code)
        self.session_present = first.session_present
        self._unhandled.extend(pending[1:])  # a broker may send queued messages right behind the CONNACK
        return first

    @staticmethod
    def _open_socket(host: str, port: int, bind_address: Optional[str], unix_path: Optional[str],
                     nodelay: bool) -> socket.socket:
        if unix_path is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(unix_path)
            except OSError as exc:
                sock.close()
                raise ConnectFailed(f"Error: {os.strerror(exc.errno or errno.EIO)}") from exc
            return sock
        try:
            infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise ConnectFailed("Unable to connect (Lookup error.).") from exc
        last: Optional[OSError] = None
        for family, kind, proto, _, address in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if bind_address:
                    sock.bind((bind_address, 0))
                sock.connect(address)
            except OSError as exc:
                sock.close()
                last = exc
                continue
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        code = (last.errno if last is not None else None) or errno.ECONNREFUSED
        raise ConnectFailed(f"Error: {os.strerror(code)}") from last

    @staticmethod
    def _start_tls(sock: socket.socket, context: "ssl.SSLContext", host: str, timeout: float) -> socket.socket:
        """The TLS handshake, blocking (bounded by `timeout`); a failure reads as mosquitto_pub's."""
        import ssl

        sock.settimeout(timeout)
        try:
            wrapped = context.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            sock.close()
            reason = exc.verify_message if isinstance(exc, ssl.SSLCertVerificationError) else exc.reason
            raise ConnectFailed(f"OpenSSL Error: {reason or exc}\nUnable to connect (A TLS error occurred.).") from exc
        except OSError as exc:
            sock.close()
            raise ConnectFailed(f"Error: {exc.strerror or 'A TLS error occurred.'}") from exc
        wrapped.settimeout(None)
        return wrapped

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def fileno(self) -> int:
        assert self.sock is not None, "not connected"
        return self.sock.fileno()

    def disconnect(self) -> None:
        """Send DISCONNECT (the broker then discards our will [MQTT-3.14.4-3]) and close."""
        if self.sock is not None:
            try:
                self._send(Disconnect(), "sending DISCONNECT")
            except ConnectionLost:
                pass
        self.close()

    def close(self) -> None:
        """Close the socket without DISCONNECT (the broker publishes our will, if any)."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    # --- sending ---------------------------------------------------------------------------------

    def _next_mid(self) -> int:
        self._last_mid = self._last_mid % 65535 + 1  # 1..65535: 0 is never a packet identifier
        return self._last_mid

    def _send(self, packet: object, log: Optional[str]) -> None:
        """Send one packet; `log` is its debug line (None: the caller logged it, as SUBSCRIBE logs one
        line per topic filter like libmosquitto)."""
        if self.sock is None:
            raise ConnectionLost()
        if log is not None:
            self._log(log)
        try:
            self.sock.sendall(encode(packet))
        except OSError as exc:
            self.close()
            raise ConnectionLost() from exc
        self._last_out = time.monotonic()

    @property
    def inflight(self) -> int:
        """Our QoS 1/2 PUBLISHes still waiting for their handshake."""
        return len(self._inflight_out)

    @property
    def inflight_mids(self) -> Set[int]:
        return set(self._inflight_out)

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False) -> int:
        """Send one PUBLISH; return its mid. A QoS 0 one is complete at once (a Published event is
        queued for the next `loop`); QoS 1/2 complete when the broker acknowledges."""
        mid = self._next_mid()
        self._send(Publish(topic, payload, qos, retain, False, mid if qos else 0),
                   f"sending PUBLISH (d0, q{qos}, r{int(retain)}, m{mid}, '{topic}', ... "
                   f"({len(payload)} bytes))")
        if qos:
            self._inflight_out[mid] = qos
        else:
            self._events.append(Published(mid))
        return mid

    def subscribe(self, topics: Sequence[Tuple[str, int]]) -> int:
        """One SUBSCRIBE for every (topic filter, QoS); return its mid."""
        mid = self._next_mid()
        if self.debug is not None:
            for topic_filter, qos in topics:
                self._log(f"sending SUBSCRIBE (Mid: {mid}, Topic: {topic_filter}, QoS: {qos}, Options: 0x00)")
        self._send(Subscribe(mid, tuple(topics)), None)
        return mid

    def unsubscribe(self, topics: Sequence[str]) -> int:
        mid = self._next_mid()
        if self.debug is not None:
            for topic_filter in topics:
                self._log(f"sending UNSUBSCRIBE (Mid: {mid}, Topic: {topic_filter})")
        self._send(Unsubscribe(mid, tuple(topics)), None)
        return mid

    # --- receiving -------------------------------------------------------------------------------

    def _read(self, timeout: Optional[float], wake: Sequence[int] = ()) -> List[object]:
        """Wait up to `timeout` for data; return the packets it completes (maybe none). Returns early,
        setting `self.woken`, when one of the `wake` file descriptors is readable."""
        sock = self.sock
        if sock is None:
            raise ConnectionLost()
        if timeout is not None and timeout < 0:
            timeout = 0
        if self._tls_pending(sock):
            readable = [sock]  # decrypted bytes wait inside the TLS layer: select would not say so
        else:
            readable, _, _ = select.select([sock, *wake], [], [], timeout)
        if wake and any(r is not sock for r in readable):
            self.woken = True
        if sock not in readable:
            return []
        try:
            data = sock.recv(RECV_SIZE)
        except OSError as exc:
            self.close()
            raise ConnectionLost() from exc
        if not data:
            self.close()
            raise ConnectionLost()
        self._last_in = time.monotonic()
        try:
            return self.parser.feed(data)
        except MalformedPacket as exc:
            self.close()
            raise ProtocolError(str(exc)) from exc

    @staticmethod
    def _tls_pending(sock: socket.socket) -> int:
        pending = getattr(sock, "pending", None)
        return pending() if pending is not None else 0

    def _keepalive_due(self, now: float) -> Optional[float]:
        """Seconds until the next keepalive action, None without keepalive. Like libmosquitto: a
        PINGREQ once nothing was sent or received for a keepalive period; the connection counts as
        lost when its PINGRESP has not come within another period."""
        if not self.keepalive:
            return None
        if self._ping_sent is not None:
            return self._ping_sent + self.keepalive - now
        return min(self._last_out, self._last_in) + self.keepalive - now

    def _check_keepalive(self, now: float) -> None:
        due = self._keepalive_due(now)
        if due is None or due > 0:
            return
        if self._ping_sent is not None:
            self.close()
            raise ConnectionLost()
        self._send(Pingreq(), "sending PINGREQ")
        self._ping_sent = time.monotonic()

    def loop(self, timeout: Optional[float] = None, wake: Sequence[int] = ()) -> List[Event]:
        """Run the connection for up to `timeout` seconds (None: until something happens) and return
        the events that happened; returns as soon as there is at least one event, or when one of the
        `wake` file descriptors (say, stdin) is readable: then `self.woken` is true."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self.woken = False
        while True:
            # One packet at a time, returning as soon as it made an event: the caller prints a message
            # before the next packet's debug line, as libmosquitto's callbacks do.
            while self._unhandled and not self._events:
                self._handle(self._unhandled.popleft())
            if self._events or self.woken:
                events, self._events = self._events, []
                return events
            now = time.monotonic()
            self._check_keepalive(now)
            wait = self._keepalive_due(now)
            if deadline is not None:
                remaining = deadline - now
                if remaining <= 0:
                    return []
                wait = remaining if wait is None else min(wait, remaining)
            if wait is not None:
                wait = max(wait, 0.0)
            self._unhandled.extend(self._read(wait, wake))

    def _handle(self, packet: object) -> None:
        handler = self._HANDLERS.get(type(packet))
        if handler is None:
            self.close()
            raise ProtocolError(f"unexpected {type(packet).__name__.upper()} from the broker")
        handler(self, packet)

    def _on_publish(self, p: Publish) -> None:
        self._log(f"received PUBLISH (d{int(p.dup)}, q{p.qos}, r{int(p.retain)}, m{p.packet_id}, "
                  f"'{p.topic}', ... ({len(p.payload)} bytes))")
        message = Message(p.topic, bytes(p.payload), p.qos, p.retain, p.packet_id)
        if p.qos == 0:
            self._events.append(message)
        elif p.qos == 1:
            self._send(Puback(p.packet_id), f"sending PUBACK (m{p.packet_id}, rc0)")
            self._events.append(message)
        else:
            # Delivered on PUBREL, once (a DUP resend before that replaces the stored copy).
            self._incoming_qos2[p.packet_id] = message
            self._send(Pubrec(p.packet_id), f"sending PUBREC (m{p.packet_id}, rc0)")

    def _on_pubrel(self, p: Pubrel) -> None:
        self._log(f"received PUBREL (Mid: {p.packet_id})")
        message = self._incoming_qos2.pop(p.packet_id, None)
        self._send(Pubcomp(p.packet_id), f"sending PUBCOMP (m{p.packet_id})")
        if message is not None:
            self._events.append(message)

    def _on_puback(self, p: Puback) -> None:
        self._log(f"received PUBACK (Mid: {p.packet_id}, RC:0)")
        if self._inflight_out.get(p.packet_id) == 1:
            del self._inflight_out[p.packet_id]
            self._events.append(Published(p.packet_id))

    def _on_pubrec(self, p: Pubrec) -> None:
        self._log(f"received PUBREC (Mid: {p.packet_id})")
        self._send(Pubrel(p.packet_id), f"sending PUBREL (m{p.packet_id})")

    def _on_pubcomp(self, p: Pubcomp) -> None:
        self._log(f"received PUBCOMP (Mid: {p.packet_id}, RC:0)")
        if self._inflight_out.get(p.packet_id) == 2:
            del self._inflight_out[p.packet_id]
            self._events.append(Published(p.packet_id))

    def _on_suback(self, p: Suback) -> None:
        self._log("received SUBACK")
        self._events.append(Subscribed(p.packet_id, tuple(p.return_codes)))

    def _on_unsuback(self, p: Unsuback) -> None:
        self._log("received UNSUBACK")
        self._events.append(Unsubscribed(p.packet_id))

    def _on_pingresp(self, p: Pingresp) -> None:
        self._log("received PINGRESP")
        self._ping_sent = None

    def _on_connack(self, p: Connack) -> None:
        self.close()
        raise ProtocolError("second CONNACK")

    _HANDLERS: Dict[type, Callable[["Client", object], None]] = {
        Publish: _on_publish,  # type: ignore[dict-item]
        Pubrel: _on_pubrel,  # type: ignore[dict-item]
        Puback: _on_puback,  # type: ignore[dict-item]
        Pubrec: _on_pubrec,  # type: ignore[dict-item]
        Pubcomp: _on_pubcomp,  # type: ignore[dict-item]
        Suback: _on_suback,  # type: ignore[dict-item]
        Unsuback: _on_unsuback,  # type: ignore[dict-item]
        Pingresp: _on_pingresp,  # type: ignore[dict-item]
        Connack: _on_connack,  # type: ignore[dict-item]
    }
