"""Per-client session state and the message value shared between subscribers.

A Session outlives its connections when clean session is 0: it holds the subscriptions, the QoS 1/2
messages in flight (sent, awaiting PUBACK/PUBREC/PUBCOMP), the offline queue (messages not yet sent
because the client is away or its inflight window is full) and the packet ids of inbound QoS 2
messages awaiting PUBREL. Message encodes its PUBLISH bytes once and shares them between subscribers;
for QoS > 0 only the packet identifier differs.
"""
from __future__ import annotations

from _collections import deque  # collections.deque, without the collections package (record.namedtuple)

from .packets import Message, queue_meta, unpack_meta

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import AbstractSet, Callable, Deque, Dict, List, Optional, Tuple

MappingProxyType = type(type.__dict__)  # types.MappingProxyType, without the types module

__all__ = ["Message", "Session", "INFLIGHT_SENT", "INFLIGHT_RELEASED", "QUEUED", "NO_INFLIGHT", "inflight_of",
           "queue_meta", "unpack_meta"]

#: Inflight states: PUBLISH sent and awaiting PUBACK/PUBREC; PUBREL sent and awaiting PUBCOMP. QUEUED is
#: the store's state of a delivery not known to be sent (the store's row is not updated when it is).
INFLIGHT_SENT = 0
INFLIGHT_RELEASED = 1
QUEUED = 2


#: The shared empty value of the flow-control sets (Session.blocking, Connection.paused_by) until they
#: get a member: a set of their own is created then (an empty set costs 216 bytes per connection).
NO_ONE: AbstractSet[object] = frozenset()


def add_member(owner: object, name: str, member: object) -> None:
    """Add to a flow-control set (Connection.paused_by, Session.blocking), given one of its own first."""
    members = getattr(owner, name)
    if members is NO_ONE:
        members = set()
        setattr(owner, name, members)
    members.add(member)


def queue_of(session: "Session") -> "Deque[Message]":
    """The session's queue, made a deque on first use (with its `queue_meta`)."""
    queue = session.queue
    if queue.__class__ is not deque:
        queue = session.queue = deque()
        session.queue_meta = deque()
    return queue


#: Session.awaiting_rel until the client publishes at QoS 2: shared, never written to.
NONE_AWAITING: Dict[int, Optional[Tuple[str, bytes, bool]]] = {}


def awaiting_of(session: "Session") -> Dict[int, Optional[Tuple[str, bytes, bool]]]:
    """The session's inbound QoS 2 ids, a dict of its own once it needs one."""
    awaiting = session.awaiting_rel
    if awaiting is NONE_AWAITING:
        awaiting = session.awaiting_rel = {}
    return awaiting


#: Session.inflight until the first QoS 1/2 message is sent to the client: shared and read-only (a write
#: to it raises instead of reaching every other session), so an idle session costs no dict (64 bytes).
NO_INFLIGHT: Dict[int, List] = MappingProxyType({})  # type: ignore[assignment]


def inflight_of(session: "Session") -> Dict[int, List]:
    """The session's inflight messages, a dict of its own once it needs one (the broker's hot paths
    do the same test inline)."""
    inflight = session.inflight
    if inflight is NO_INFLIGHT:
        inflight = session.inflight = {}
    return inflight


class Session:
    __slots__ = ("client_id", "clean", "subscriptions", "inflight", "queue", "queue_meta", "queued_bytes",
                 "awaiting_rel", "_next_pid", "conn", "drop_logged", "offline_since", "blocking",
                 "last_progress", "stalled", "dup_prefix", "sink", "acl")

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.clean = clean
        self.subscriptions: Dict[str, int] = {}
        #: packet id -> [message, qos, state, seq]; dict order is send order, used for resends
        #: [MQTT-4.6.0-1]. seq is the delivery's row in the store (0: not stored, clean session).
        #: NO_INFLIGHT until the first message is sent (`inflight_of`).
        self.inflight: Dict[int, List] = NO_INFLIGHT
        #: Messages waiting for the client or for room in the inflight window, and beside each in
        #: queue_meta its delivery's seq (its row in the store, 0: not stored), packet id and QoS, packed
        #: (`queue_meta()`). A persistent session's message gets its packet id when queued, stored with
        #: it, so that sending it changes nothing on disk; 0 = none yet (clean session, or a row of an
        #: older database). Empty tuples until the first message is queued (`queue_of`): an empty deque
        #: costs 624 bytes, and most sessions of a gateway never queue.
        self.queue: Deque[Message] = ()  # type: ignore[assignment]
        self.queue_meta: Deque[int] = ()  # type: ignore[assignment]
        #: how many messages at the head of the queue go out with DUP set: restored after a crash while
        #: the client was connected, they may have been sent before it [MQTT-3.3.1-1]
        self.dup_prefix = 0
        self.queued_bytes = 0
        #: inbound QoS 2 packet ids whose PUBREC went out and whose PUBREL has not come [MQTT-4.3.3-2],
        #: each with the message released at PUBREL, (topic, payload, retain), or None: nothing to release
        self.awaiting_rel: Dict[int, Optional[Tuple[str, bytes, bool]]] = NONE_AWAITING  # see awaiting_of
        self._next_pid = 0
        self.conn: Optional[object] = None
        #: the client's auth.AclSubject, set when it connects while an acl_file is in use; None = not
        #: known (restored from the store, or offline across a reload): checked when next sent
        self.acl: Optional[object] = None
        self.drop_logged = False
        #: monotonic time the client went away (persistent sessions), for persistent_client_expiration
        self.offline_since = 0.0
        #: flow control: publishing connections paused because this session's queue is over the
        #: high-water mark; when its client last acknowledged; stalled = stopped acknowledging, so it
        #: throttles no one and its bounded queue drops instead
        self.blocking: AbstractSet[object] = NO_ONE  # a set of its own once it holds someone back
        self.last_progress = 0.0
        self.stalled = False
        #: an in-process client's delivery callback (edgebroker.local); None for network clients
        self.sink: Optional[Callable[[str, bytes, int, bool], None]] = None

    def next_packet_id(self) -> int:
        """A packet id not in use by an inflight message [MQTT-2.3.1-2]; callers bound the inflight
        window below 65535 entries so this always terminates."""
        pid = self._next_pid
        inflight = self.inflight
        while True:
            pid = pid + 1 if pid < 65535 else 1
            if pid not in inflight:
                self._next_pid = pid
                return pid

    def __repr__(self) -> str:
        return f"<Session {self.client_id!r} clean={self.clean}>"
