"""SQLite persistence: what must survive a crash or a power cut, written once per loop turn.

Theory of operation: the core calls the small methods below as state changes (retained set or
cleared, persistent session created, subscription added, message queued for / sent to / acknowledged
by a persistent session, inbound QoS 2 id recorded or released). Each call only appends a statement
to a list (a delivery acknowledged before its INSERT ran cancels that INSERT instead).

A message is stored once however many persistent sessions it goes to, as Mosquitto's store keeps one
copy with reference counts: a message with one delivery in a commit keeps its topic and payload in the
delivery's row (one B-tree page per message in a sensor's trickle); a second delivery of the same
message in the same commit moves it into a row of its own in `messages`, which both deliveries then
reference by `msg_id` (the first delivery's pending INSERT is rewritten). The store counts the
references in memory (`_refs`, rebuilt at load) and deletes the message's row with the last delivery.
The core marks each Message with `store_id` (0: no row of its own; > 0: its `messages` row; -1: its
copy is committed in a delivery's row, so later deliveries carry copies of their own, which only a
retained message sent on later subscriptions meets).

The interface the core calls (and a new table's owner should follow): `load()` once at start-up; the
change methods (`retained_*`, `session_*`, `subscription_*`, `delivery_*`, `inbound_*`), which only
buffer; `hold_until(now)`, `wake_at(now)` and `commit(now)` from the loop; `close()`; the counters
`commits` and `errors` for $SYS; `waiting` and `settled()` for the commit window. A change that an
acknowledgement of ours waits on sets `_urgent` (committed in the loop turn that made it), or, when the
commit window may hold it, counts in `waiting`; one nothing waits on (forgetting an acknowledged
delivery) does neither.

The commit window (`commit_window_ms`, "crash" and "sync"): a change the window may hold (a message
for a persistent session, retained set or cleared, an inbound QoS 2 id) is committed when the oldest
such change is commit_window old, or as soon as COMMIT_BATCH of them wait; the core holds the
acknowledgements sent meanwhile (PUBACK, PUBREC, PUBREL, PUBCOMP) until `settled()`. A delivery
acknowledged by its subscriber within the window cancels its INSERT and leaves `waiting`, so a message
that an online subscriber has taken before the window closes costs no write at all, and its publisher's
PUBACK leaves as soon as nothing else waits. Changes of sessions and subscriptions (CONNECT, SUBSCRIBE,
UNSUBSCRIBE), QoS 2 deliveries and a delivery's new packet id or PUBREL state are not held: they are
committed in their own loop turn, before any of that turn's output leaves, as with no window. `commit(now)`
runs the list in order, consecutive identical statements batched with executemany, inside one
transaction, and commits it: for durability "crash" and "sync" in the loop turn whose acknowledgements
wait on it, before the loop flushes them (group commit), later for changes nothing waits on (see
DEFER_MAX_AGE); every autosave_interval for "periodic". Clean sessions and QoS 0 traffic never reach
this module.

Durability levels: "sync" = WAL + synchronous=FULL (each commit fsynced: survives power loss);
"crash" = WAL + synchronous=NORMAL (survives kill -9 and crashes; after a power loss the database is
consistent and may lack the last commits); "periodic" = commits every autosave_interval seconds (or
changes, with autosave_on_changes), Mosquitto's model: fewest writes, bounded loss window.

The schema is versioned with PRAGMA user_version; sqlite-utils creates and migrates it, and lets a
user inspect the file: `sqlite-utils tables edgebroker.db`. Migrations run in a short-lived child
process (`python -m edgebroker.store migrate FILE`): importing sqlite-utils costs ~20 MiB of RSS that
the broker would otherwise keep for its whole life, which matters on a Pi Zero.
"""
from __future__ import annotations

import os
import sys
import time
from itertools import chain

from . import log as L
from . import standins
from .errors import StoreError
from .packets import queue_meta, unpack_meta

TYPE_CHECKING = False
if TYPE_CHECKING:
    import sqlite3  # at run time by _import_sqlite3(): the same classes, from _sqlite3
    from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple
else:
    from .record import NamedTuple

__all__ = ["SqliteStore", "NullStore", "StoreError", "Loaded", "SCHEMA_VERSION", "MIGRATIONS"]

#: Statements buffered while commits fail (disk full); past it they are dropped and the loss is logged,
#: so a full disk cannot also exhaust memory.
MAX_PENDING_OPS = 200_000
#: Seconds between retries of a failed commit.
RETRY_INTERVAL = 1.0
#: With durability "periodic", statements buffered before a save happens early: bounds the memory a
#: busy broker holds between saves (~20,000 statements is a few MiB and still thousands of messages
#: per commit).
PERIODIC_MAX_OPS = 20_000
#: With durability "periodic", the buffer is compacted (its cancelled entries dropped) once it holds
#: this many entries, half of them or more cancelled: a persistent subscriber that acknowledges each
#: message before the save cancels its delivery's INSERT, which leaves an empty slot per message until
#: the save (up to PERIODIC_MAX_OPS of them, about 160 KB, which then brought the save early).
COMPACT_AT = 4096
#: Group commit for "crash" and "sync" (with or without a commit window, for the changes committed in
#: their own turn): while more input is already waiting, the loop handles it before committing, for up to this long after the previous commit, holding the turn's output
#: (acknowledgements included) with the commit. Nothing waits when no input is pending; under a
#: continuous load it turns about one WAL page per message into one per commit of many messages.
GROUP_COMMIT_WAIT = 0.005
#: Commit window: changes it holds are committed once this many wait, however young: enough rows to fill
#: a few pages, so a longer wait would save little per message, while a pipelining publisher (paho and
#: mosquitto_pub keep 20 messages in flight) is not held back by the window.
COMMIT_BATCH = 16
#: Deferred changes ("crash" and "sync"): forgetting a delivery the client acknowledged, or noting when
#: a session went offline, gates no acknowledgement of ours, so no commit happens for them alone. They
#: ride with the next commit that something waits on, or are committed once the oldest is this old, or
#: once this many are buffered. Not when the loop goes quiet: a gateway's traffic is a trickle with a
#: quiet loop between messages, and a commit of its own for each acknowledgement doubled the WAL pages
#: written per message (docs/persistence.md, bench S9t), the writes an SD card wears out on. A crash in
#: between only means a QoS 1 message acknowledged by its subscriber in the last second is sent again
#: after the restart (with DUP set), which QoS 1 allows; a QoS 2 delivery is then finished with PUBREL,
#: never resent.
DEFER_MAX_AGE = 1.0
DEFER_MAX_OPS = 20_000
#: Page size of new databases: SQLite's smallest. A commit appends every page it changed to the WAL, and
#: a sensor's trickle is one commit per message changing one leaf page, so the page is what a message
#: costs the SD card: measured (bench S9t and a trickle into an offline queue) 0.5 KiB per message
#: against 1.0 with 1 KiB pages. Fast bursts of queued messages pay for it: about 18 % more bytes than
#: with 1 KiB pages (bench S9q), in twice the write calls (one per WAL page), a few percent of their
#: throughput. Existing databases keep their page size.
PAGE_SIZE = 512
#: SQLite's page cache per connection, KiB (see _open).
CACHE_KIB = 128


def _run_child(argv: List[str]) -> Tuple[int, str]:
    """Run argv to its end, its output discarded: its exit status and what it wrote to stderr. Not
    `subprocess`, which would stay imported for the broker's life with shutil, bz2 and lzma (1.1 MiB
    of resident memory on a first start, bench/README.md "Issue 19")."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, write_end, 2)])
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    with open(read_end, "rb") as errors:
        text = errors.read()  # to its end: the child has exited, or closed its stderr
    status = os.waitpid(pid, 0)[1]
    return os.waitstatus_to_exitcode(status), text.decode("utf-8", "replace")


class Loaded(NamedTuple):
    retained: List[Tuple[str, bytes, int]]
    #: (client_id, seconds offline or None when the broker stopped while it was connected)
    sessions: List[Tuple[str, Optional[float]]]
    subscriptions: List[Tuple[str, str, int]]
    #: (seq, client_id, topic, payload, qos, retain, packet_id or None, state, msg_id or None) in seq
    #: order; state is one of session.INFLIGHT_SENT, INFLIGHT_RELEASED, QUEUED. A delivery with a msg_id
    #: has topic, payload and retain None: its message is in `messages`, shared with other deliveries,
    #: and the core sets that message's `store_id` to msg_id (else to -1, see the module's docstring).
    deliveries: List[Tuple[int, str, Optional[str], Optional[bytes], int, Optional[int], Optional[int], int,
                           Optional[int]]]
    #: (client_id, packet_id, topic, payload, retain): an inbound QoS 2 message held until its PUBREL;
    #: topic None when there is nothing to release (discarded, or delivered by a version before 6)
    inbound_qos2: List[Tuple[str, int, Optional[str], Optional[bytes], Optional[int]]]
    #: msg_id -> (topic, payload, qos, retain) of the messages stored once for several deliveries
    messages: Dict[int, Tuple[str, bytes, int, int]]


def _migrate_1(db) -> None:  # type: ignore[no-untyped-def]
    db["retained"].create({"topic": str, "payload": bytes, "qos": int}, pk="topic", if_not_exists=True)
    db["sessions"].create({"client_id": str}, pk="client_id", if_not_exists=True)
    db["subscriptions"].create({"client_id": str, "topic_filter": str, "qos": int},
                               pk=("client_id", "topic_filter"), if_not_exists=True)
    db["deliveries"].create({"seq": int, "client_id": str, "topic": str, "payload": bytes, "qos": int,
                             "retain": int, "packet_id": int, "state": int}, pk="seq", if_not_exists=True)
    db["deliveries"].create_index(["client_id", "seq"], if_not_exists=True)
    db["inbound_qos2"].create({"client_id": str, "packet_id": int}, pk=("client_id", "packet_id"),
                              if_not_exists=True)


def _migrate_2(db) -> None:  # type: ignore[no-untyped-def]
    # When a persistent session went offline (wall-clock seconds), for persistent_client_expiration
    # across restarts; NULL while its client is connected.
    if "disconnected_at" not in db["sessions"].columns_dict:
        db["sessions"].add_column("disconnected_at", float)


def _migrate_3(db) -> None:  # type: ignore[no-untyped-def]
    # Every delivery insert and delete touched this index's B-tree too: one more WAL page per commit.
    # Its only use, deleting a whole session, is rare and can scan.
    db.execute("DROP INDEX IF EXISTS idx_deliveries_client_id_seq")


def _migrate_4(db) -> None:  # type: ignore[no-untyped-def]
    # No change of tables: from version 4 a queued delivery may carry its packet id (assigned when it is
    # queued, so sending it writes nothing) with state 2 (queued). An older edgebroker would take such a
    # row for a PUBREL in flight, so the version goes up and an older one refuses the file.
    pass


def _migrate_5(db) -> None:  # type: ignore[no-untyped-def]
    # A message delivered to several persistent sessions is stored once, in `messages`; its deliveries
    # reference it by msg_id and leave topic, payload and retain NULL. A delivery with msg_id NULL keeps
    # its own copy (every row of older versions). 1,000 offline sessions on one filter wrote each
    # payload 1,000 times: 149 MB for 82 KB of messages.
    db["messages"].create({"id": int, "topic": str, "payload": bytes, "qos": int, "retain": int}, pk="id",
                          if_not_exists=True)
    if "msg_id" not in db["deliveries"].columns_dict:
        db["deliveries"].add_column("msg_id", int)
    # Copies already stored: rows with the same topic, payload and retain flag share one message row
    # (two messages with equal contents are interchangeable on the wire). Two passes over the rows,
    # the second only when there is something to share; payloads are compared by digest to keep the
    # child's memory small.
    import hashlib

    conn = db.conn
    rows = "SELECT seq, topic, payload, qos, retain FROM deliveries WHERE msg_id IS NULL AND payload IS NOT NULL"
    count: Dict[tuple, int] = {}
    for _, topic, payload, _, retain in conn.execute(rows):
        key = (topic, retain, hashlib.sha256(payload).digest())
        count[key] = count.get(key, 0) + 1
    shared = {key for key, n in count.items() if n > 1}
    if not shared:
        return
    ids: Dict[tuple, int] = {}
    next_id = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
    for seq, topic, payload, qos, retain in list(conn.execute(rows)):
        key = (topic, retain, hashlib.sha256(payload).digest())
        if key not in shared:
            continue
        msg_id = ids.get(key)
        if msg_id is None:
            next_id += 1
            msg_id = ids[key] = next_id
            conn.execute("INSERT INTO messages (id, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)",
                         (msg_id, topic, payload, qos, retain))
        conn.execute("UPDATE deliveries SET msg_id = ?, topic = NULL, payload = NULL, retain = NULL "
                     "WHERE seq = ?", (msg_id, seq))


def _migrate_6(db) -> None:  # type: ignore[no-untyped-def]
    # The bridges' store-and-forward queue (edgebroker/bridge.py): what waits for a remote broker, in
    # order (seq), one row per message. No index beyond the key: every index is one more page written
    # per message, and a gateway has one or two bridges.
    db["bridge_queue"].create({"seq": int, "bridge": str, "topic": str, "payload": bytes, "qos": int,
                               "retain": int}, pk="seq", if_not_exists=True)


def _migrate_7(db) -> None:  # type: ignore[no-untyped-def]
    # An inbound QoS 2 message is released to subscribers at its PUBREL (Mosquitto's order), so until
    # then its row carries it: the PUBREC promised it, a restart must not lose it. Rows of older
    # versions keep NULL there: their message was delivered when it arrived, nothing is left to release.
    columns = db["inbound_qos2"].columns_dict
    for name, kind in (("topic", str), ("payload", bytes), ("retain", int)):
        if name not in columns:
            db["inbound_qos2"].add_column(name, kind)


#: MIGRATIONS[i] brings a database from schema version i to i + 1. Each is idempotent, so a migration
#: interrupted by a crash simply runs again.
MIGRATIONS: List[Callable] = [_migrate_1, _migrate_2, _migrate_3, _migrate_4, _migrate_5, _migrate_6,
                              _migrate_7]
SCHEMA_VERSION = len(MIGRATIONS)

_INS_RETAINED = "INSERT OR REPLACE INTO retained (topic, payload, qos) VALUES (?, ?, ?)"
_DEL_RETAINED = "DELETE FROM retained WHERE topic = ?"
_SESSION_ONLINE = "INSERT OR REPLACE INTO sessions (client_id, disconnected_at) VALUES (?, NULL)"
_SESSION_OFFLINE = "UPDATE sessions SET disconnected_at = ? WHERE client_id = ?"
_DEL_SESSION = ("DELETE FROM sessions WHERE client_id = ?", "DELETE FROM subscriptions WHERE client_id = ?",
                "DELETE FROM deliveries WHERE client_id = ?", "DELETE FROM inbound_qos2 WHERE client_id = ?")
_INS_SUB = "INSERT OR REPLACE INTO subscriptions (client_id, topic_filter, qos) VALUES (?, ?, ?)"
_DEL_SUB = "DELETE FROM subscriptions WHERE client_id = ? AND topic_filter = ?"
_INS_DELIVERY = ("INSERT INTO deliveries (seq, client_id, topic, payload, qos, retain, packet_id, state) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
#: The buffered form of an _INS_DELIVERY (a delivery with its own copy of the message): (_OWN, client_id,
#: message, meta, state), its row made at commit; meta is the delivery's (QoS, seq, packet id) packed as
#: packets.queue_meta packs them, the very int the session's queue holds beside a queued message. A
#: buffer of thousands (durability periodic) costs about 120 bytes per queued delivery this way, against
#: 430 as a row tuple with a dict entry to find it again.
_OWN = "own copy"
_INS_DELIVERY_REF = ("INSERT INTO deliveries (seq, client_id, msg_id, qos, packet_id, state) "
                     "VALUES (?, ?, ?, ?, ?, ?)")
_INS_MESSAGE = "INSERT INTO messages (id, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?)"
_DEL_MESSAGE = "DELETE FROM messages WHERE id = ?"
_UPD_DELIVERY = "UPDATE deliveries SET packet_id = ?, state = ? WHERE seq = ?"
_DEL_DELIVERY = "DELETE FROM deliveries WHERE seq = ?"
_INS_BRIDGE = "INSERT INTO bridge_queue (seq, bridge, topic, payload, qos, retain) VALUES (?, ?, ?, ?, ?, ?)"
#: Statements of that many bridge rows each (_insert_bridge_rows). Each, once prepared, stays in the
#: driver's statement cache for the broker's life: 4.4 KB of SQLite's memory for 4 rows, 12.2 KB for 16,
#: 47.5 KB for 64, which B1's peak showed (+50-80 KiB of growth); by 16 a row costs about 500
#: instructions more than by 64 (bench/README.md, "Issue 19: a bridged message's CPU").
_INS_BRIDGE_SIZES = (16, 4)
_INS_BRIDGE_MANY = {k: _INS_BRIDGE + ", (?, ?, ?, ?, ?, ?)" * (k - 1) for k in _INS_BRIDGE_SIZES}
#: A run of consecutive seqs (a remote acknowledges in order): one buffered entry, [first, last], for a
#: whole drain instead of one per row (90 bytes each, up to DEFER_MAX_OPS of them for a second).
_DEL_BRIDGE = "DELETE FROM bridge_queue WHERE seq BETWEEN ? AND ?"
#: A bridge's rows in order, each with its size (bridge_rows): bridge.py's queue holds them as they come.
_BRIDGE_ROWS = ("SELECT seq, topic, payload, qos, retain, length(CAST(topic AS BLOB)) + length(payload) "
                "FROM bridge_queue WHERE bridge = ? AND seq > ? ORDER BY seq LIMIT ?")
#: The rows that cannot be messages (bridge_damaged): a topic that is not a non-empty text without
#: wildcards, a payload that is not a blob, a QoS or retain flag out of range.
_BRIDGE_DAMAGED = ("SELECT bridge, seq, coalesce(length(CAST(topic AS BLOB)) + length(payload), 0) "
                   "FROM bridge_queue WHERE CASE WHEN typeof(topic) = 'text' AND topic <> '' "
                   "AND instr(topic, '+') = 0 AND instr(topic, '#') = 0 AND typeof(payload) = 'blob' "
                   "AND qos IN (0, 1, 2) AND retain IN (0, 1) THEN 0 ELSE 1 END ORDER BY seq")
_INS_INBOUND = ("INSERT OR REPLACE INTO inbound_qos2 (client_id, packet_id, topic, payload, retain) "
                "VALUES (?, ?, ?, ?, ?)")
_DEL_INBOUND = "DELETE FROM inbound_qos2 WHERE client_id = ? AND packet_id = ?"


class NullStore:
    """persistence false: nothing is written, nothing survives a restart."""

    path = None
    errors = 0   # failed commits, for $SYS
    commits = 0
    #: commit window in seconds (0: none) and the changes it holds (see the module's docstring)
    window = 0.0
    waiting = 0
    #: the changes not yet committed (never replaced, cleared in place): while it is empty the loop
    #: skips the per-turn calls below (hold_until, commit, wake_at), which would have nothing to do
    buffered: Sequence = ()

    def load(self) -> Loaded:
        return Loaded([], [], [], [], [], {})

    def retained_set(self, topic: str, payload: bytes, qos: int) -> None:
        pass

    def retained_clear(self, topic: str) -> None:
        pass

    def session_online(self, client_id: str) -> None:
        pass

    def session_offline(self, client_id: str) -> None:
        pass

    def session_remove(self, client_id: str, messages: Iterable = ()) -> None:
        """The session and all its rows go; `messages`: the Message of each of its deliveries."""
        pass

    def subscription_add(self, client_id: str, topic_filter: str, qos: int) -> None:
        pass

    def subscription_remove(self, client_id: str, topic_filter: str) -> None:
        pass

    def delivery_add(self, seq: int, client_id: str, msg, qos: int, packet_id: Optional[int],  # type: ignore[no-untyped-def]
                     state: int, meta: Optional[int] = None) -> None:
        """A delivery of `msg` (a session.Message: topic, payload, qos, retain, store_id) at `qos`. meta:
        queue_meta(msg, qos, seq, packet id) when the caller has it (a queued delivery), to share."""
        pass

    def delivery_update(self, seq: int, packet_id: Optional[int], state: int, deferred: bool = False) -> None:
        pass

    def delivery_remove(self, seq: int, msg) -> None:  # type: ignore[no-untyped-def]
        pass

    def inbound_add(self, client_id: str, packet_id: int, topic: Optional[str] = None,
                    payload: Optional[bytes] = None, retain: bool = False) -> None:
        pass

    def inbound_remove(self, client_id: str, packet_id: int) -> None:
        pass

    # The bridges' queue (edgebroker/bridge.py). seq is the bridges' own sequence, not a delivery's.
    def bridge_add(self, seq: int, bridge: str, topic: str, payload: bytes, qos: int, retain: bool,
                   urgent: bool = True) -> None:
        pass

    def bridge_remove(self, seq: int) -> None:
        pass

    def bridge_remove_all(self, seqs: List[int]) -> None:
        """bridge_remove of each, in order (a remote's read of acknowledgements)."""
        pass

    def bridge_pending(self) -> bool:
        """Bridge rows added but not yet committed (a read of the table would miss them)."""
        return False

    def bridge_summary(self) -> Dict[str, Tuple[int, int]]:
        """bridge name -> (rows, bytes of topics and payloads)."""
        return {}

    def bridge_max_seq(self) -> int:
        return 0

    def bridge_rows(self, bridge: str, after: int, limit: int) -> List[Tuple]:
        """Up to `limit` rows (seq, topic, payload, qos, retain, size) of `bridge` with seq > after, in
        order; size: bytes of topic and payload."""
        return []

    def bridge_damaged(self) -> List[Tuple[str, int, int]]:
        """(bridge, seq, bytes) of the rows that cannot be messages (a damaged database), in order;
        bytes: what bridge_summary counted of each."""
        return []

    def pending_durable(self) -> bool:
        """Changes an acknowledgement would depend on are not yet committed (a bridge holds its
        acknowledgements to the remote until then)."""
        return False

    def hold_until(self, now: float) -> float:
        return now

    def settled(self) -> bool:
        return True

    def output_waits(self) -> bool:
        """Output written now may depend on changes not yet committed (it must wait for end_turn)."""
        return False

    def wake_at(self, now: float) -> float:
        return float("inf")

    def commit(self, now: float, force: bool = False) -> None:
        pass

    def close(self) -> None:
        pass


def _import_sqlite3() -> None:
    """The SQLite driver (with libsqlite3, about 1 MiB of resident memory) comes with the first
    SqliteStore: a broker with persistence false never loads it. It is `_sqlite3`, the C module whose
    connect(), Connection and exceptions the sqlite3 package re-exports as they are (3.9 and 3.11 checked),
    without sqlite3.dbapi2, which imports datetime (0.4 MiB) to register default adapters for dates
    and converters for `detect_types`: the store binds only ints, floats, text and bytes, and parses
    no declared types (bench/README.md, Issue 19). From Python 3.11 `_sqlite3` imports functools at
    its import, for its statement cache's lru_cache: it gets standins.lru_cache, the same C cache,
    without functools and the collections package (0.5 MiB; edgebroker/standins.py)."""
    global sqlite3
    standins.import_with_stand_ins("_sqlite3", {"functools": standins.functools()}, _check_sqlite3, registered=True)
    import _sqlite3 as sqlite3
    # bytes as they are (the payloads): the driver binds bytearray, int, float and str at once but asks
    # its adapter registry about anything else, bytes included, and failing to find one there costs
    # about 1,500 instructions per payload (an AttributeError made and dropped on the way); this entry
    # answers the question (bench/README.md, "Issue 19: a bridged message's CPU").
    sqlite3.register_adapter(bytes, bytes)


def _check_sqlite3(module: Any) -> None:
    """A statement prepared, then found again in the connection's statement cache."""
    db = module.connect(":memory:")
    try:
        for _ in range(2):
            if db.execute("SELECT 1").fetchall() != [(1,)]:
                raise ImportError("_sqlite3 with functools' stand-in did not run a statement")
    finally:
        db.close()


def _free_space(directory: str) -> str:
    """For error messages: the space left on `directory`'s file system."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return "free space unknown"
    return f"{st.f_bavail * st.f_frsize // 1024} KiB free on its file system"


class SqliteStore(NullStore):
    def __init__(self, path: str, durability: str = "crash", autosave_interval: float = 1800.0,
                 autosave_on_changes: bool = False, log: L.LogFunc = L.null_log,
                 commit_window: float = 0.0) -> None:
        _import_sqlite3()
        self.path = path
        self.log = log
        self.periodic = durability == "periodic"
        #: seconds; "periodic" never holds an acknowledgement, so it has no window
        self.window = 0.0 if self.periodic else commit_window
        #: changes the window may hold, buffered and not cancelled, and since when (the loop's clock)
        self.waiting = 0
        self._waiting_since: Optional[float] = None
        self.autosave_interval = autosave_interval
        self.autosave_on_changes = autosave_on_changes
        self._ops: List[Optional[tuple]] = []  # (sql, parameters), or an _OWN
        self.buffered = self._ops
        #: something waits on the buffered changes (an acknowledgement of ours); False when all of them
        #: can be deferred; since when deferred changes wait (None: none do)
        self._urgent = False
        self._deferred_since: Optional[float] = None
        #: delivery seq -> index in _ops of its INSERT, not yet committed: a delivery acknowledged before
        #: its row is written cancels the INSERT instead of adding a DELETE (the entry becomes None)
        self._inserts: Dict[int, int] = {}
        #: messages stored once (see the module's docstring): msg_id -> deliveries referencing it, and
        #: msg_id -> index in _ops of its row's INSERT, not yet committed (cancelled with its last
        #: delivery). A message's only delivery so far in this commit is written with its own copy unless
        #: a second delivery comes before the commit: its INSERT (an _OWN) is at index -2 - store_id in
        #: _ops, and it is not in _inserts.
        self._refs: Dict[int, int] = {}
        self._msg_inserts: Dict[int, int] = {}
        self._last_msg_id = 0
        #: the same for bridge rows (their own seq space): seq -> (index, counted in `waiting`)
        self._bridge_inserts: Dict[int, Tuple[int, bool]] = {}
        #: the [first, last] of the newest buffered _DEL_BRIDGE, extended in place by the next seq
        self._bridge_run: Optional[List[int]] = None
        #: "periodic": the buffer's length at which it is next looked at for compaction, and how many
        #: cancelled entries compaction dropped since the last commit (autosave_on_changes counts them)
        self._compact_at = COMPACT_AT
        self._compacted = 0
        self._last_commit = time.monotonic()
        self._retry_at = 0.0
        self.errors = 0        # failed commits, for $SYS
        self.commits = 0
        self._failing = False
        self._conn = self._open(durability)

    # ---- opening ------------------------------------------------------------------------------

    def _fail(self, what: str, advice: str) -> StoreError:
        return StoreError(f"persistence database {self.path}: {what}. {advice}")

    def _open(self, durability: str) -> sqlite3.Connection:
        path = self.path
        directory = os.path.dirname(path) or "."
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise self._fail(f"cannot create its directory {directory} ({exc.strerror})",
                             "Create it, or set persistence_location to a writable directory.") from None
        if os.path.exists(path) and not (os.access(path, os.R_OK) and os.access(path, os.W_OK)):
            raise self._fail("the file is not readable and writable by this user",
                             "Fix its owner or permissions, or point persistence_location elsewhere.")
        if not os.access(directory, os.W_OK):
            raise self._fail(f"its directory {directory} is not writable (SQLite needs to create the "
                             f"-wal and -shm files beside it)", "Fix the directory's permissions.")
        move_aside = (f"Move it aside (mv {path} {path}.broken) and start again: the broker then starts "
                      f"with an empty database, and the old file can be inspected with sqlite3.")
        conn = None
        try:
            # A short busy timeout: at start-up a lock means another process, and saying so soon is better.
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
            try:
                conn.execute("PRAGMA user_version").fetchone()  # the first access: WAL's -shm file
            except sqlite3.OperationalError as exc:
                conn.close()  # (closing it again below, should the next open fail too, is harmless)
                conn = self._open_exclusive(path, directory, exc)
            # 128 KiB of page cache (SQLite's default is 2 MiB): the hot statements touch few pages (the
            # ends of the deliveries B-tree: rows go in at one end, out at the other), a page read back
            # comes from the OS's cache, and a Pi Zero has 512 MiB for everything. A queue of 10,000
            # messages filled 1 MiB of cache, with the same CPU time to queue and drain at 256 KiB
            # and at 128 (bench/README.md, "Issue 19" and "Issue 19: the bridge rows"). Set first: the
            # quick_check below reads every page, which with the default cache stayed resident (a
            # restart with 5,000 bridge rows queued: 1.4 MiB).
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0 and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise self._fail("it is an SQLite database of another application (it has tables but no "
                                 "edgebroker schema version)", "Move it aside, or point persistence_location or "
                                 "persistence_file at another file; it is left untouched.")
            if version > SCHEMA_VERSION:
                raise self._fail(f"it was written by a newer edgebroker (schema version {version}; this one "
                                 f"knows up to {SCHEMA_VERSION})", "Run the newer edgebroker, or move the file "
                                 "aside to start empty.")
            if version == 0:
                # A new database: small pages (see PAGE_SIZE; must be set before the first write).
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise self._fail(f"it is damaged (integrity check: {check})", move_aside)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise self._fail(f"cannot switch it to WAL mode (got {mode})", move_aside)
            conn.execute(f"PRAGMA synchronous={'FULL' if durability == 'sync' else 'NORMAL'}")
            conn.execute("BEGIN IMMEDIATE")  # takes the write lock: fails now if read-only or in use
            conn.execute("COMMIT")
            if version < SCHEMA_VERSION:
                self._migrate(conn, version)
        except StoreError:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise self._fail("it is in use by another process (is another edgebroker running?)",
                                 "Stop the other process, or give this broker its own persistence_location.") from None
            if "readonly" in text or "read-only" in text:
                raise self._fail("it cannot be written (read-only file or file system)",
                                 "Fix the permissions, or point persistence_location elsewhere.") from None
            if "disk I/O error" in text or "full" in text:  # not the file's fault: do not advise moving it
                raise self._fail(f"it cannot be read or written ({text}; {_free_space(directory)})",
                                 "Free some space on its file system, or point persistence_location "
                                 "elsewhere.") from None
            raise self._fail(f"it is not a usable SQLite database ({text})", move_aside) from None
        return conn

    def _open_exclusive(self, path: str, directory: str, exc: sqlite3.OperationalError) -> sqlite3.Connection:
        """A WAL database cannot be read without its -shm file, which a full disk cannot give (SQLite:
        "disk I/O error"). In exclusive locking mode, set before the first access, SQLite keeps that index
        in memory instead, so the broker still starts with everything the file holds, serves, and writes
        once space returns (its commits fail meanwhile and are retried, as when the disk fills while it
        runs). The mode lasts until the broker restarts: other processes cannot read the file meanwhile.
        Any other failure is raised as the first one."""
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=1.0)
        try:
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            conn.execute("PRAGMA user_version").fetchone()
        except sqlite3.Error:
            conn.close()
            raise exc from None
        self.log(L.WARNING, f"Warning: persistence database {path}: cannot create its -shm file ({exc}; "
                            f"{_free_space(directory)}); "
                            "opened in exclusive locking mode instead, until the broker restarts (other processes "
                            "cannot read the file meanwhile).")
        return conn

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        if "sqlite_utils" in sys.modules:  # already paid for (tools, tests): no need for a child
            migrate(self.path)
        else:
            status, errors = _run_child([sys.executable, "-m", "edgebroker.store", "migrate", self.path])
            if status != 0:
                detail = (errors.strip().splitlines() or ["no output"])[-1]
                raise self._fail(f"its schema could not be created or migrated ({detail})",
                                 "Check the file and its directory, or move the file aside.")
        reached = conn.execute("PRAGMA user_version").fetchone()[0]
        if reached != SCHEMA_VERSION:
            raise self._fail(f"migration stopped at schema version {reached} of {SCHEMA_VERSION}",
                             "Move the file aside and start again.")
        if version:
            self.log(L.NOTICE, f"Persistence database {self.path} migrated from schema version {version} "
                               f"to {SCHEMA_VERSION}.")

    # ---- loading ------------------------------------------------------------------------------

    def load(self) -> Loaded:
        try:
            return self._load()
        except sqlite3.Error as exc:
            raise self._fail(f"its contents cannot be read ({exc})",
                             f"Move it aside (mv {self.path} {self.path}.broken) and start again.") from None

    def _load(self) -> Loaded:
        c = self._conn
        now = time.time()
        sessions = [(cid, None if at is None else max(0.0, now - at))
                    for cid, at in c.execute("SELECT client_id, disconnected_at FROM sessions")]
        deliveries = list(c.execute("SELECT seq, client_id, topic, payload, qos, retain, packet_id, state, msg_id "
                                    "FROM deliveries ORDER BY seq"))
        messages = {row[0]: row[1:] for row in c.execute("SELECT id, topic, payload, qos, retain FROM messages")}
        refs = self._refs
        refs.clear()
        for row in deliveries:
            msg_id = row[8]
            if msg_id is not None:
                refs[msg_id] = refs.get(msg_id, 0) + 1
        self._last_msg_id = max(messages, default=0)
        for msg_id in [m for m in messages if m not in refs]:  # none, unless written by hand
            del messages[msg_id]
            self._ops.append((_DEL_MESSAGE, (msg_id,)))
        return Loaded(
            retained=list(c.execute("SELECT topic, payload, qos FROM retained")),
            sessions=sessions,
            subscriptions=list(c.execute("SELECT client_id, topic_filter, qos FROM subscriptions")),
            deliveries=deliveries,
            inbound_qos2=list(c.execute("SELECT client_id, packet_id, topic, payload, retain FROM inbound_qos2")),
            messages=messages,
        )

    # ---- changes (buffered until commit) --------------------------------------------------------

    def retained_set(self, topic: str, payload: bytes, qos: int) -> None:
        self.waiting += 1
        self._ops.append((_INS_RETAINED, (topic, payload, qos)))

    def retained_clear(self, topic: str) -> None:
        self.waiting += 1
        self._ops.append((_DEL_RETAINED, (topic,)))

    def session_online(self, client_id: str) -> None:
        self._urgent = True
        self._ops.append((_SESSION_ONLINE, (client_id,)))

    def session_offline(self, client_id: str) -> None:
        self._ops.append((_SESSION_OFFLINE, (time.time(), client_id)))

    def session_remove(self, client_id: str, messages: Iterable = ()) -> None:
        self._urgent = True
        ops = self._ops
        # Its pending deliveries' own copies: a later delivery of the same message must not turn them
        # into references (the DELETE below removes them, and the reference would never be released).
        for i, op in enumerate(ops):
            if op is not None and op[0] is _OWN and op[1] == client_id and op[2].store_id == -2 - i:  # type: ignore[misc]
                op[2].store_id = 0  # type: ignore[misc]
        for msg in messages:
            if msg.store_id > 0:
                self._unref(msg.store_id)
        for sql in _DEL_SESSION:
            ops.append((sql, (client_id,)))

    def subscription_add(self, client_id: str, topic_filter: str, qos: int) -> None:
        self._urgent = True
        self._ops.append((_INS_SUB, (client_id, topic_filter, qos)))

    def subscription_remove(self, client_id: str, topic_filter: str) -> None:
        self._urgent = True
        self._ops.append((_DEL_SUB, (client_id, topic_filter)))

    def delivery_add(self, seq: int, client_id: str, msg, qos: int, packet_id: Optional[int],  # type: ignore[no-untyped-def]
                     state: int, meta: Optional[int] = None) -> None:
        # Counted in `waiting` until written or cancelled; a QoS 2 delivery is not held by the window:
        # sent before its row is committed, a crash could make its resend a second delivery.
        self.waiting += 1
        if qos == 2:
            self._urgent = True
        ops = self._ops
        sid = msg.store_id
        if sid == 0:
            # Its only delivery so far: a copy of its own in the delivery's row.
            msg.store_id = -2 - len(ops)
            ops.append((_OWN, client_id, msg, queue_meta(msg, qos, seq, packet_id or 0) if meta is None else meta,
                        state))
            return
        if sid < -1:
            # A second delivery before the commit: the message gets its row, the first delivery's INSERT
            # references it instead of carrying a copy.
            i = -2 - sid
            o = ops[i]
            q, s, p = unpack_meta(msg, o[3])  # type: ignore[index]
            sid = msg.store_id = self._last_msg_id = self._last_msg_id + 1
            ops[i] = (_INS_DELIVERY_REF, (s, o[1], sid, q, p or None, o[4]))  # type: ignore[index]
            self._inserts[s] = i
            self._refs[sid] = 1
            self._msg_inserts[sid] = len(ops)
            self.waiting += 1
            ops.append((_INS_MESSAGE, (sid, msg.topic, msg.payload, msg.qos, int(msg.retain))))
        elif sid < 0:
            self._inserts[seq] = len(ops)
            ops.append((_OWN, client_id, msg, queue_meta(msg, qos, seq, packet_id or 0) if meta is None else meta,
                        state))
            return
        refs = self._refs
        n = refs.get(sid)
        if n is None:  # its row went with its last delivery: written again
            n = 0
            self._msg_inserts[sid] = len(ops)
            self.waiting += 1
            ops.append((_INS_MESSAGE, (sid, msg.topic, msg.payload, msg.qos, int(msg.retain))))
        refs[sid] = n + 1
        self._inserts[seq] = len(ops)
        ops.append((_INS_DELIVERY_REF, (seq, client_id, sid, qos, packet_id, state)))

    def delivery_update(self, seq: int, packet_id: Optional[int], state: int, deferred: bool = False) -> None:
        """deferred: nothing we send depends on it (e.g. noting that a queued message was sent); a new
        packet id or a PUBREL state must be durable before the packet that carries it leaves."""
        if not deferred:
            self._urgent = True
        self._ops.append((_UPD_DELIVERY, (packet_id, state, seq)))

    def delivery_remove(self, seq: int, msg) -> None:  # type: ignore[no-untyped-def]
        sid = msg.store_id
        if sid < -1:  # the message's only delivery, with its INSERT still buffered
            i = -2 - sid
            op = self._ops[i]
            if op is not None and unpack_meta(msg, op[3])[1] == seq:
                self._ops[i] = None  # never written: nothing to delete (an UPDATE of it then matches no row)
                self.waiting -= 1
                msg.store_id = 0
                return
        i = self._inserts.pop(seq, None)
        if i is not None:
            self._ops[i] = None
            self.waiting -= 1
        else:
            self._ops.append((_DEL_DELIVERY, (seq,)))
        if sid > 0:
            self._unref(sid)

    def _unref(self, sid: int) -> None:
        """One delivery fewer references message row `sid`: the last one takes the row with it."""
        refs = self._refs
        n = refs.get(sid, 0) - 1
        if n > 0:
            refs[sid] = n
            return
        refs.pop(sid, None)
        i = self._msg_inserts.pop(sid, None)
        if i is not None:
            self._ops[i] = None
            self.waiting -= 1
        else:
            self._ops.append((_DEL_MESSAGE, (sid,)))

    def bridge_add(self, seq: int, bridge: str, topic: str, payload: bytes, qos: int, retain: bool,
                   urgent: bool = True) -> None:
        """urgent: a publisher's acknowledgement waits on it (QoS 1/2); a QoS 0 message's row rides with
        the next commit, and costs no write at all when it is sent before that."""
        if urgent:
            self.waiting += 1  # the commit window may hold it, with the acknowledgement
        self._bridge_inserts[seq] = (len(self._ops), urgent)
        self._ops.append((_INS_BRIDGE, (seq, bridge, topic, payload, qos, int(retain))))

    def bridge_remove(self, seq: int) -> None:
        pending = self._bridge_inserts.pop(seq, None)
        if pending is not None:
            self._ops[pending[0]] = None  # sent and acknowledged before its row was written: no write at all
            if pending[1]:
                self.waiting -= 1
            return
        # Its row was committed (else its INSERT would be pending above), as was every row of the run:
        # extending the run, which sits earlier in the buffer, deletes the same rows.
        run = self._bridge_run
        if run is not None and run[1] == seq - 1:
            run[1] = seq
            return
        run = self._bridge_run = [seq, seq]
        self._ops.append((_DEL_BRIDGE, run))

    def bridge_remove_all(self, seqs: List[int]) -> None:
        inserts = self._bridge_inserts
        for seq in seqs:
            run = self._bridge_run
            if run is not None and run[1] == seq - 1 and seq not in inserts:
                run[1] = seq  # bridge_remove's commonest case, without a call
            else:
                self.bridge_remove(seq)

    def bridge_pending(self) -> bool:
        return bool(self._bridge_inserts)

    def bridge_summary(self) -> Dict[str, Tuple[int, int]]:
        rows = self._conn.execute("SELECT bridge, count(*), sum(length(CAST(topic AS BLOB)) + length(payload)) "
                                  "FROM bridge_queue GROUP BY bridge")
        return {name: (count, size or 0) for name, count, size in rows}

    def bridge_max_seq(self) -> int:
        return self._conn.execute("SELECT coalesce(max(seq), 0) FROM bridge_queue").fetchone()[0]

    def bridge_damaged(self) -> List[Tuple[str, int, int]]:
        return self._conn.execute(_BRIDGE_DAMAGED).fetchall()

    def bridge_rows(self, bridge: str, after: int, limit: int) -> List[Tuple]:
        return self._conn.execute(_BRIDGE_ROWS, (bridge, after, limit)).fetchall()

    def inbound_add(self, client_id: str, packet_id: int, topic: Optional[str] = None,
                    payload: Optional[bytes] = None, retain: bool = False) -> None:
        """An inbound QoS 2 id whose PUBREC goes out, with the message it holds until PUBREL (topic
        None: nothing to release)."""
        self.waiting += 1
        self._ops.append((_INS_INBOUND, (client_id, packet_id, topic, payload, int(retain))))

    def inbound_remove(self, client_id: str, packet_id: int) -> None:
        self.waiting += 1
        self._ops.append((_DEL_INBOUND, (client_id, packet_id)))

    # ---- the once-per-turn commit ---------------------------------------------------------------

    def _due_now(self) -> bool:
        """Something is to be committed in this loop turn, before its output leaves: a change the
        commit window does not hold, or any change when there is no window."""
        return self._urgent or (self.waiting > 0 and not self.window)

    def hold_until(self, now: float) -> float:
        """When the loop should commit (and flush what depends on it): now, or later within the group
        commit window. "periodic" never holds the loop (its acknowledgements do not wait for a save),
        and neither do deferred changes alone, nor those the commit window holds (the core holds the
        acknowledgements that depend on them instead)."""
        if self.periodic or not self._due_now():
            return now
        return max(now, self._last_commit + GROUP_COMMIT_WAIT)

    def output_waits(self) -> bool:
        return not self.periodic and self._due_now()

    def settled(self) -> bool:
        """No change an acknowledgement may depend on waits for the commit window: acknowledgements
        the core held may leave. Also while commits fail (disk full), as without a window: the broker
        keeps serving, and the error says that acknowledged messages are not safe meanwhile."""
        return self.waiting == 0 or self._failing

    def pending_durable(self) -> bool:
        """Changes an acknowledgement would depend on are not yet committed (a bridge holds its
        acknowledgements to the remote until then)."""
        return not self.periodic and not self._failing and (self._urgent or self.waiting > 0)

    def wake_at(self, now: float) -> float:
        """When the loop must come back to commit even if nothing happens: changes held by the commit
        window, deferred changes."""
        if self.periodic:
            return float("inf")
        if self._failing:  # a failed commit (disk full) is tried again when its retry is due, not before:
            return self._retry_at if self._ops else float("inf")  # the window's time has passed already
        at = float("inf")
        since = self._deferred_since
        if since is not None:
            at = since + DEFER_MAX_AGE
        since = self._waiting_since
        if since is not None and self.waiting:
            at = min(at, since + self.window)
        return at

    def commit(self, now: float, force: bool = False) -> None:
        """Write the buffered changes in one transaction, when due: at once if something waits on them
        ("crash", "sync"), when deferred ones are due (see DEFER_MAX_AGE), when a save is due
        ("periodic"), or always with force. Until then nothing touches the file, so a change undone in
        between (a delivery acknowledged before its row was written) costs no write at all. Changes
        stay in `_ops` until their COMMIT succeeds, so a failed one (disk full) is retried."""
        ops = self._ops
        if not ops:
            return
        if self._failing and now < self._retry_at and not force:
            return
        if force:
            pass
        elif self.periodic:
            if len(ops) >= self._compact_at:
                self._compact()
            if len(ops) < PERIODIC_MAX_OPS:
                due = (len(ops) + self._compacted >= self.autosave_interval if self.autosave_on_changes
                       else now - self._last_commit >= self.autosave_interval)
                if not due:
                    return
        elif self._due_now():
            pass
        elif self.waiting:
            since = self._waiting_since
            if since is None:
                since = self._waiting_since = now
            deferred = self._deferred_since  # deferred changes that are due take the waiting ones along
            # (Compared as wake_at computes them, so that the turn the loop wakes up for commits.)
            if (now < since + self.window and self.waiting < COMMIT_BATCH and len(ops) < DEFER_MAX_OPS
                    and (deferred is None or now < deferred + DEFER_MAX_AGE)):
                return
        else:
            self._waiting_since = None  # what waited was cancelled: the next change starts a new window
            since = self._deferred_since
            if since is None:
                if not any(ops):  # only cancelled changes (deliveries acknowledged in the window)
                    ops.clear()
                    self._bridge_run = None
                    return
                self._deferred_since = now
                return
            if now < since + DEFER_MAX_AGE and len(ops) < DEFER_MAX_OPS:
                return
        conn = self._conn
        began = False
        try:
            i, n = 0, len(ops)
            while i < n:
                op = ops[i]
                if op is None:
                    i += 1
                    continue
                if not began:  # only cancelled changes: no transaction, nothing written
                    conn.execute("BEGIN")
                    began = True
                sql = op[0]
                j = i + 1
                while j < n and ops[j] is not None and ops[j][0] is sql:  # type: ignore[index]
                    j += 1
                if sql is _OWN:
                    rows = []
                    for k in range(i, j):
                        o = ops[k]
                        msg = o[2]  # type: ignore[index]
                        m = o[3]  # type: ignore[index]
                        if m >= 0:  # unpack_meta(msg, m), inline for the common case
                            rows.append((m >> 16, o[1], msg.topic, msg.payload, msg.qos, int(msg.retain),  # type: ignore[index]
                                         m & 0xFFFF or None, o[4]))  # type: ignore[index]
                        else:
                            q, s, p = unpack_meta(msg, m)
                            rows.append((s, o[1], msg.topic, msg.payload, q, int(msg.retain), p or None, o[4]))  # type: ignore[index]
                        if msg.store_id == -2 - k:
                            # Its copy is in its delivery's row now (set before the COMMIT: should it
                            # fail, the INSERT stays buffered and is only no longer cancelled).
                            msg.store_id = -1
                    conn.executemany(_INS_DELIVERY, rows)
                elif sql is _INS_BRIDGE and j - i >= 4:
                    self._insert_bridge_rows([o[1] for o in ops[i:j]])  # type: ignore[index]
                elif j - i == 1:
                    conn.execute(sql, op[1])
                else:
                    conn.executemany(sql, [o[1] for o in ops[i:j]])  # type: ignore[index]
                i = j
            if began:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._on_error(exc, now)
            return
        ops.clear()
        self._bridge_run = None
        self._compact_at = COMPACT_AT
        self._compacted = 0
        self.waiting = 0
        self._waiting_since = None
        self._inserts.clear()
        self._msg_inserts.clear()
        self._bridge_inserts.clear()
        self._urgent = False
        self._deferred_since = None
        if began:
            self._last_commit = now
            self.commits += 1
        if self._failing:
            self._failing = False
            self.log(L.NOTICE, f"Persistence database {self.path} is writable again.")

    def _insert_bridge_rows(self, rows: List[tuple]) -> None:
        """A run of bridge rows (a turn's intake: 64 in B1) by statements of several rows each: a row
        of its own costs the driver's per-statement work (a step, the GIL released and taken again,
        a reset) once per row, about 2,400 instructions (bench/README.md, "Issue 19: a bridged
        message's CPU")."""
        conn = self._conn
        i, n = 0, len(rows)
        for k in _INS_BRIDGE_SIZES:
            if n - i >= k:
                sql = _INS_BRIDGE_MANY[k]
                while n - i >= k:
                    conn.execute(sql, tuple(chain.from_iterable(rows[i:i + k])))
                    i += k
        if i < n:
            conn.executemany(_INS_BRIDGE, rows[i:])

    def _compact(self) -> None:
        """Drop the buffer's cancelled entries when they are half of it or more ("periodic"), and
        renumber what points into it: the pending INSERTs of deliveries, messages and bridge rows, and
        a message whose own copy waits in an _OWN entry (its store_id, -2 - index)."""
        ops = self._ops
        if ops.count(None) * 2 < len(ops):
            self._compact_at = 2 * len(ops)  # fewer cancelled: look again once it has doubled
            return
        where: Dict[int, int] = {}  # old index -> new, of the entries kept
        kept: List[Optional[tuple]] = []
        for i, op in enumerate(ops):
            if op is not None:
                j = where[i] = len(kept)
                if op[0] is _OWN and op[2].store_id == -2 - i:
                    op[2].store_id = -2 - j
                kept.append(op)
        self._compacted += len(ops) - len(kept)
        ops[:] = kept  # the same list: the loop holds it (`buffered`)
        self._inserts = {seq: where[i] for seq, i in self._inserts.items() if i in where}
        self._msg_inserts = {sid: where[i] for sid, i in self._msg_inserts.items() if i in where}
        self._bridge_inserts = {seq: (where[i], held) for seq, (i, held) in self._bridge_inserts.items()
                                if i in where}
        self._compact_at = max(COMPACT_AT, 2 * len(ops))

    def _on_error(self, exc: sqlite3.Error, now: float) -> None:
        """Disk full or I/O error: roll back, keep the changes for a retry, keep serving."""
        self.errors += 1
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self._retry_at = now + RETRY_INTERVAL
        if not self._failing:
            self._failing = True
            self.log(L.ERR, f"Error: cannot write persistence database {self.path}: {exc}. Messages are "
                            f"kept in memory and the write is retried; they are not safe against a crash "
                            f"until it succeeds.")
        if len(self._ops) > MAX_PENDING_OPS:
            self.log(L.ERR, f"Error: {len(self._ops)} unsaved changes to {self.path} dropped "
                            f"(limit {MAX_PENDING_OPS}).")
            for i, op in enumerate(self._ops):  # their buffered INSERTs go
                if op is not None and op[0] is _OWN and op[2].store_id == -2 - i:  # type: ignore[misc]
                    op[2].store_id = 0  # type: ignore[misc]
            self._ops.clear()
            self._bridge_run = None
            self._compact_at = COMPACT_AT
            self._compacted = 0
            self._inserts.clear()
            self._msg_inserts.clear()
            self._bridge_inserts.clear()
            self.waiting = 0
            self._waiting_since = None
            self._urgent = False
            self._deferred_since = None

    def close(self) -> None:
        if self._conn is None:
            return
        self.commit(time.monotonic(), force=True)
        try:
            self._conn.close()
        except sqlite3.Error:
            pass
        self._conn = None  # type: ignore[assignment]


def migrate(path: str) -> None:
    """Bring the database at `path` to SCHEMA_VERSION with sqlite-utils, in one write transaction."""
    import sqlite_utils

    _import_sqlite3()
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    try:
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        db = sqlite_utils.Database(conn)
        for target in range(version, SCHEMA_VERSION):
            MIGRATIONS[target](db)
            conn.execute(f"PRAGMA user_version = {target + 1}")
        if conn.in_transaction:
            conn.execute("COMMIT")
    finally:
        conn.close()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "migrate":
        sys.exit("usage: python -m edgebroker.store migrate FILE")
    migrate(sys.argv[2])
