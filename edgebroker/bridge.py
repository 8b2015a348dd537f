"""Bridges to remote brokers, hosted in the broker's loop: store and forward through outages and restarts.

Theory of operation. One `Bridge` per `connection` block. Locally it is an in-process client of the core
(`Broker.attach_local`) subscribed to the local topic of every `out`/`both` line; the core calls
`_on_local` while it routes a message, and the message (remapped to its remote topic) is appended to the
bridge's queue, whose row is written in the same turn's commit as the publisher's acknowledgement
(`SqliteStore.bridge_add`). Remotely it is an `UplinkSession` (edgebroker/uplink.py) over a non-blocking
socket (TLS through edgebroker/tls.py) that the loop watches (`add_reader`/`add_writer`); the bridge's
timer (`add_timer`) connects, reconnects with backoff, runs the keepalive, fills the send window from the
queue and writes what the session produced, once per turn. A row is deleted when the remote acknowledges
it (PUBACK, or PUBCOMP for QoS 2; for QoS 0 once written to the socket): that delete waits for a commit
something else needs, so a message sent and acknowledged within a second costs its insert only, and a
QoS 0 message sent before its row was committed costs no write at all.

Messages from the remote (`in`/`both` lines) are published locally by the bridge's local client, which
the core never delivers back to it (no-local): nothing that came in over a bridge goes out over it.
Their acknowledgements to the remote wait for the commit of the turn that delivered them (`_holding`).

The queue: rows in SQLite, the oldest ones (up to MEMORY_ROWS) also in memory, the rest read back in
order when the memory part runs low; counts and bytes are kept in memory for the quotas
(bridge_max_queued_messages/bytes), past which the oldest waiting message (or the new one, with
bridge_queue_drop newest) is dropped, counted and logged once per episode. After a restart the whole
queue is sent again from its first row, in order: a message the remote acknowledged just before a
crash, whose delete was not yet committed, is sent twice (at least once); none is lost.

Name resolution (getaddrinfo blocks) runs on a short-lived thread per lookup that hands its result back
through `server.wake()`; addresses that are IP literals need none.

Imports: `_socket`, `_thread` and a deque, not socket.py (which loads enum, selectors and array),
threading, queue, random or ipaddress: together about 1 MiB of resident memory for the gateway's whole
life (bench/README.md, "Issue 19: the bridge rows").
"""
from __future__ import annotations

import _socket
import _thread
import errno
import os
from _collections import deque  # collections.deque, without the collections package (record.namedtuple)

from . import log as L
from .bridgeconfig import BridgeConfig, BridgeTopic
from .config import literal_family
from .packets import Will
from .topics import filter_matches
from .uplink import Acked, Connected, Lost, Received, Refused, Subscribed, UplinkSession

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Deque, Dict, List, Optional, Tuple

    _Entry = Tuple[int, str, bytes, int, Any, int]

__all__ = ["Bridge", "start_bridges", "MEMORY_ROWS"]

#: Oldest queued messages kept in memory per bridge; the rest stay on disk until the sender needs them.
#: About 210 bytes each (the entry, its payload, its size): 256 keep a window of 20 fed for a dozen
#: refills between reads, where 2,000 held 0.4 MiB more at B1's peak (bench/README.md, "Issue 19: the
#: bridge rows").
MEMORY_ROWS = 256
#: Rows read back from disk at a time (one SELECT on the key).
READ_ROWS = 128
#: Output bytes waiting for the socket beyond which no more messages are taken from the queue this turn.
BACKLOG_LIMIT = 256 * 1024
#: Bytes read per recv.
RECV_SIZE = 65536
#: Seconds a TCP connect (and TLS handshake) may take before it counts as failed.
CONNECT_TIMEOUT = 30.0
#: While connected to a fallback address (round_robin false), seconds between attempts to reach the
#: primary again; when it answers, the bridge reconnects to it (Mosquitto 2.0 probes every 5 s).
PRIMARY_RETRY = 5.0
#: Log lines about connection failures: at most one per this many seconds per bridge (a link that is
#: down for days must not fill the log); the number left out is said in the next one.
LOG_INTERVAL = 60.0
#: Seconds between attempts to read the queue's next rows while the database cannot be written (a full
#: disk): those rows are still in the store's buffer, not yet in the file.
DISK_RETRY = 1.0

_IDLE, _RESOLVING, _CONNECTING, _MQTT, _UP, _STOPPED = "idle", "resolving", "connecting", "mqtt", "up", "stopped"


def _getaddrinfo(host: str, port: int) -> Any:
    """The addresses of a host name (it blocks: run on a thread of its own), or the exception. An ASCII
    name goes as bytes: as a str it would go through the idna codec, whose first use imports re, enum,
    unicodedata and stringprep (0.9 MiB for the gateway's life, bench/README.md, "Issue 19: the bridge
    rows"); idna leaves an ASCII name as it is."""
    try:
        return _socket.getaddrinfo(host.encode("ascii") if host.isascii() else host, port, 0, _socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        return exc.with_traceback(None)  # else a cycle through this frame per failed lookup


def _uniform(low: float, high: float) -> float:
    """A random float in [low, high) (random.uniform's job, without importing random: 0.2 MiB)."""
    return low + (high - low) * (int.from_bytes(os.urandom(7), "big") >> 3) / (1 << 53)


#: A queued message in memory (the queue's head, and the token of a message in flight) is a tuple
#: (seq, topic, payload, qos, retain, size): what the store's read back returns, as it returns it, so a
#: row read back costs no Python per row (an object per message cost about 2,000 instructions more,
#: bench/README.md, "Issue 19: a bridged message's CPU"). size is the bytes the quota counts (topic and
#: payload).
_SEQ, _TOPIC, _PAYLOAD, _QOS, _RETAIN, _SIZE = range(6)


def _remap(topics: Tuple[BridgeTopic, ...], topic: str, outgoing: bool) -> str:
    """Mosquitto's remapping: the first line of the direction with a prefix whose filter (local_topic
    going out, remote_topic coming in) matches loses that side's prefix and gains the other's."""
    for t in topics:
        if not t.remapped or t.direction == ("in" if outgoing else "out"):
            continue
        here, there = (t.local_prefix, t.remote_prefix) if outgoing else (t.remote_prefix, t.local_prefix)
        if filter_matches(t.local_topic if outgoing else t.remote_topic, topic):
            if here and topic.startswith(here):
                topic = topic[len(here):]
            return (there or "") + topic
    return topic


class Bridge:
    def __init__(self, server: Any, config: BridgeConfig, seq: List[int], summary: Tuple[int, int], now: float,
                 damaged: Tuple[int, ...] = ()) -> None:
        self.server = server
        self.config = config
        self.name = config.name
        self.broker = server.broker
        self.store = server.broker.store
        self.log = server.log
        self.state = _IDLE
        self._now = now
        # ---- the queue
        self._seq = seq  # [last seq]: one sequence shared by every bridge (the table's key)
        self.head: Deque[_Entry] = deque()   # oldest unsent messages, in memory
        self.on_disk = 0                     # unsent messages beyond `head`, on disk only
        self._mem_last = 0                   # seq of the newest message ever held in memory
        self.count, self.bytes = summary     # queued messages and bytes, in flight included
        self.memory_rows = MEMORY_ROWS if self.store.path is not None else 0  # 0: no limit (no disk)
        #: the quotas as _full tests them (none set: a bound never reached)
        self._max_count = config.max_queued_messages or 1 << 62
        self._max_bytes = config.max_queued_bytes or 1 << 62
        self._remaps = any(t.remapped for t in config.topics)
        self.dropped = 0
        self.sent = 0
        self.received = 0
        self._dropping = False
        self._episode_drops = 0
        #: rows found at the start that cannot be messages (start_bridges deleted them; until that delete
        #: is committed, should the disk be full, a read back skips them)
        self.damaged = len(damaged)
        self._skip = frozenset(damaged)
        for row in damaged:
            self.log(L.ERR, f"Error: bridge {self.name}: damaged queue row {row} skipped and deleted.")
        # ---- the connection
        self.last_error = ""
        self.connects = 0
        self._sock: Optional[_socket.socket] = None
        self._tls: Any = None
        self._backlog = b""
        self._writing = False
        self._infos: List[Tuple] = []
        self._address = 0
        self._deadline = float("inf")
        self._retry_at = 0.0
        self._sleep = config.restart_timeout
        self._gen = 0
        #: (gen, addresses or exception) from lookup threads (deque's append and popleft are atomic)
        self._results: Deque[Tuple[int, Any]] = deque()
        self._last_traffic = 0.0
        self._log_at = -LOG_INTERVAL
        self._log_skipped = 0
        self._probe: Optional[_socket.socket] = None  # a connect to the primary while on a fallback
        self._probe_at = float("inf")
        #: acknowledgements of messages from the remote wait for the commit that makes them durable
        self._acks_held = False
        self._acks_after = 0
        #: the next rows of the queue wait for a commit that failed (disk full): until then, no refill
        self._disk_wait_until = 0.0
        self._disk_waiting = False
        will = None
        if config.notifications and not config.notifications_local_only:
            will = Will(config.state_topic, b"0", 1, True)
        password = config.remote_password.encode() if config.remote_password is not None else None
        self.session = UplinkSession(config.remote_id, config.protocol_level, config.cleansession,
                                     config.keepalive_interval, config.remote_username, password, will,
                                     config.try_private, config.max_inflight_messages, config.max_packet_size)
        self._tls_context = self._make_tls_context() if config.tls else None
        if summary[0]:
            self.on_disk = summary[0]
            self._refill()
        self.local = self.broker.attach_local(config.local_id, self._on_local, config.local_username,
                                              retain_as_published=True)
        if config.notifications:
            self.local.publish(config.state_topic, b"0", 1, True)
        for t in config.topics:
            if t.direction != "in":
                self.local.subscribe(t.local_topic, t.qos)
        if config.start_type == "lazy":
            self._retry_at = float("inf")  # connects once `threshold` messages wait

    def _make_tls_context(self) -> Any:
        from .tls import client_context  # only for a TLS bridge: ssl is large

        c = self.config
        return client_context(c.cafile, c.capath, c.certfile, c.keyfile, c.insecure, c.tls_version)

    def __repr__(self) -> str:
        return f"<bridge {self.name}>"

    # ---- logging ----------------------------------------------------------------------------------

    def _note(self, level: int, text: str, now: float, limited: bool = False) -> None:
        """A log line; `limited` ones (failures) at most once per LOG_INTERVAL."""
        if limited:
            if now - self._log_at < LOG_INTERVAL:
                self._log_skipped += 1
                return
            self._log_at = now
            if self._log_skipped:
                text += f" ({self._log_skipped} similar messages not logged)"
                self._log_skipped = 0
        self.log(level, text)

    # ---- the queue --------------------------------------------------------------------------------

    def _on_local(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """The core delivers a message for a bridge topic (inside its routing, inside the turn)."""
        c = self.config
        if self._remaps:
            topic = _remap(c.topics, topic, True)
        if not c.outgoing_retain:
            retain = False
        if qos == 0 and not c.queue_qos0_messages:
            if self.state == _UP:  # Mosquitto's way: sent when connected, dropped otherwise
                self.session.publish(topic, payload, 0, retain, None, self._now)
                self.sent += 1
            return
        size = len(topic.encode("utf-8")) + len(payload)
        # The quotas (_full's test) inline: a bridged stream passes here once per message.
        if self._dropping or self.count >= self._max_count or self.bytes + size > self._max_bytes:
            if not self._make_room(size):
                return
        seq = self._seq[0] = self._seq[0] + 1
        self.store.bridge_add(seq, self.name, topic, payload, qos, retain, qos > 0)
        self.count += 1
        self.bytes += size
        if self.on_disk or (self.memory_rows and len(self.head) >= self.memory_rows):
            self.on_disk += 1  # its row is the only copy; read back in order when the head runs low
        else:
            self.head.append((seq, topic, payload, qos, retain, size))
            self._mem_last = seq
        if self._dropping and self._episode_drops and not self._full(0):
            self._end_episode()

    def _full(self, size: int) -> bool:
        c = self.config
        return bool((c.max_queued_messages and self.count + 1 > c.max_queued_messages)
                    or (c.max_queued_bytes and self.bytes + size > c.max_queued_bytes))

    def _make_room(self, size: int) -> bool:
        """Apply the quotas before queuing `size` bytes: drop the oldest waiting messages, or refuse the
        new one (bridge_queue_drop newest, or when everything queued is in flight)."""
        if not self._full(size):
            if self._dropping:
                self._end_episode()
            return True
        c = self.config
        while self._full(size):
            if c.queue_drop == "newest" or not (self.head or self.on_disk):
                self._count_drop(None)
                return False
            if not self.head:
                self._refill()
                if not self.head:
                    self._count_drop(None)
                    return False
            self._count_drop(self.head.popleft())
        return True

    def _count_drop(self, entry: Optional[_Entry]) -> None:
        if entry is not None:
            self._forget(entry)
        self.dropped += 1
        self._episode_drops += 1
        self.broker.stats.publish_dropped += 1
        if not self._dropping:
            self._dropping = True
            c = self.config
            self.log(L.WARNING, f"Warning: bridge {self.name} queue full (bridge_max_queued_messages "
                                f"{c.max_queued_messages}, bridge_max_queued_bytes {c.max_queued_bytes}): "
                                f"dropping the {'new' if c.queue_drop == 'newest' else 'oldest'} messages.")

    def _forget(self, entry: _Entry) -> None:
        """A queued message leaves the queue unsent (dropped): its row and its counts."""
        self.store.bridge_remove(entry[_SEQ])
        self.count -= 1
        self.bytes -= entry[_SIZE]

    def _end_episode(self) -> None:
        self.log(L.WARNING, f"Warning: bridge {self.name} queue has room again; {self._episode_drops} messages "
                            "were dropped while it was full.")
        self._dropping = False
        self._episode_drops = 0

    def _refill(self) -> None:
        """Read the next rows that wait on disk only into memory, in order, as they come."""
        store = self.store
        if store.bridge_pending():
            now = self._now
            if now < self._disk_wait_until:
                return
            store.commit(now, force=True)  # rows added this turn must be readable
            if store.bridge_pending():
                # The commit failed (a full disk): the next rows are only in the store's buffer, so a
                # read would miss them. They are sent in order once a commit succeeds.
                self._disk_wait_until = now + DISK_RETRY
                if not self._disk_waiting:
                    self._disk_waiting = True
                    self.log(L.WARNING, f"Warning: bridge {self.name}: {self.on_disk} queued messages wait for "
                                        "the database to be writable again.")
                return
        if self._disk_waiting:
            self._disk_waiting = False
            self.log(L.NOTICE, f"Bridge {self.name}: the database is writable again; sending the rest of the queue.")
        head = self.head
        while self.on_disk and len(head) < max(READ_ROWS, self.memory_rows // 2):
            rows = store.bridge_rows(self.name, self._mem_last, READ_ROWS)
            if not rows:
                self.on_disk = 0
                break
            self._mem_last = rows[-1][_SEQ]
            if self._skip:
                rows = [row for row in rows if row[_SEQ] not in self._skip]
            head.extend(rows)
            self.on_disk -= len(rows)
        if self.on_disk < 0:
            self.on_disk = 0

    def _pump(self, now: float) -> None:
        """Fill the send window from the queue, in order, while the output backlog is small."""
        session = self.session
        head = self.head
        free = session.window - len(session.inflight)
        publish = session.publish
        while free > 0 and (head or self.on_disk):
            if len(self._backlog) + session.out_size > BACKLOG_LIMIT:
                break
            if not head:
                self._refill()
                if not head:
                    break
            entry = head.popleft()
            if entry[_QOS]:
                publish(entry[_TOPIC], entry[_PAYLOAD], entry[_QOS], entry[_RETAIN], entry, now)
                free -= 1
            else:
                publish(entry[_TOPIC], entry[_PAYLOAD], 0, entry[_RETAIN], None, now)
                self._acked(entry)  # QoS 0: done once written
            self._last_traffic = now

    def _acked(self, entry: Any) -> None:
        if entry is None:
            return  # a notification of ours, not a queued message
        self.store.bridge_remove(entry[_SEQ])
        self.count -= 1
        self.bytes -= entry[_SIZE]
        self.sent += 1

    def _acked_run(self, entries: List[Any]) -> None:
        """_acked for each of a read's acknowledgements (the commonest read: a run of PUBACKs)."""
        removed = [entry[_SEQ] for entry in entries if entry is not None]
        self.store.bridge_remove_all(removed)
        self.count -= len(removed)
        self.sent += len(removed)
        self.bytes -= sum([entry[_SIZE] for entry in entries if entry is not None])

    # ---- the connection ---------------------------------------------------------------------------

    def timer(self, now: float) -> float:
        """Every loop turn: connect when due, keepalive, send; returns when it next needs a turn."""
        self._now = now
        c = self.config
        if self.state == _IDLE:
            if c.start_type == "lazy" and self._retry_at == float("inf"):
                if self.count >= c.threshold:
                    self._retry_at = now
                else:
                    return float("inf")
            if now >= self._retry_at:
                self._start(now)
            else:
                return self._retry_at
        if self.state in (_RESOLVING, _CONNECTING):
            if now >= self._deadline:
                self._failed("connect timed out", now)
                return self._retry_at
            return self._deadline
        if self.state not in (_MQTT, _UP):
            return self._retry_at if self.state == _IDLE else float("inf")
        due, lost = self.session.tick(now)
        if lost is not None:
            self._failed(lost.reason, now)
            return self._retry_at
        if self.state == _UP:
            self._pump(now)
            if (c.start_type == "lazy" and not self.count and not self.session.inflight
                    and now - self._last_traffic >= c.idle_timeout):
                self._note(L.NOTICE, f"Bridge {self.name}: idle for {c.idle_timeout} s, disconnecting (lazy).", now)
                self.session.out.append(b"\xe0\x00")
                self._flush(now)
                self._close(now)
                self.state = _IDLE
                self._retry_at = float("inf")
                return float("inf")
            due = min(due, self._last_traffic + c.idle_timeout) if c.start_type == "lazy" else due
            if self._probe_at <= now and self._probe is None:
                self._start_probe(now)
            due = min(due, self._probe_at)
        self._flush(now)
        if self._acks_held and self.store.window:
            # The commit they wait for comes with the commit window: look again every tenth of it
            # rather than at every turn (a busy loop for the window's length).
            return min(due, now + self.store.window / 10)
        if self._acks_held or (self.state == _UP and self.session.window_free and self.head and not self._writing):
            return now  # more to send once this turn's output (or commit) is out
        if self._disk_waiting and self.state == _UP:
            return min(due, self._disk_wait_until)  # try the queue's next rows again
        return due

    def _start(self, now: float) -> None:
        host, port = self.config.addresses[self._address]
        self._gen += 1
        self._deadline = now + CONNECT_TIMEOUT
        infos = self._resolve(host, port, self._gen)
        if infos is None:
            self.state = _RESOLVING
            return
        self._infos = infos
        self._connect_next(now)

    def _resolve(self, host: str, port: int, gen: int) -> Optional[List[Tuple]]:
        """The address of a literal host at once; None for a host name, whose getaddrinfo (which
        blocks) runs on a thread of its own and comes back as (gen, result) through the loop's wake."""
        family = literal_family(host)
        if family == _socket.AF_INET:
            return [(_socket.AF_INET, _socket.SOCK_STREAM, 0, "", (host, port))]
        if family == _socket.AF_INET6:
            return [(_socket.AF_INET6, _socket.SOCK_STREAM, 0, "", (host, port, 0, 0))]
        results, wake = self._results, self.server.wake

        def lookup() -> None:
            results.append((gen, _getaddrinfo(host, port)))
            wake()

        _thread.start_new_thread(lookup, ())  # a daemon thread: never waited for at exit
        return None

    def on_wake(self, now: float) -> None:
        """A lookup finished (on the loop's thread)."""
        results = self._results
        while results:
            gen, result = results.popleft()
            if gen == -self._gen and self.state == _UP:  # the primary's address, for a probe
                self._probe_resolved(result, now)
                continue
            if gen != self._gen or self.state != _RESOLVING:
                continue  # an old lookup
            if isinstance(result, BaseException):
                self._failed(f"cannot resolve {self.config.addresses[self._address][0]}: {result}", now)
                continue
            self._infos = list(result)
            self._connect_next(now)

    def _connect_next(self, now: float) -> None:
        """Start a non-blocking connect to the next resolved address; the loop says when it is done."""
        while self._infos:
            family, kind, proto, _, address = self._infos.pop(0)
            sock = _socket.socket(family, kind, proto)
            sock.setblocking(False)
            err = sock.connect_ex(address)
            if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
                self._sock = sock
                self.state = _CONNECTING
                self.server.add_writer(sock, self._on_connect_done)
                return
            sock.close()
            self.last_error = errno.errorcode.get(err, str(err))
        self._failed(f"connect failed ({self.last_error or 'no address'})", now)

    def _on_connect_done(self, now: float) -> None:
        sock = self._sock
        if sock is None or self.state != _CONNECTING:
            return
        err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        self.server.remove_writer(sock)
        if err:
            sock.close()
            self._sock = None
            self.last_error = errno.errorcode.get(err, str(err))
            if self._infos:
                self._connect_next(now)
            else:
                self._failed(f"connect failed: {os.strerror(err)}", now)
            return
        try:
            sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.add_reader(sock, self._on_readable)
        if self._tls_context is not None:
            from .tls import TlsEngine

            host = self.config.addresses[self._address][0]
            alpn = [self.config.alpn] if self.config.alpn else None
            self._tls = TlsEngine.client(self._tls_context, host, alpn)
        self.state = _MQTT
        self._last_traffic = now
        self.session.connect(now)
        self._flush(now)

    def _on_readable(self, now: float) -> None:
        self._now = now
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._failed(f"socket error: {exc.strerror or exc}", now)
            return
        if not data:
            self._failed("connection closed by the remote", now)
            return
        if self._tls is not None:
            from .tls import TlsError

            try:
                data = self._tls.feed(data)
            except TlsError as exc:
                self._flush(now)
                self._failed(str(exc), now)
                return
            if not data:
                self._flush(now)  # handshake records
                if self._tls.peer_closed:
                    self._failed("TLS connection closed by the remote", now)
                return
        session = self.session
        tokens = session.acked_tokens(data, now)
        if tokens is not None:  # a read of PUBACKs only: the commonest, in a stream
            self._acked_run(tokens)
            return
        for event in session.data_received(data, now):
            kind = type(event)
            if kind is Acked:
                self._acked(event.token)  # type: ignore[attr-defined]
            elif kind is Received:
                self._on_remote(event, now)  # type: ignore[arg-type]
            elif kind is Connected:
                self._connected(event, now)  # type: ignore[arg-type]
            elif kind is Refused:
                code = event.return_code  # type: ignore[attr-defined]
                if event.retry_plain:  # type: ignore[attr-defined]
                    self._note(L.NOTICE, f"Bridge {self.name}: the remote refused the bridge protocol level "
                                         "(try_private); connecting again without it.", now)
                    self._close(now)
                    self.state = _IDLE
                    self._retry_at = now
                    return
                self._failed(f"connection refused (CONNACK {code})", now)
                return
            elif kind is Lost:
                self._failed(event.reason, now)  # type: ignore[attr-defined]
                return
            elif kind is Subscribed:
                codes = event.return_codes  # type: ignore[attr-defined]
                if 0x80 in codes:
                    self._note(L.WARNING, f"Warning: bridge {self.name}: the remote refused a subscription.", now)
        # Acknowledgements free the window: the timer, which runs after every read of this turn, refills
        # it and writes once, so the publishers' input read in the same turn goes out in the same send.

    # ---- back to the primary address -------------------------------------------------------------

    def _start_probe(self, now: float) -> None:
        """Try the primary address (a TCP connect only) while connected to a fallback."""
        host, port = self.config.addresses[0]
        self._probe_at = now + PRIMARY_RETRY  # the next try, unless this one succeeds
        infos = self._resolve(host, port, -self._gen)  # a negative gen marks the probe's answer
        if infos is not None:
            self._probe_resolved(infos, now)

    def _probe_resolved(self, result: Any, now: float) -> None:
        if isinstance(result, BaseException) or not result or self._probe is not None:
            return
        family, kind, proto, _, address = result[0]
        sock = _socket.socket(family, kind, proto)
        sock.setblocking(False)
        if sock.connect_ex(address) not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            sock.close()
            return
        self._probe = sock
        self.server.add_writer(sock, self._probe_done)

    def _probe_done(self, now: float) -> None:
        sock = self._probe
        if sock is None:
            return
        err = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        self._end_probe()
        if err or self.state != _UP:
            return
        host, port = self.config.addresses[0]
        self._note(L.NOTICE, f"Bridge {self.name}: the primary address {host}:{port} answers again; "
                             "reconnecting to it.", now)
        self.session.out.append(b"\xe0\x00")  # DISCONNECT: the remote drops our will
        self._flush(now)
        self._close(now)
        if self.config.notifications:
            self.local.publish(self.config.state_topic, b"0", 1, True)
        self._address = 0
        self.state = _IDLE
        self._retry_at = now

    def _end_probe(self) -> None:
        sock = self._probe
        if sock is not None:
            self._probe = None
            self.server.remove_writer(sock)
            sock.close()

    def _on_remote(self, event: Received, now: float) -> None:
        """A message from the remote: remapped and published locally (never back out: no-local)."""
        self.received += 1
        self._last_traffic = now
        if event.qos:
            self._acks_held = True
            self._acks_after = self.store.commits
        topic = _remap(self.config.topics, event.topic, False) if self._remaps else event.topic
        try:
            self.local.publish(topic, event.payload, event.qos, event.retain)
        except ValueError as exc:
            self._note(L.WARNING, f"Warning: bridge {self.name}: message from the remote dropped: {exc}", now)

    def _connected(self, event: Connected, now: float) -> None:
        c = self.config
        self.state = _UP
        self.connects += 1
        self._sleep = c.restart_timeout
        host, port = c.addresses[self._address]
        self._note(L.NOTICE, f"Bridge {self.name} connected to {host}:{port}"
                             f"{' (bridge protocol)' if self.session.private else ''}.", now)
        self.last_error = ""
        self._log_at = -LOG_INTERVAL  # the next failure is logged at once
        if self._address and not c.round_robin:
            self._probe_at = now + PRIMARY_RETRY
        session = self.session
        session.resend(now)  # what was in flight when the last connection ended, first, in order
        subs = [(t.remote_topic, t.qos) for t in c.topics if t.direction != "out"]
        if subs:
            session.subscribe(subs, now)
        if c.attempt_unsubscribe:
            outs = [t.remote_topic for t in c.topics if t.direction == "out"]
            if outs:
                session.unsubscribe(outs, now)
        if c.notifications:
            if not c.notifications_local_only:
                session.publish(c.state_topic, b"1", 1, True, None, now)
            self.local.publish(c.state_topic, b"1", 1, True)
        self._pump(now)

    def _failed(self, reason: str, now: float) -> None:
        """The attempt or the connection ended: close, and schedule the next attempt."""
        was_up = self.state == _UP
        was_private = self.session.private
        self._close(now)  # a close before any CONNACK to a private CONNECT turns try_private off
        if was_private and not self.session.private:
            self._note(L.NOTICE, f"Bridge {self.name}: {reason} after a bridge CONNECT (try_private); "
                                 "connecting again without it.", now)
            self.state = _IDLE
            self._retry_at = now
            return
        self.last_error = reason
        c = self.config
        if was_up and c.notifications:
            self.local.publish(c.state_topic, b"0", 1, True)
        if c.start_type == "once":
            self.state = _STOPPED
            self._note(L.NOTICE, f"Bridge {self.name}: {reason}; start_type once: not reconnecting.", now)
            return
        n = len(c.addresses)
        if n > 1:
            self._address = 0 if (was_up and not c.round_robin) else (self._address + 1) % n
        if c.restart_timeout_cap is None:
            wait = c.restart_timeout
        else:  # decorrelated jitter (Mosquitto 2.0's restart_timeout BASE CAP)
            self._sleep = min(c.restart_timeout_cap, _uniform(c.restart_timeout, self._sleep * 3))
            wait = self._sleep
        if was_up:
            wait = min(wait, c.restart_timeout)  # a link that was up comes back quickly first
        self.state = _IDLE
        self._retry_at = now + wait
        self._note(L.NOTICE, f"Bridge {self.name}: {reason}; next attempt in {wait:.1f} s.", now,
                   limited=not was_up)

    def _close(self, now: float) -> None:
        sock = self._sock
        self._gen += 1
        if sock is not None:
            self.server.remove_reader(sock)
            self.server.remove_writer(sock)
            try:
                sock.close()
            except OSError:
                pass
        self._sock = None
        self._tls = None
        self._backlog = b""
        self._writing = False
        self._acks_held = False
        self._end_probe()
        self._probe_at = float("inf")
        self.session.connection_lost()

    def _holding(self) -> bool:
        """The session's output includes acknowledgements of messages from the remote whose local
        delivery (rows of persistent sessions, retained) is not committed yet: it waits for the turn's
        commit, as a network publisher's PUBACK does."""
        if self._acks_held:
            store = self.store
            if store.commits == self._acks_after and store.pending_durable():
                return True
            self._acks_held = False
        return False

    def _flush(self, now: float) -> None:
        sock = self._sock
        if sock is None:
            self.session.take_output()
            return
        if self.session.out and not self._holding():
            data = self.session.take_output()
            if self._tls is not None:
                self._tls.write(data)
            else:
                self._backlog += data
        if self._tls is not None:
            self._backlog += self._tls.data_to_send()
        if not self._backlog:
            return
        try:
            sent = sock.send(self._backlog)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._failed(f"socket error: {exc.strerror or exc}", now)
            return
        self._backlog = self._backlog[sent:]
        if self._backlog and not self._writing:
            self._writing = True
            self.server.add_writer(sock, self._on_writable)
        elif not self._backlog and self._writing:
            self._writing = False
            self.server.remove_writer(sock)

    def _on_writable(self, now: float) -> None:
        self._flush(now)
        if self.state == _UP and not self._writing:
            self._pump(now)
            self._flush(now)

    # ---- the service ------------------------------------------------------------------------------

    def stop(self) -> None:
        """At exit: a clean DISCONNECT (the remote then drops our will: the state topic goes to 0 only
        by our own notification, as in Mosquitto) and the local state 0."""
        if self.state == _UP:
            self.session.out.append(b"\xe0\x00")
            self._flush(self._now)
        if self.config.notifications:
            self.local.publish(self.config.state_topic, b"0", 1, True)
        self._close(self._now)
        self.state = _STOPPED

    def sys_values(self) -> Dict[str, str]:
        base = f"$SYS/broker/connection/{self.config.remote_id}/"
        return {base + "queue/messages": str(self.count), base + "queue/bytes": str(self.bytes),
                base + "messages/dropped": str(self.dropped), base + "messages/sent": str(self.sent),
                base + "messages/received": str(self.received), base + "queue/damaged": str(self.damaged),
                base + "last_error": self.last_error or "none", base + "connects": str(self.connects)}


class _Bridges:
    """The server's service for all bridges: stop at exit, refuse a changed bridge on SIGHUP."""

    def __init__(self, bridges: List[Bridge]) -> None:
        self.bridges = bridges

    def __repr__(self) -> str:
        return "the bridges"

    def stop(self) -> None:
        for b in self.bridges:
            b.stop()

    def reload(self, config: Any) -> None:
        # Mosquitto ignores bridge changes on reload; we say so instead of silently keeping the old ones.
        running = tuple(b.config for b in self.bridges)
        if tuple(config.bridges) != running:
            raise ValueError("bridge changes take effect after a restart; the running bridges are kept")

    def sys_values(self) -> Dict[str, str]:
        values: Dict[str, str] = {}
        for b in self.bridges:
            values.update(b.sys_values())
        return values


def start_bridges(server: Any, now: float) -> List[Bridge]:
    """Create the configured bridges in `server`'s loop (called by the server at start-up)."""
    store = server.broker.store
    # Rows that cannot be messages (a damaged database; the rows this process writes come from messages
    # the core accepted) are looked for once, here, and deleted, never sent: the rows read back later
    # need no check of their own (bench/README.md, "Issue 19: a bridged message's CPU").
    summary = store.bridge_summary()
    names = {b.name for b in server.config.bridges}
    damaged = []
    for name, seq, size in store.bridge_damaged():
        if name in names:
            damaged.append((name, seq))
            count, total = summary[name]
            summary[name] = (count - 1, total - size)
    if damaged:
        store.bridge_remove_all([seq for _, seq in damaged])
        store.commit(now, force=True)
    seq = [store.bridge_max_seq()]
    bridges = [Bridge(server, b, seq, summary.get(b.name, (0, 0)), now,
                      tuple(row for name, row in damaged if name == b.name)) for b in server.config.bridges]
    service = _Bridges(bridges)
    for b in bridges:
        server.add_timer(b.timer)
        server.add_wake_handler(b.on_wake)
    server.add_service(service)
    server.broker.sys_providers.append(service.sys_values)
    return bridges
