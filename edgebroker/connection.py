"""The core's side of one network connection (`Connection`) and the output bounds it carries. The loop
owns the socket; the core (broker.py and its handle_*.py mixins) owns everything else on it."""
from __future__ import annotations

from .auth import Security
from .codec import Parser
from .errors import MalformedPacket
from .packets import Will
from .session import NO_ONE, Session

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import AbstractSet, Deque, List, Optional, Sequence, Tuple

_NOTHING = ()

__all__ = ["Connection", "PRE_CONNECT_MAX_BYTES", "OUT_BUFFER_LIMIT", "EARLY_FLUSH", "REFILL_BYTES", "REPLAY_LIVE_MAX",
           "Q0_REPLAY", "Q0_BACKED_UP", "q0_refusal"]

#: Bytes a connection may send before its CONNECT is complete. The largest valid CONNECT is five
#: 64 KiB fields plus headers (~320 KiB); anything bigger before CONNECT is not MQTT.
PRE_CONNECT_MAX_BYTES = 512 * 1024
#: Output bytes buffered for one connection beyond which QoS 0 messages to it are dropped (and
#: counted): the last bound, whatever max_queued_messages and max_queued_bytes say. QoS 1/2 are
#: bounded by the inflight window and the queue instead.
OUT_BUFFER_LIMIT = 8 * 1024 * 1024
#: Output bytes of a connection after which a live QoS 0 delivery to it has the loop send its output
#: after the read being handled (`Broker.early`), not at the end of the loop turn: `Connection.q0_limit`
#: while the socket takes everything. A QoS 0 flood's turn (bench S1: 8 publishers' 16 KiB reads for one
#: subscriber, about 190 KB of packets, then their joined copy) then holds about this much at once.
#: Past it, q0_limit is OUT_BUFFER_LIMIT until the loop has sent the output.
EARLY_FLUSH = 64 * 1024
#: `Connection.q0_limit` while it is not EARLY_FLUSH or OUT_BUFFER_LIMIT: any value below 0 sends every live QoS 0
#: delivery to the connection down the slow path of `Broker._route`. Q0_REPLAY: a retained replay is
#: in progress (live messages wait behind it). Q0_BACKED_UP: the socket refused part of the output
#: and it has not all left since (the loop's `output_backed_up` / `output_flowing`); a QoS 0 message
#: then joins the output only while fewer than max_queued_messages packets wait (and, if set, fewer
#: than max_queued_bytes bytes), as Mosquitto 2.0 counts its packets waiting to be written. While the
#: socket takes everything, a loop turn's output (thousands of packets for a fast subscriber) is not
#: counted at all.
Q0_REPLAY = -1
Q0_BACKED_UP = -2
#: Output bytes a refill of the inflight window (or the resend on reconnect) stops at: it goes on after
#: the loop has handed what is buffered to the socket (`output_drained`, then the next turn's
#: `end_turn`). With a large window (max_inflight_messages 0) a queue of thousands is then sent in
#: slices: its first bytes leave at once instead of after all of it is encoded, other clients are served
#: between slices, and what waits stays in the queue rather than as encoded bytes in memory.
REFILL_BYTES = 64 * 1024
#: Live QoS 0 messages that may wait behind a connection's retained replay (see `_send_retained`); past
#: it they are dropped as with a full output buffer.
REPLAY_LIVE_MAX = 10_000


class Connection:
    """The core's side of one network connection. The loop owns the socket (`handle`)."""

    __slots__ = ("peer", "port", "parser", "out", "out_size", "session", "client_id", "connected",
                 "closed", "keepalive", "last_rx", "accepted_at", "will", "protocol_level", "handle",
                 "_dirty", "close_reason", "paused_by", "stash", "stash_error", "refill_held", "resend_at",
                 "replay", "q0_limit", "replay_live",
                 "security", "username", "tls_username", "bridge",
                 "held", "listener", "recv_size")

    def __init__(self, peer: str, port: int, now: float, dirty: List["Connection"]) -> None:
        self.peer = peer
        self.port = port
        self.parser = Parser(PRE_CONNECT_MAX_BYTES)
        self.out: List[bytes] = []
        self.out_size = 0
        self.session: Optional[Session] = None
        self.client_id = "<unknown>"
        self.connected = False
        self.closed = False
        self.keepalive = 0
        self.last_rx = now
        self.accepted_at = now
        self.will: Optional[Will] = None
        self.protocol_level = 0
        #: the peer connected with the bridge flag (protocol level | 0x80, Mosquitto's try_private)
        self.bridge = False
        self.handle: object = None
        #: the loop's listening socket it came in on, while the loop owns its socket (None: not yet or
        #: no longer; the core never looks at it)
        self.listener: object = None
        self._dirty = dirty
        self.close_reason = ""
        #: flow control: sessions whose full queues pause this publisher; packets read but not yet handled
        #: (NO_ONE until paused: a set of its own then; an empty tuple while nothing is stashed)
        self.paused_by: AbstractSet[object] = NO_ONE
        self.stash: Sequence[object] = ()
        self.stash_error: Optional[MalformedPacket] = None
        #: a refill stopped at REFILL_BYTES: the loop calls `Broker.output_drained` once out is sent
        self.refill_held = False
        #: a resend on reconnect stopped there: (packet ids in resend order, index of the next)
        self.resend_at: Optional[Tuple[List[int], int]] = None
        #: retained QoS 0 messages (and live ones behind them) still to send after a SUBSCRIBE; while
        #: there are any, q0_limit is below 0 so that live QoS 0 deliveries take the slow path in _route
        self.replay: Optional[Deque[object]] = None
        self.q0_limit = EARLY_FLUSH
        self.replay_live = 0
        #: the auth.Security of the listener it came in on (set by the loop; None = the broker-wide one),
        #: and the username it connected with
        self.security: Optional[Security] = None
        self.username: Optional[str] = None
        #: The username a TLS listener with use_identity_as_username / use_subject_as_username took from
        #: the client's verified certificate (set by the loop before CONNECT is read); it replaces the
        #: CONNECT's username and no password is checked, as in Mosquitto. None otherwise.
        self.tls_username: Optional[str] = None
        #: acknowledgements waiting for the store's commit window (Broker._send_ack), in order
        self.held: List[bytes] = _NOTHING  # type: ignore[assignment]  # a list of its own when one is held
        #: bytes the loop asks for in its next recv (server.RECV_SIZE, RECV_SMALL or RECV_LARGE)
        self.recv_size = 16384  # server.RECV_SIZE

    def buffer(self) -> List[bytes]:
        """The output buffer, for a caller that appends many packets itself (and adds to out_size);
        the connection is listed for the flush."""
        if not self.out:
            self._dirty.append(self)
        return self.out

    def write(self, data: bytes) -> None:
        if not self.out:
            self._dirty.append(self)
        self.out.append(data)
        self.out_size += len(data)


def q0_refusal(conn: Connection, size: int, max_bytes: int) -> str:
    """Why a live QoS 0 packet of `size` bytes may not join the output of a connection whose socket is
    backed up, beyond the count of waiting packets (`Broker._q0_admit`): "" = it may. The bytes waiting
    with it above max_queued_bytes (when set), or above OUT_BUFFER_LIMIT whatever the options say."""
    size += conn.out_size
    if size > OUT_BUFFER_LIMIT:
        return "output buffer full"
    if max_bytes and size > max_bytes:
        return "max_queued_bytes"
    return ""
