"""The broker core: sessions, QoS state machines, routing, retained messages, wills, keepalive.

Theory of operation: the core never touches a socket or reads the clock. The loop calls
`connection_made`, `data_received(conn, bytes, now)`, `connection_lost(conn, now, reason)` and
`tick(now)`; the core parses, decides, and appends encoded packets to `conn.out`, listing the
connection in `broker.dirty` the first time it has output in a turn. A window refill or resend that
stopped at REFILL_BYTES goes on after the loop has sent that output and calls `output_drained(conn)`. When it
decides a connection must end it marks it closed (will, session cleanup and logging happen here, once)
and lists it in `broker.closing`; the loop flushes what is buffered and closes the socket. So every way
a connection ends goes through `_close`, and the whole core runs in memory in tests with a fake clock.

Packet handling is dict-dispatched per connection state: a packet type a state does not list is a
protocol violation and closes the connection.

Flow control: a publisher must not outrun an online subscriber that is acknowledging, or the
subscriber's bounded queue would overflow and drop messages the publisher was told were accepted.
When a session's queue passes the high-water mark while a connection publishes to it, that connection
is paused: its remaining packets wait in `conn.stash`, and the loop stops reading its socket (TCP
then slows the publisher) until the queue drains below the low-water mark. A subscriber that stops
acknowledging for FLOW_STALL seconds throttles no one: its queue drops (counted), as Mosquitto's does.

Persistence: every change that must survive a restart (retained messages; for persistent sessions
their existence, subscriptions, messages queued or in flight to them, inbound QoS 2 ids awaiting
PUBREL) is reported to `self.store` as it happens; the loop calls `end_turn(now)` before it flushes,
so the acknowledgements of a turn leave after the commit that made them true. Deliveries to
persistent sessions carry a `seq`, the key of their row; 0 means "not stored".
"""
from __future__ import annotations

import struct
from _collections import deque  # collections.deque, without the collections package (record.namedtuple)

from . import __version__
from . import log as L
from .auth import ALLOW, AclSubject, Security, load_security
from .config import Config
from .connection import (
    EARLY_FLUSH, OUT_BUFFER_LIMIT, PRE_CONNECT_MAX_BYTES, Q0_BACKED_UP, Q0_REPLAY, REFILL_BYTES, REPLAY_LIVE_MAX, Connection,
    q0_refusal,
)
from .errors import MalformedPacket
from .packets import (
    Connect, Disconnect, Pingreq, Puback, Pubcomp, Publish, Pubrec, Pubrel, Subscribe, Unsubscribe, Will,
)
from .handle_acks import AckHandlers
from .handle_connect import ConnectHandlers
from .handle_local import LocalHandlers
from .handle_subscribe import SubscribeHandlers
from .local import LocalClient
from .session import (INFLIGHT_SENT, NO_INFLIGHT, NO_ONE, QUEUED, Message, Session, add_member, awaiting_of,
                      inflight_of, queue_meta, queue_of, unpack_meta)
from .store import Loaded, NullStore
from .sysstats import LoadAverages, Stats, sys_values
from .retained import RetainedTree
from .topics import TopicTree

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["Broker", "Connection", "OUT_BUFFER_LIMIT", "PRE_CONNECT_MAX_BYTES", "REFILL_BYTES",
           "REPLAY_LIVE_MAX"]

#: How often connect deadlines and keepalives are checked, in seconds.
CHECK_INTERVAL = 0.5
#: Flow control marks, in messages queued for an online session (capped at half of max_queued_messages):
#: high enough that a normal burst never pauses a publisher, low enough that a 64 KiB read of small
#: messages behind it stays far from the queue bound.
FLOW_HIGH_WATER = 200
FLOW_LOW_WATER = 50
#: Seconds without an acknowledgement after which a subscriber counts as stalled.
FLOW_STALL = 2.0

_PINGRESP = b"\xd0\x00"
_ACK = struct.Struct(">BBH").pack  # PUBACK, PUBREC, PUBREL, PUBCOMP: first byte, 2, packet id
_NOTHING = ()




class Broker(ConnectHandlers, SubscribeHandlers, AckHandlers, LocalHandlers):
    def __init__(self, config: Config, now: float, log: Optional[Callable[[int, str], None]] = None,
                 store: Optional[NullStore] = None, memory_probe: Optional[Callable[[], int]] = None,
                 security: Optional[Tuple[Security, List[Optional[Security]]]] = None) -> None:
        self.store = store if store is not None else NullStore()
        #: the store has a commit window: acknowledgements sent while changes wait for it wait too
        self._hold_acks = self.store.window > 0
        #: connections with held acknowledgements, released when the store has settled
        self.held: List[Connection] = []
        self._seq = 0  # last delivery row key handed out
        self.log = log if log is not None else L.null_log
        #: the loop sets this to hand a password verification to its hashing thread:
        #: verify_async(peer host, function returning bool, token); the answer comes back through
        #: `password_checked(token, ok, now)`. None: verified here (cheap hashes are, always).
        self.verify_async: Optional[Callable[[str, Callable[[], bool], object], None]] = None
        self.security: Security
        self.listener_security: List[Optional[Security]] = []
        self._acl_on = False
        self._apply(config)
        self.tree = TopicTree()
        self.sessions: Dict[str, Session] = {}
        self.retained: RetainedTree[Message] = RetainedTree()
        self.connections: Dict[Connection, None] = {}
        self.dirty: List[Connection] = []
        #: connections whose QoS 0 output passed connection.EARLY_FLUSH (`_q0_admit`): the loop sends theirs
        #: after the read being handled when its turn has more events (a turn of one ends with the flush
        #: anyway: they stay listed, q0_limit OUT_BUFFER_LIMIT, until a turn of several events)
        self.early: List[Connection] = []
        self.closing: List[Connection] = []
        #: connections paused or resumed this turn: the loop updates their read interest
        self.flow_changed: List[Connection] = []
        #: connections whose held refill may go on (`output_drained`): the loop does not block while
        #: this is not empty, and the next `end_turn` refills them
        self.drained: List[Connection] = []
        self._source: Optional[Connection] = None  # the connection whose PUBLISH is being routed
        #: in-process clients (edgebroker.local) by client id; their sessions are not in `sessions`
        self.local_clients: Dict[str, LocalClient] = {}
        self._local_source: Optional[Session] = None  # the local client whose publish is being routed
        #: sessions of bridges (local ones, and peers that connected with the bridge flag): they get a
        #: retained message routed live with its retain flag (Mosquitto's retain-as-published for bridges)
        self._rap: set = set()
        #: functions returning more `$SYS` topics and values (the bridges' counters)
        self.sys_providers: List[Callable[[], Dict[str, str]]] = []
        self._now = now
        self.set_security(*(security if security is not None else load_security(config)))
        self.stats = Stats()
        self.load = LoadAverages(self.stats, now)
        #: returns the process's resident memory in bytes for $SYS (the loop provides it: it is I/O)
        self.memory_probe = memory_probe
        self._heap_max = 0
        self.started = now
        self._next_check = now + CHECK_INTERVAL
        self._next_sys = now if config.sys_interval > 0 else float("inf")
        self._sys_last: Dict[str, str] = {}
        self._handlers_new = {Connect: self._on_connect}
        self._handlers = {
            Publish: self._on_publish, Puback: self._on_puback, Pubrec: self._on_pubrec,
            Pubrel: self._on_pubrel, Pubcomp: self._on_pubcomp, Subscribe: self._on_subscribe,
            Unsubscribe: self._on_unsubscribe, Pingreq: self._on_pingreq, Disconnect: self._on_disconnect,
        }
        self._restore(self.store.load(), now)

    def reconfigure(self, config: Config) -> None:
        """Swap in a reloaded configuration (SIGHUP): limits and policies apply from the next packet;
        listeners and persistence settings are not changed by a reload (as Mosquitto)."""
        self._apply(config)
        if config.sys_interval > 0 and self._next_sys == float("inf"):
            self._next_sys = self._next_check
        elif config.sys_interval <= 0:
            self._next_sys = float("inf")

    def set_security(self, default: Security, per_listener: List[Optional[Security]]) -> None:
        """Swap in the security settings (at start, and on reload with the files read again). Connected
        clients get their listener's new settings: one the new settings would refuse is disconnected, the
        others are checked against the new ACL from their next publish or delivery."""
        self.security = default
        self.listener_security = per_listener
        self._acl_on = any(s is not None and s.acl is not None for s in [default] + per_listener)
        self._update_intake()
        for conn in list(self.connections):
            if conn.security is not None:
                conn.security = self.security_for(conn.security.index)
            if conn.connected:
                sec = conn.security or default
                if sec.connect(conn.username, b"", conn.tls_username is not None)[0] != ALLOW:
                    self._close(conn, self._now, "not authorised by the reloaded password settings")
        for session in self.sessions.values():
            conn = session.conn
            session.acl = None
            if conn is not None and self._acl_on:
                session.acl = (conn.security or default).subject(conn.username, session.client_id)  # type: ignore
        for client in self.local_clients.values():
            client.session.acl = default.subject(client.username, client.client_id) if self._acl_on else None

    def security_for(self, listener_index: int) -> Security:
        """The Security of config.listeners[listener_index] (-1: a listener the loop made itself)."""
        per = self.listener_security
        if 0 <= listener_index < len(per):
            return per[listener_index] or self.security
        return self.security

    def _apply(self, config: Config) -> None:
        """What the core derives from its configuration (and its logger's types), at start and reload."""
        self.config = config
        self._max_inflight = config.max_inflight_messages or 65535
        self._max_inflight_bytes = config.max_inflight_bytes  # 0: no byte limit (see _inflight_bytes)
        self.debug = bool(getattr(self.log, "enabled", lambda level: False)(L.DEBUG))
        #: log_type subscribe is on (a log function without `enabled` gets every line, null_log none)
        self.log_subscribe = self.log is not L.null_log and getattr(self.log, "enabled", bool)(L.SUBSCRIBE)
        high = FLOW_HIGH_WATER
        if config.max_queued_messages:
            high = max(1, min(high, config.max_queued_messages // 2))
        self._flow_high = high
        self._flow_low = min(FLOW_LOW_WATER, high // 4)
        self._update_intake()

    def _update_intake(self) -> None:
        """Whether a network client's PUBLISH may skip _incoming's checks (see _on_publish)."""
        self._plain_intake = not (self._acl_on or self.config.message_size_limit)

    def _restore(self, state: Loaded, now: float) -> None:
        """Rebuild retained messages and persistent sessions (all offline) from the store."""
        for topic, payload, qos in state.retained:
            if topic.startswith("$SYS"):
                self.store.retained_clear(topic)  # saved by a version that let clients publish there
                continue
            self.retained.set(topic, Message(topic, payload, qos, retain=True), len(payload))
        for client_id, offline_for in state.sessions:
            session = self.sessions[client_id] = Session(client_id, clean=False)
            # Offline time before the restart counts toward persistent_client_expiration.
            session.offline_since = now - (offline_for or 0.0)
        for client_id, topic_filter, qos in state.subscriptions:
            session = self.sessions.get(client_id)
            if session is not None:
                session.subscriptions[topic_filter] = qos
                self.tree.subscribe(topic_filter, session, qos)
        # Sessions whose client was connected when the broker stopped without saying so (a crash).
        crashed = {client_id for client_id, offline_for in state.sessions if offline_for is None}
        # A message stored once for several deliveries is one Message again, shared by its sessions.
        shared = {msg_id: Message(topic, payload, qos, bool(retain), msg_id)
                  for msg_id, (topic, payload, qos, retain) in state.messages.items()}
        for seq, client_id, topic, payload, qos, retain, packet_id, st, msg_id in state.deliveries:
            session = self.sessions.get(client_id)
            self._seq = max(self._seq, seq)
            if session is None:
                continue
            msg = shared[msg_id] if msg_id is not None else Message(topic, payload, qos, bool(retain), -1)
            if packet_id is None or st == QUEUED:
                queue_of(session).append(msg)
                session.queue_meta.append(queue_meta(msg, qos, seq, packet_id or 0))
                session.queued_bytes += len(msg.payload)
                if client_id in crashed:
                    session.dup_prefix += 1  # perhaps sent before the crash: its row says nothing
            else:
                inflight_of(session)[packet_id] = [msg, qos, st, seq]
            if packet_id:
                session._next_pid = packet_id  # the last one handed out: new ids follow it
        for client_id, packet_id, topic, payload, retain in state.inbound_qos2:
            session = self.sessions.get(client_id)
            if session is not None:
                awaiting_of(session)[packet_id] = None if topic is None else (topic, payload or b"", bool(retain))
        if state.sessions or state.retained:
            self.log(L.NOTICE, f"Restored {len(state.retained)} retained messages and {len(state.sessions)} "
                               f"persistent sessions ({len(state.deliveries)} queued or in-flight messages).")

    def end_turn(self, now: float) -> None:
        """Called by the loop once per turn, before the flush: go on with the refills that waited for
        the last flush, then make this turn's changes durable (those that can wait, when due)."""
        if self.drained:
            drained = self.drained[:]
            self.drained.clear()
            for conn in drained:
                if not conn.closed:
                    self._refill(conn)
        self.store.commit(now)
        self.release_held()

    def release_held(self) -> None:
        """Acknowledgements held for the commit window leave once nothing they may depend on waits."""
        if self.held and self.store.settled():
            for conn in self.held:
                if not conn.closed:
                    for data in conn.held:
                        conn.write(data)
                conn.held = _NOTHING  # type: ignore[assignment]
            self.held.clear()

    def output_backed_up(self, conn: Connection) -> None:
        """The loop calls this when the socket took only part of a connection's output."""
        conn.q0_limit = Q0_BACKED_UP

    def output_flowing(self, conn: Connection) -> None:
        """... and this when all of it has left since."""
        conn.q0_limit = (Q0_REPLAY if conn.replay is not None else
                         OUT_BUFFER_LIMIT if conn in self.early else EARLY_FLUSH)  # (listed once at most)
        session = conn.session
        if session is not None and not session.queue:
            session.drop_logged = False  # a next episode of drops is logged again

    def output_drained(self, conn: Connection) -> None:
        """The loop calls this when it has sent all of the output of a connection with `refill_held`."""
        conn.refill_held = False
        self.drained.append(conn)

    # ---- events from the loop -------------------------------------------------------------------

    def connection_made(self, peer: str, port: int, now: float) -> Connection:
        conn = Connection(peer, port, now, self.dirty)
        self.connections[conn] = None
        return conn

    def data_received(self, conn: Connection, data: bytes, now: float) -> None:
        if conn.closed:
            return
        conn.last_rx = now
        self._now = now
        self.stats.bytes_received += len(data)
        if data and data[0] == 0x40 and conn.connected and not (conn.paused_by or conn.stash):
            ids = conn.parser.ack_run(data, 0x40)
            if ids is not None:  # a read of PUBACKs only: no packet objects, one refill
                self.stats.messages_received += len(ids)
                if self._acked(conn, ids, now):
                    self._refill(conn)
                return
        error = None
        try:
            packets = conn.parser.feed(data)
        except MalformedPacket as exc:
            error, packets = exc, exc.packets  # the valid packets before it are still handled
            exc.__traceback__ = None  # it would hold this frame, which holds it: a cycle per bad client
        self.stats.messages_received += len(packets)
        conn.stash_error = error
        if len(packets) == 1 and error is None and conn.connected and not conn.paused_by:
            packet = packets[0]
            if packet.__class__ is Publish:  # a client publishing now and then: a turn of its own
                self._on_publish(conn, packet, now)  # what _handle does with it, without its loop
                return
        self._handle(conn, packets, now)

    def resume(self, conn: Connection, now: float) -> None:
        """The loop calls this for a connection no longer paused: handle the packets it stashed."""
        if conn.closed or conn.paused_by:
            return
        conn.last_rx = now
        if not (conn.stash or conn.stash_error):
            return
        packets, conn.stash = conn.stash, ()
        self._handle(conn, packets, now)

    def _handle(self, conn: Connection, packets: Sequence[object], now: float) -> None:
        # PUBACK/PUBCOMP handlers return True when they freed room in the inflight window of a session
        # with queued messages: the window is refilled once after a run of them, not once per ack, and
        # before any other packet is handled (so a PINGRESP still follows what the acks let out).
        refill = False
        i = -1  # the packet's index, counted: cheaper than enumerate's iterator when a read holds one
        for packet in packets:
            i += 1
            if conn.paused_by:
                conn.stash = packets[i:]  # flow control: the rest waits until the subscriber catches up
                break
            cls = packet.__class__
            if refill and cls is not Puback and cls is not Pubcomp:
                refill = False
                self._refill(conn)
            handler = (self._handlers if conn.connected else self._handlers_new).get(cls)
            if handler is None:
                if isinstance(packet, Connect):
                    reason = "second CONNECT [MQTT-3.1.0-2]"
                elif not conn.connected:
                    reason = "first packet not CONNECT [MQTT-3.1.0-1]"
                else:
                    reason = f"unexpected {type(packet).__name__.upper()} from a client"
                self._close(conn, now, f"protocol error: {reason}")
                return
            if handler(conn, packet, now):
                refill = True
            if conn.closed:
                return
        if refill:
            self._refill(conn)
        error = conn.stash_error
        if error is not None and not conn.paused_by:
            conn.stash_error = None
            self._close(conn, now, f"malformed packet: {error}")  # [MQTT-4.8.0-1]

    def connection_lost(self, conn: Connection, now: float, reason: str = "closed its connection") -> None:
        self._close(conn, now, reason)

    def tick(self, now: float) -> float:
        """Run the timers that are due; return when the next one is."""
        self._now = now
        if now >= self._next_check:
            self._next_check = now + CHECK_INTERVAL
            self._check_timeouts(now)
        if now >= self._next_sys:
            self._next_sys = now + self.config.sys_interval
            self.publish_sys(now)
        # Not min(): the loop calls this every turn, and a builtin called with a tuple of arguments
        # costs more than a comparison (at a low rate every turn runs with cold caches).
        return self._next_check if self._next_check < self._next_sys else self._next_sys

    def shutdown(self, now: float) -> None:
        """Close every connection. A broker that stops does not publish wills: its clients did not
        fail, and a restart must not announce every device offline."""
        for conn in list(self.connections):
            self._close(conn, now, "broker stopping", publish_will=False)

    # ---- connection end: the one path ---------------------------------------------------------

    def _close(self, conn: Connection, now: float, reason: str, publish_will: bool = True) -> None:
        if conn.closed:
            return
        conn.closed = True
        conn.close_reason = reason
        conn.replay = None
        if conn.q0_limit == OUT_BUFFER_LIMIT and conn in self.early:
            self.early.remove(conn)
        self.closing.append(conn)
        self.connections.pop(conn, None)
        for session in conn.paused_by:
            if conn in session.blocking:
                session.blocking.discard(conn)  # type: ignore[attr-defined]
        conn.paused_by = NO_ONE
        conn.stash = ()
        if not conn.connected:
            if reason != "closed its connection" and self.config.connection_messages:
                self.log(L.NOTICE, f"Client {conn.client_id} from {conn.peer} disconnected: {reason}.")
            return
        conn.connected = False
        self.stats.clients_connected -= 1
        if self.config.connection_messages:
            if reason == "disconnected":
                self.log(L.NOTICE, f"Client {conn.client_id} disconnected.")
            elif reason == "closed its connection":
                self.log(L.NOTICE, f"Client {conn.client_id} closed its connection.")
            elif reason == "exceeded timeout":
                self.log(L.NOTICE, f"Client {conn.client_id} has exceeded timeout, disconnecting.")
            else:
                self.log(L.NOTICE, f"Client {conn.client_id} disconnected, {reason}.")
        will = conn.will
        conn.will = None
        if will is not None and self._acl_on and not conn.session.acl.may_write(will.topic):  # type: ignore
            will = None  # checked when sent, as Mosquitto does
        if will is not None and publish_will:
            self._publish_will(will)
        session = conn.session
        if conn.bridge:
            self._rap.discard(session)
        if session is not None and session.conn is conn:
            session.conn = None
            if session.blocking:
                self._release(session)  # an offline session throttles no one: its queue is bounded
            if session.clean:
                self._discard_session(session)
            else:
                session.offline_since = now
                store = self.store
                store.session_offline(session.client_id)
                for pid, entry in session.inflight.items():
                    if entry[2] == INFLIGHT_SENT and entry[3]:
                        # Sent from the queue, where its row says queued: a restart resends it with DUP.
                        store.delivery_update(entry[3], pid, INFLIGHT_SENT, deferred=True)

    def _publish_will(self, will: Will) -> None:
        """A will is published like a PUBLISH from its client [MQTT-3.1.2-8], retain included."""
        if will.retain and self.config.retain_available:
            self._set_retained(will.topic, will.payload, will.qos)
        self._route(Message(will.topic, will.payload, will.qos))

    def _discard_session(self, session: Session) -> None:
        if session.blocking:
            self._release(session)
        for topic_filter in session.subscriptions:
            self.tree.unsubscribe(topic_filter, session)
        session.subscriptions.clear()
        if not session.clean:
            self.store.session_remove(session.client_id, list(session.queue) +
                                      [e[0] for e in session.inflight.values()])
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _check_timeouts(self, now: float) -> None:
        expiration = self.config.persistent_client_expiration
        if expiration is not None:
            for session in [s for s in self.sessions.values()
                            if s.conn is None and not s.clean and now - s.offline_since > expiration]:
                self.log(L.NOTICE, f"Expiring client {session.client_id} due to timeout.")
                self.stats.clients_expired += 1
                self._discard_session(session)
        for session in {s for conn in self.connections for s in conn.paused_by}:
            if now - session.last_progress > FLOW_STALL:
                self.log(L.NOTICE, f"Client {session.client_id} stopped acknowledging; publishers to it are "
                                   f"no longer held back and its queue will drop past its bound.")
                session.stalled = True
                self._release(session)
        connect_timeout = self.config.connect_timeout
        for conn in list(self.connections):
            if not conn.connected:
                if now - conn.accepted_at > connect_timeout:
                    self._close(conn, now, "no CONNECT in time")
            elif conn.keepalive and now - conn.last_rx > conn.keepalive * 1.5 and not conn.paused_by:
                # [MQTT-3.1.2-24]; a connection paused by flow control is not being read, so its
                # PINGREQs cannot count: it is exempt while paused and its clock restarts on resume.
                self._close(conn, now, "exceeded timeout")

    # ---- CONNECT --------------------------------------------------------------------------------

    def _resend(self, session: Session, conn: Connection, pids: Optional[List[int]] = None, i: int = 0) -> None:
        """On reconnect, resend unacknowledged PUBLISH (DUP set) and PUBREL packets in their original
        order [MQTT-4.4.0-1], then continue with the queue. Like a refill it stops at REFILL_BYTES of
        output; `conn.resend_at` keeps its place (the ids in order, the next index) until it goes on."""
        inflight = session.inflight
        if pids is None:
            pids = list(inflight)
        stats = self.stats
        budget = REFILL_BYTES - conn.out_size
        size = 0
        while i < len(pids):
            if size >= budget:
                conn.resend_at = (pids, i)
                conn.refill_held = True
                return
            pid = pids[i]
            i += 1
            entry = inflight.get(pid)  # entry: [message, qos, state, seq]
            if entry is None:
                continue  # acknowledged since the resend began
            if entry[2] == INFLIGHT_SENT:
                data = entry[0].wire(entry[1], pid, True)
                stats.publish_sent += 1
                stats.publish_bytes_sent += len(entry[0].payload)
            else:
                data = b"\x62\x02" + pid.to_bytes(2, "big")
            conn.write(data)
            size += len(data)
            stats.messages_sent += 1
        conn.resend_at = None
        self._pump(session, conn)

    # ---- PUBLISH and its acknowledgements ----------------------------------------------------

    def _on_publish(self, conn: Connection, p: Publish, now: float) -> None:
        stats = self.stats
        stats.publish_received += 1
        stats.publish_bytes_received += len(p.payload)
        if self.debug:
            self.log(L.DEBUG, f"Received PUBLISH from {conn.client_id} (d{int(p.dup)}, q{p.qos}, r{int(p.retain)}, "
                              f"m{p.packet_id}, '{p.topic}', ... ({len(p.payload)} bytes))")
        qos = p.qos
        if qos == 2:
            self._hold(conn, p, now)
            return
        self._source = conn
        if self._plain_intake and not p.retain and not conn.bridge and not p.topic.startswith("$SYS"):
            # What _incoming would do for this message (no ACL, no size limit, not retained, not from
            # a bridge peer), without its checks: the hot path. The packet is the routed Message.
            self._route(p)
            self._source = None
            if qos:
                self._send_ack(conn, 0x40, p.packet_id, "PUBACK")  # [MQTT-4.3.2-2]
                p.packet_id = 0  # queued, the message would keep its publisher's id alive (32 bytes)
            return
        if p.topic.startswith("$SYS"):
            # The broker's own tree: a network client's PUBLISH there is acknowledged and discarded,
            # retained or not, as Mosquitto does (it matches the same prefix, "$SYS" with no slash).
            # In-process clients (a bridge's connection state) may publish there.
            accepted = True
            if self.debug:
                self.log(L.DEBUG, f"Discarded PUBLISH from {conn.client_id} to '{p.topic}' ($SYS is the broker's).")
        else:
            accepted = self._incoming(conn.client_id, p.topic, p.payload, qos, p.retain, p.dup, p.packet_id,
                                      conn.session.acl if self._acl_on else None,  # type: ignore[union-attr]
                                      conn.session if conn.bridge else None)
        self._source = None
        if not accepted:
            self._close(conn, now, "retained message sent but retain_available is false")
            return
        if qos == 1:
            self._send_ack(conn, 0x40, p.packet_id, "PUBACK")  # [MQTT-4.3.2-2]

    def _hold(self, conn: Connection, p: Publish, now: float) -> None:
        """An inbound QoS 2 PUBLISH: PUBREC now, the message held until the PUBREL (Mosquitto's order;
        the standard allows either [MQTT-4.3.3-2]). A persistent session's row carries it, durable
        before the PUBREC leaves. A resend of an id held already is only acknowledged again: the
        message goes to subscribers once."""
        session: Session = conn.session  # type: ignore[assignment]
        awaiting = awaiting_of(session)
        pid = p.packet_id
        if pid not in awaiting:
            held: Optional[Tuple[str, bytes, bool]] = (p.topic, p.payload, p.retain)
            limit = self.config.message_size_limit
            if p.topic.startswith("$SYS"):
                held = None  # acknowledged and discarded, as above
            elif limit and len(p.payload) > limit:
                held = None
                self._incoming(conn.client_id, p.topic, p.payload, 2, p.retain, p.dup, pid)  # logs, counts
            elif p.retain and not self.config.retain_available:
                self._close(conn, now, "retained message sent but retain_available is false")
                return
            awaiting[pid] = held
            if not session.clean:
                if held is None:
                    self.store.inbound_add(conn.client_id, pid)
                else:
                    self.store.inbound_add(conn.client_id, pid, p.topic, p.payload, p.retain)
        self._send_ack(conn, 0x50, pid, "PUBREC")  # [MQTT-4.3.3-2]

    def _incoming(self, client_id: str, topic: str, payload: bytes, qos: int, retain: bool, dup: bool = False,
                  packet_id: int = 0, acl: Optional[AclSubject] = None,
                  exclude: Optional[Session] = None) -> bool:
        """A message published by a client, network or local, enters the core: ACL, size limit, retained,
        routing. False when the client broke a rule that ends its connection (retain while
        retain_available is false), and nothing was routed."""
        if acl is not None and not acl.may_write(topic):
            # 3.1.1 cannot refuse a PUBLISH: acknowledged as its QoS requires, and dropped (Mosquitto).
            if self.debug:
                self.log(L.DEBUG, f"Denied PUBLISH from {client_id} (d{int(dup)}, q{qos}, r{int(retain)}, "
                                  f"m{packet_id}, '{topic}', ... ({len(payload)} bytes))")
            return True
        limit = self.config.message_size_limit
        if limit and len(payload) > limit:
            # Mosquitto's message_size_limit: acknowledged (the protocol flow completes) but dropped.
            self.stats.publish_dropped += 1
            self.log(L.NOTICE, f"Dropped too large PUBLISH from {client_id} (d{int(dup)}, q{qos}, "
                               f"r{int(retain)}, m{packet_id}, '{topic}', ... ({len(payload)} bytes))")
            return True
        if retain:
            if not self.config.retain_available:
                return False
            self._set_retained(topic, payload, qos)
        if exclude is not None or (retain and self._rap):
            self._route_bridged(Message(topic, payload, qos), retain, exclude)
        else:
            self._route(Message(topic, payload, qos))
        return True

    def _route_bridged(self, msg: Message, retain: bool, exclude: Optional[Session]) -> None:
        """Routing with Mosquitto's treatment of bridges: a bridge peer's own message does not go back to
        it (`exclude`), and bridges get a retained message with its retain flag."""
        subs = self.tree.match(msg.topic)
        if not subs:
            return
        subs = dict(subs)  # the tree's dict is shared through its cache
        if exclude is not None:
            subs.pop(exclude, None)
        if retain:
            kept = {s: q for s, q in subs.items() if s in self._rap}
            if kept:
                for s in kept:
                    del subs[s]
                self._route(Message(msg.topic, msg.payload, msg.qos, retain=True), kept)
        self._route(msg, subs)

    def _send_ack(self, conn: Connection, first: int, packet_id: int, name: str, hold: bool = False) -> None:
        """hold: with a commit window, wait for the store to settle even if nothing waits yet (what
        is written after this acknowledgement, in the same handler, may need the commit)."""
        data = _ACK(first, 2, packet_id)
        if self._hold_acks and (hold or conn.held or self.store.waiting):
            # Changes wait for the commit window (this message's or others'): so does this PUBACK,
            # PUBREC, PUBREL or PUBCOMP; after any held one, the next too, to keep their order.
            if not conn.held:
                self.held.append(conn)
                conn.held = [data]
            else:
                conn.held.append(data)
        else:
            conn.write(data)
        self.stats.messages_sent += 1
        if self.debug:
            self.log(L.DEBUG, f"Sending {name} to {conn.client_id} (m{packet_id}, rc0)")

    def _set_retained(self, topic: str, payload: bytes, qos: int, durable: bool = True) -> None:
        if payload:
            self.retained.set(topic, Message(topic, payload, qos, retain=True), len(payload))  # [MQTT-3.3.1-5]
            if durable:
                self.store.retained_set(topic, payload, qos)
        elif self.retained.pop(topic) is not None and durable:
            self.store.retained_clear(topic)  # empty payload clears it [MQTT-3.3.1-10] [MQTT-3.3.1-11]

    def _route(self, msg: Message, subs: Optional[Dict[Session, int]] = None) -> None:
        """Deliver one message to every matching subscription (or to `subs`), once per client at the
        highest QoS of its matching subscriptions [MQTT-3.3.5-1]; the retain flag is clear on live
        delivery [MQTT-3.3.1-9] (but for bridges: see _route_bridged)."""
        if subs is None:
            subs = self.tree.match(msg.topic)
        if not subs:
            return
        if self._acl_on:
            subs = self._readers(subs, msg.topic)
        pub_qos = msg.qos
        upgrade = self.config.upgrade_outgoing_qos
        stats = self.stats
        sent = 0  # QoS 0 copies written: counted once after the loop
        for session, sub_qos in subs.items():
            qos = sub_qos if upgrade or sub_qos < pub_qos else pub_qos  # [MQTT-3.8.4-6]
            if qos == 0:
                conn = session.conn
                if conn is not None:
                    if conn.out_size > conn.q0_limit and not self._q0_admit(session, conn, msg):
                        continue
                    # (its bytes are made already when it came in as QoS 0, as read: no call then)
                    conn.write(msg._q0 or msg.q0())
                    sent += 1
                    if self.debug:
                        self._log_sent(conn, msg, 0, 0, False)
                elif session.sink is not None:
                    if session is not self._local_source:  # no-local: not back to its publisher
                        session.sink(msg.topic, msg.payload, 0, msg.retain)
                elif self.config.queue_qos0_messages:
                    self._enqueue(session, msg, 0)
                continue
            self._deliver(session, msg, qos)
        if sent:
            stats.publish_sent += sent
            stats.messages_sent += sent
            stats.publish_bytes_sent += sent * len(msg.payload)

    def _q0_admit(self, session: Session, conn: Connection, msg: Message) -> bool:
        """The slow path of a live QoS 0 delivery (see connection.Q0_BACKED_UP): True if it joins the
        output now; otherwise it waits behind a retained replay or is dropped (counted). The count is of
        the chunks waiting in the output, as Mosquitto 2.0 counts its packets waiting to be written; the
        rest of a send the socket took in part is one chunk (a slice of at most server.SEND_SLICE, or
        the loop turn's output that backed the socket up)."""
        if conn.q0_limit == EARLY_FLUSH:  # its output passed EARLY_FLUSH: the loop sends it early
            conn.q0_limit = OUT_BUFFER_LIMIT
            self.early.append(conn)
            return True
        if conn.replay is not None:
            if conn.replay_live < REPLAY_LIVE_MAX:
                conn.replay.append(msg)  # behind the retained ones still being sent
                conn.replay_live += 1
            else:
                self._drop(session, "output buffer full")
            return False
        cfg = self.config
        limit = cfg.max_queued_messages
        if limit and len(conn.out) >= limit:  # the usual refusal, checked here: it comes per message
            why = "max_queued_messages"
        else:
            why = q0_refusal(conn, len(msg.q0()), cfg.max_queued_bytes)
            if not why:
                return True
        if session.drop_logged:
            self.stats.publish_dropped += 1  # what _drop does then, without making its reason
        else:
            self._drop(session, f"{why} {getattr(cfg, why)} reached" if why[0] == "m" else why)
        return False

    def _readers(self, subs: Dict[Session, int], topic: str) -> Dict[Session, int]:
        """The subscribers the ACL lets read `topic`; a session whose client is not known yet (restored,
        offline) keeps the message queued and is checked when it is sent."""
        return {s: q for s, q in subs.items() if s.acl is None or s.acl.may_read(topic)}  # type: ignore

    def _deliver(self, session: Session, msg: Message, qos: int) -> None:
        conn = session.conn
        if (conn is not None and not session.queue and len(session.inflight) < self._max_inflight
                and conn.resend_at is None
                and (not self._max_inflight_bytes or _inflight_bytes(session) < self._max_inflight_bytes)):
            seq = 0
            pid = session.next_packet_id()
            if not session.clean:
                seq = self._seq = self._seq + 1
                self.store.delivery_add(seq, session.client_id, msg, qos, pid, INFLIGHT_SENT)
            inflight = session.inflight
            if inflight is NO_INFLIGHT:
                inflight = session.inflight = {}
            inflight[pid] = [msg, qos, INFLIGHT_SENT, seq]
            conn.write(msg.wire(qos, pid))
            stats = self.stats
            stats.publish_sent += 1
            stats.messages_sent += 1
            stats.publish_bytes_sent += len(msg.payload)
            if self.debug:
                self._log_sent(conn, msg, qos, pid, False)
        elif session.sink is not None:
            if session is not self._local_source:  # no-local: not back to its publisher
                session.sink(msg.topic, msg.payload, qos, msg.retain)
        else:
            self._enqueue(session, msg, qos)

    def _log_sent(self, conn: Connection, msg: Message, qos: int, pid: int, dup: bool) -> None:
        self.log(L.DEBUG, f"Sending PUBLISH to {conn.client_id} (d{int(dup)}, q{qos}, r{int(msg.retain)}, "
                          f"m{pid}, '{msg.topic}', ... ({len(msg.payload)} bytes))")

    def _enqueue(self, session: Session, msg: Message, qos: int) -> None:
        cfg = self.config
        if cfg.max_queued_messages and len(session.queue) >= cfg.max_queued_messages:
            self._drop(session, f"max_queued_messages {cfg.max_queued_messages} reached")
            return
        if cfg.max_queued_bytes and session.queued_bytes + len(msg.payload) > cfg.max_queued_bytes:
            self._drop(session, f"max_queued_bytes {cfg.max_queued_bytes} reached")
            return
        if session.clean:
            meta = 0 if qos == msg.qos else ~qos  # queue_meta(msg, qos, 0, 0)
        else:
            seq = self._seq = self._seq + 1
            pid = session.next_packet_id() if qos else 0
            # queue_meta(msg, qos, seq, pid), inline: once per message; the store's buffer shares it
            meta = (seq << 16) | pid if qos == msg.qos else ~((seq << 18) | (pid << 2) | qos)
            self.store.delivery_add(seq, session.client_id, msg, qos, pid or None, QUEUED, meta)
        queue = session.queue
        if queue.__class__ is not deque:
            queue = queue_of(session)
        queue.append(msg)
        session.queue_meta.append(meta)
        session.queued_bytes += len(msg.payload)
        source = self._source
        if (source is not None and len(queue) >= self._flow_high and session.conn is not None
                and source is not session.conn and not session.stalled and session not in source.paused_by):
            if not session.blocking:
                session.last_progress = self._now  # the stall clock starts when it first holds someone back
            if not source.paused_by:
                self.flow_changed.append(source)
            add_member(source, "paused_by", session)
            add_member(session, "blocking", source)

    def _drop(self, session: Session, why: str) -> None:
        self.stats.publish_dropped += 1
        if not session.drop_logged:  # once per client until its queue drains again
            session.drop_logged = True
            self.log(L.NOTICE, f"Outgoing messages are being dropped for client {session.client_id} ({why}).")

    def _refill(self, conn: Connection) -> None:
        if conn.replay is not None:
            self._replay(conn)
        session = conn.session
        if session is None or session.conn is not conn:
            return
        if conn.resend_at is not None:
            self._resend(session, conn, *conn.resend_at)
        elif session.queue:
            self._pump(session, conn)

    def _pump(self, session: Session, conn: Connection) -> None:
        """Move queued messages into the inflight window while it has room. A message that got its
        packet id when queued is sent without writing to the store."""
        queue = session.queue
        metas = session.queue_meta
        inflight = session.inflight
        if inflight is NO_INFLIGHT and queue:
            inflight = session.inflight = {}
        room = self._max_inflight - len(inflight)
        store = self.store
        debug = self.debug
        sent = pbytes = 0
        acl = session.acl if self._acl_on else None
        out = conn.buffer() if queue and room > 0 else conn.out
        size = 0
        budget = REFILL_BYTES - conn.out_size
        byte_limit = self._max_inflight_bytes
        if queue and room > 0 and not (byte_limit or debug or acl is not None or session.dup_prefix):
            # The common case of a drain, in a loop of its own that does only what it needs: QoS 1/2
            # messages that got their packet id when queued, no ACL, no byte limit, no DUP prefix, no
            # debug log. A message that needs more (QoS 0, an id to give) ends it, and the general loop
            # below goes on from there.
            popleft = queue.popleft
            popmeta = metas.popleft
            first = len(queue)
            while queue and room > 0 and size < budget:
                meta = popmeta()
                pid = meta & 0xFFFF
                if not pid or meta < 0 or pid in inflight:  # (a packet id: QoS 1/2, at the message's)
                    metas.appendleft(meta)
                    break
                msg = popleft()
                qos = msg.qos
                inflight[pid] = [msg, qos, INFLIGHT_SENT, meta >> 16]
                parts = msg.parts(qos, pid)
                out += parts
                n = len(parts[3])
                pbytes += n
                size += 3 + len(parts[1]) + n
                room -= 1
            sent = first - len(queue)
            session.queued_bytes -= pbytes
        in_flight = _inflight_bytes(session) if byte_limit else 0
        while queue and room > 0:
            if size >= budget:
                conn.refill_held = True
                break
            if byte_limit and in_flight >= byte_limit and unpack_meta(queue[0], metas[0])[0]:
                break  # max_inflight_bytes: the next QoS 1/2 message waits for an acknowledgement
            msg = queue.popleft()
            meta = metas.popleft()  # unpack_meta(msg, meta), inline for the common cases:
            if not meta:  # a clean session's delivery at its message's QoS
                qos = msg.qos
                seq = pid = 0
            elif meta > 0:
                qos = msg.qos
                seq = meta >> 16
                pid = meta & 0xFFFF
            else:
                qos, seq, pid = unpack_meta(msg, meta)
            session.queued_bytes -= len(msg.payload)
            if acl is not None and not acl.may_read(msg.topic):  # type: ignore[attr-defined]
                if seq:
                    store.delivery_remove(seq, msg)  # queued before the client (or a reloaded ACL) was known
                continue
            sent += 1
            pbytes += len(msg.payload)
            if qos == 0:
                q0 = msg.q0()
                out.append(q0)
                size += len(q0)
                if seq:
                    store.delivery_remove(seq, msg)
                if debug:
                    self._log_sent(conn, msg, 0, 0, False)
                continue
            if not pid or pid in inflight:
                # None yet, or in use again after the ids wrapped around (a queue over 65,535 messages).
                pid = session.next_packet_id()
                if seq:
                    store.delivery_update(seq, pid, QUEUED)  # durable before the PUBLISH with it leaves
            dup = False
            if session.dup_prefix:
                session.dup_prefix -= 1
                dup = True
            inflight[pid] = [msg, qos, INFLIGHT_SENT, seq]
            in_flight += len(msg.payload)
            parts = msg.parts(qos, pid, dup)
            out += parts
            size += 3 + len(parts[1]) + len(parts[3])
            room -= 1
            if debug:
                self._log_sent(conn, msg, qos, pid, dup)
        conn.out_size += size
        stats = self.stats
        stats.publish_sent += sent
        stats.messages_sent += sent
        stats.publish_bytes_sent += pbytes
        if not queue:
            session.drop_logged = False
        if session.blocking and len(queue) <= self._flow_low:
            self._release(session)

    def _release(self, session: Session) -> None:
        """Resume the publishers this session was holding back."""
        for conn in session.blocking:
            if session in conn.paused_by:
                conn.paused_by.discard(session)
            if not conn.paused_by:
                conn.last_rx = self._now  # its keepalive clock restarts: it was not being read
                self.flow_changed.append(conn)
        session.blocking = NO_ONE

    # ---- SUBSCRIBE / UNSUBSCRIBE -----------------------------------------------------------------

    def _on_pingreq(self, conn: Connection, p: Pingreq, now: float) -> None:
        if self.debug:
            self.log(L.DEBUG, f"Received PINGREQ from {conn.client_id}")
        conn.write(_PINGRESP)  # [MQTT-3.12.4-1]
        self.stats.messages_sent += 1
        if self.debug:
            self.log(L.DEBUG, f"Sending PINGRESP to {conn.client_id}")

    def _on_disconnect(self, conn: Connection, p: Disconnect, now: float) -> None:
        if self.debug:
            self.log(L.DEBUG, f"Received DISCONNECT from {conn.client_id}")
        conn.will = None  # a clean DISCONNECT discards the will [MQTT-3.14.4-3]
        self._close(conn, now, "disconnected")

    # ---- $SYS ---------------------------------------------------------------------------------

    def publish_log_lines(self, lines: List[Tuple[int, str]]) -> None:
        """log_dest topic: each line to $SYS/broker/log/<severity> (Mosquitto's topics), QoS 0."""
        for level, line in lines:
            topic = "$SYS/broker/log/" + L.TOPIC_SEVERITY.get(level, "I")
            self._route(Message(topic, line.encode("utf-8", "replace"), 0))

    def publish_sys(self, now: float) -> None:
        """Publish the `$SYS/broker/...` values that changed since the last time, retained."""
        stored = len(self.retained)
        stored_bytes = self.retained.payload_bytes
        for s in self.sessions.values():
            stored += len(s.queue) + len(s.inflight)
            stored_bytes += s.queued_bytes
        rss = self.memory_probe() if self.memory_probe is not None else None
        values = sys_values(self.stats, __version__, now - self.started, len(self.sessions),
                            self.tree.count, len(self.retained), stored, stored_bytes, rss)
        if rss is not None:
            self._heap_max = max(self._heap_max, rss)
            values["$SYS/broker/heap/maximum"] = str(self._heap_max)
        values.update(self.load.update(now))
        for provider in self.sys_providers:
            values.update(provider())
        # Ours, not Mosquitto's: failed persistence commits (disk full, I/O errors) and commits made.
        values["$SYS/broker/store/errors"] = str(self.store.errors)
        values["$SYS/broker/store/commits"] = str(self.store.commits)
        last = self._sys_last
        for topic, value in values.items():
            if last.get(topic) != value:
                last[topic] = value
                payload = value.encode()
                self._set_retained(topic, payload, 0, durable=False)  # recomputed at start-up
                self._route(Message(topic, payload, 0))


def _inflight_bytes(session: Session) -> int:
    """Payload bytes of the QoS 1/2 messages in flight to a session, for max_inflight_bytes: summed when
    needed rather than kept up to date, so the limit costs nothing while it is off; on, a sum over a
    window that max_inflight_messages bounds."""
    return sum(len(entry[0].payload) for entry in session.inflight.values())
