"""A message is stored once however many persistent sessions it goes to (edgebroker/store.py): the
database grows by one copy of its payload plus a small row per delivery, the copy is deleted with its
last delivery, and a database of the previous schema is migrated (its existing copies shared).

Theory of operation: the broker core runs in this process on a real SQLite file (a Broker with a
SqliteStore, driven through its sans-IO interface: `data_received`, `connection_lost`, `end_turn`,
which commits as the loop does once per turn); the file is then read with a connection of its own,
as a user with sqlite3 would. Sizes are bytes on disk (database + WAL), never times.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import List, Tuple

import pytest

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
    import mqttwire as w
except ImportError:  # tests imported as a package
    from tests import mqttwire as w  # type: ignore[no-redef]

from edgebroker.broker import Broker
from edgebroker.config import Config, Listener
from edgebroker.session import unpack_meta
from edgebroker.store import MIGRATIONS, SCHEMA_VERSION, SqliteStore

SESSIONS = 1000
MESSAGES = 20
PAYLOAD = 4096


def config(tmp_path: Path, **overrides) -> Config:  # type: ignore[no-untyped-def]
    kw = dict(persistence=True, persistence_location=str(tmp_path / "data"),
              listeners=[Listener(0, "127.0.0.1")], allow_anonymous=True, sys_interval=0)
    kw.update(overrides)
    return Config(**kw)  # type: ignore[arg-type]


def disk_bytes(path: str) -> int:
    """The database file and its WAL, as they are on disk now."""
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def rows(path: str, sql: str) -> List[tuple]:
    con = sqlite3.connect(path)
    try:
        return list(con.execute(sql))
    finally:
        con.close()


def publishes(data: bytes) -> List[bytes]:
    return [p for p in w.split_packets(data) if p[0] >> 4 == 3]


def topic_at(packet: bytes) -> Tuple[str, int]:
    """A PUBLISH's topic and the offset just after it (after the fixed header's remaining length)."""
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    topic_len = int.from_bytes(packet[i:i + 2], "big")
    return packet[i + 2:i + 2 + topic_len].decode("utf-8"), i + 2 + topic_len


def packet_id_of(packet: bytes) -> int:
    """The packet id of a QoS 1/2 PUBLISH (after the topic)."""
    i = topic_at(packet)[1]
    return int.from_bytes(packet[i:i + 2], "big")


def drain(b: Broker, c, now: float) -> List[bytes]:  # type: ignore[no-untyped-def]
    """Everything the broker sends `c` until it has nothing more, each PUBLISH acknowledged, as the loop
    would run it (the output is sent, a held refill goes on)."""
    got: List[bytes] = []
    while True:
        b.end_turn(now)
        new = publishes(b"".join(c.out))
        c.out.clear()
        c.out_size = 0
        if c.refill_held:
            b.output_drained(c)
        elif not new:
            return got
        got += new
        b.data_received(c, b"".join(w.puback(packet_id_of(p)) for p in new if p[0] & 0x06), now)


def offline_sessions(b: Broker, count: int, topic_filter: str, now: float) -> None:
    """`count` persistent sessions subscribed at QoS 1, then gone offline."""
    for i in range(count):
        c = b.connection_made("127.0.0.1", 40000 + i, now)
        b.data_received(c, w.connect(f"fan-{i:04d}", clean=False) + w.subscribe(1, [(topic_filter, 1)]), now)
        b.end_turn(now)
        b.connection_lost(c, now)
    b.end_turn(now)


def test_fan_out_to_1000_offline_sessions_stores_each_payload_once(tmp_path):
    """The issue's case: 1,000 offline persistent sessions on fan/#, 20 QoS 1 messages of 4 KiB (82 KB
    of payload). Stored once per session this grew the database and WAL by 149 MB; stored once per
    message it must stay within a few times the payload plus a small row per delivery (1 MiB here for
    20,000 deliveries). Every message is still there for every session after a restart, and the copies
    go when the last session has them acknowledged."""
    cfg = config(tmp_path)
    path = cfg.database_path()
    store = SqliteStore(path)
    b = Broker(cfg, now=0.0, store=store)
    offline_sessions(b, SESSIONS, "fan/#", 0.0)
    before = disk_bytes(path)
    pub = b.connection_made("127.0.0.1", 1, 1.0)
    b.data_received(pub, w.connect("fan-publisher"), 1.0)
    b.end_turn(1.0)
    payloads = [bytes([i]) * PAYLOAD for i in range(MESSAGES)]
    for i, payload in enumerate(payloads):  # one message per turn, each its own commit (PUBACK waits)
        pub.out.clear()
        b.data_received(pub, w.publish(f"fan/{i}", payload, qos=1, packet_id=i + 1), 2.0 + i)
        b.end_turn(2.0 + i)
        assert b"".join(pub.out) == w.puback(i + 1)
    grown = disk_bytes(path) - before
    assert grown < 1024 * 1024, f"database + WAL grew by {grown:,} bytes for {MESSAGES * PAYLOAD:,} of payload"
    assert rows(path, "SELECT count(*), sum(length(payload)) FROM messages") == [(MESSAGES, MESSAGES * PAYLOAD)]
    assert rows(path, "SELECT count(*), count(msg_id), count(payload) FROM deliveries") == \
        [(SESSIONS * MESSAGES, SESSIONS * MESSAGES, 0)]
    store.close()

    # A restart: every session gets all 20 messages, in order; the copies go with the last PUBACK.
    store = SqliteStore(path)
    b = Broker(cfg, now=100.0, store=store)
    for i in range(SESSIONS):
        c = b.connection_made("127.0.0.1", 50000 + i, 100.0)
        b.data_received(c, w.connect(f"fan-{i:04d}", clean=False), 100.0)
        if i == SESSIONS - 1:
            store.commit(100.0, force=True)
            assert rows(path, "SELECT count(*) FROM messages") == [(MESSAGES,)], "deleted while referenced"
        got = drain(b, c, 100.0)
        assert [p[-PAYLOAD:] for p in got] == payloads, f"session {i}"
        b.connection_lost(c, 100.0)
    store.close()
    assert rows(path, "SELECT count(*) FROM deliveries") == [(0,)]
    assert rows(path, "SELECT count(*) FROM messages") == [(0,)], "a message outlived its deliveries"


def test_a_message_to_one_session_keeps_its_copy_in_the_delivery_row(tmp_path):
    """A sensor's trickle to one persistent session touches one table: the payload stays in the
    delivery's row, no `messages` row is written (one B-tree page per commit, as before)."""
    cfg = config(tmp_path)
    path = cfg.database_path()
    store = SqliteStore(path)
    b = Broker(cfg, now=0.0, store=store)
    offline_sessions(b, 1, "t/#", 0.0)
    pub = b.connection_made("127.0.0.1", 1, 1.0)
    b.data_received(pub, w.connect("p") + w.publish("t/1", b"alone", qos=1, packet_id=1), 1.0)
    b.end_turn(1.0)
    assert rows(path, "SELECT topic, payload, msg_id FROM deliveries") == [("t/1", b"alone", None)]
    assert rows(path, "SELECT count(*) FROM messages") == [(0,)]
    store.close()


def test_shared_copy_lives_until_its_last_delivery_and_a_session_removal_releases_it(tmp_path):
    """Two sessions share a message: the first PUBACK keeps the copy, a clean-session reconnect of the
    second (its session discarded [MQTT-3.1.2-6]) releases the last reference and the copy goes."""
    cfg = config(tmp_path)
    path = cfg.database_path()
    store = SqliteStore(path)
    b = Broker(cfg, now=0.0, store=store)
    offline_sessions(b, 2, "s/#", 0.0)
    pub = b.connection_made("127.0.0.1", 1, 1.0)
    b.data_received(pub, w.connect("p") + w.publish("s/1", b"shared", qos=1, packet_id=1), 1.0)
    b.end_turn(1.0)
    assert rows(path, "SELECT count(*) FROM messages") == [(1,)]
    c = b.connection_made("127.0.0.1", 2, 2.0)
    b.data_received(c, w.connect("fan-0000", clean=False), 2.0)
    got = publishes(b"".join(c.out))
    assert len(got) == 1
    b.data_received(c, w.puback(packet_id_of(got[0])), 2.0)
    store.commit(2.0, force=True)
    assert rows(path, "SELECT count(*) FROM messages") == [(1,)], "deleted while still referenced"
    c2 = b.connection_made("127.0.0.1", 3, 3.0)
    b.data_received(c2, w.connect("fan-0001", clean=True), 3.0)
    b.end_turn(3.0)
    assert rows(path, "SELECT count(*) FROM deliveries") == [(0,)]
    assert rows(path, "SELECT count(*) FROM messages") == [(0,)]
    store.close()


def test_acknowledged_before_the_save_writes_neither_copy_nor_rows(tmp_path):
    """durability periodic: a message to two online persistent sessions, both acknowledging before the
    save, cancels its deliveries' INSERTs and its message row's INSERT: the save writes nothing."""
    cfg = config(tmp_path, durability="periodic", autosave_interval=3600.0)
    store = SqliteStore(cfg.database_path(), cfg.durability, cfg.autosave_interval)
    b = Broker(cfg, now=0.0, store=store)
    subs = []
    for name in ("a", "b"):
        c = b.connection_made("127.0.0.1", len(subs) + 2, 0.0)
        b.data_received(c, w.connect(name, clean=False) + w.subscribe(1, [("p/#", 1)]), 0.0)
        subs.append(c)
    pub = b.connection_made("127.0.0.1", 1, 0.0)
    b.data_received(pub, w.connect("pp"), 0.0)
    store.commit(0.0, force=True)
    before = store._conn.total_changes
    for c in subs:
        c.out.clear()
    b.data_received(pub, w.publish("p/1", b"x", qos=1, packet_id=1), 1.0)
    for c in subs:
        got = publishes(b"".join(c.out))
        assert len(got) == 1
        b.data_received(c, w.puback(packet_id_of(got[0])), 1.0)
    store.commit(2.0, force=True)
    assert store._conn.total_changes == before
    store.close()


def test_a_periodic_save_writes_the_buffered_deliveries_as_they_were_queued(tmp_path):
    """durability periodic buffers every change until the save, a delivery as a reference to its
    message: what the save writes, and a restart then sends, is each queued delivery with the packet
    id and row it got when queued (ids past 256, rows past 2**32), a message queued for two sessions
    before the save as one shared copy, and nothing for a delivery acknowledged before the save."""
    cfg = config(tmp_path, durability="periodic", autosave_interval=3600.0)
    path = cfg.database_path()
    store = SqliteStore(path, cfg.durability, cfg.autosave_interval)
    b = Broker(cfg, now=0.0, store=store)
    offline_sessions(b, 2, "q/#", 0.0)
    store.commit(0.0, force=True)
    b._seq = 2 ** 40
    for session in b.sessions.values():
        session._next_pid = 1000
    a = b.connection_made("127.0.0.1", 2, 1.0)
    b.data_received(a, w.connect("fan-0000", clean=False), 1.0)
    b.data_received(a, w.unsubscribe(2, ["q/#"]) + w.subscribe(3, [("q/a/#", 1)]), 1.0)
    b.connection_lost(a, 1.0)  # fan-0000 gets q/a/..., fan-0001 everything on q/#
    pub = b.connection_made("127.0.0.1", 1, 1.0)
    b.data_received(pub, w.connect("p"), 1.0)
    for i, topic in enumerate(["q/a/1", "q/b/2", "q/a/3"]):
        b.data_received(pub, w.publish(topic, topic.encode(), qos=1, packet_id=i + 1), 1.0)
    queued = {cid: [(m.topic, unpack_meta(m, meta)) for m, meta in zip(s.queue, s.queue_meta)]
              for cid, s in b.sessions.items() if cid.startswith("fan")}
    assert rows(path, "SELECT count(*) FROM deliveries") == [(0,)], "written before the save"
    # fan-0001 takes q/a/1 and acknowledges it before the save: its row is never written
    c = b.connection_made("127.0.0.1", 3, 2.0)
    b.data_received(c, w.connect("fan-0001", clean=False), 2.0)
    got = publishes(b"".join(c.out))
    assert [topic_at(p)[0] for p in got] == ["q/a/1", "q/b/2", "q/a/3"]
    assert [packet_id_of(p) for p in got] == [1001, 1002, 1003]
    b.data_received(c, w.puback(1001), 2.0)
    b.connection_lost(c, 2.0)
    store.commit(3.0, force=True)
    unpacked = {cid: [(t, qos, pid, seq) for t, (qos, seq, pid) in q] for cid, q in queued.items()}
    assert [pid for _, _, pid, _ in unpacked["fan-0001"]] == [1001, 1002, 1003]
    assert [pid for _, _, pid, _ in unpacked["fan-0000"]] == [1001, 1002]
    assert all(seq > 2 ** 40 and qos == 1 for q in unpacked.values() for _, qos, _, seq in q)
    expected = {(cid, t, pid, seq) for cid, q in unpacked.items() for t, _, pid, seq in q
                if (cid, t) != ("fan-0001", "q/a/1")}
    assert set(rows(path, "SELECT client_id, topic, packet_id, seq FROM deliveries WHERE msg_id IS NULL")) == \
        {e for e in expected if e[1] == "q/b/2"}
    assert set(rows(path, "SELECT d.client_id, m.topic, d.packet_id, d.seq FROM deliveries d JOIN messages m "
                          "ON d.msg_id = m.id")) == {e for e in expected if e[1] != "q/b/2"}
    assert rows(path, "SELECT topic FROM messages ORDER BY topic") == [("q/a/1",), ("q/a/3",)]
    store.close()

    store = SqliteStore(path, cfg.durability, cfg.autosave_interval)
    b = Broker(cfg, now=10.0, store=store)
    for i, cid in enumerate(["fan-0000", "fan-0001"]):
        c = b.connection_made("127.0.0.1", 4 + i, 10.0)
        b.data_received(c, w.connect(cid, clean=False), 10.0)
        got = publishes(b"".join(c.out))
        assert [(topic_at(p)[0], packet_id_of(p), bool(p[0] & 0x08)) for p in got] == \
            [(t, pid, cid == "fan-0001") for t, _, pid, _ in unpacked[cid] if (cid, t) != ("fan-0001", "q/a/1")]
    store.close()


def test_a_periodic_save_writes_a_delivery_below_its_message_qos_as_queued(tmp_path):
    """The buffered row of a delivery at a lower QoS than its message's (a QoS 2 message to a QoS 1
    subscription, packed negative beside the queued message) is written with the delivery's QoS and
    packet id, and a restart sends it so."""
    cfg = config(tmp_path, durability="periodic", autosave_interval=3600.0)
    path = cfg.database_path()
    store = SqliteStore(path, cfg.durability, cfg.autosave_interval)
    b = Broker(cfg, now=0.0, store=store)
    offline_sessions(b, 1, "d/#", 0.0)
    b.sessions["fan-0000"]._next_pid = 700
    pub = b.connection_made("127.0.0.1", 1, 1.0)
    b.data_received(pub, w.connect("p") + w.publish("d/2", b"two", qos=2, packet_id=9), 1.0)
    b.data_received(pub, w.pubrel(9), 1.0)
    session = b.sessions["fan-0000"]
    assert [unpack_meta(m, meta) for m, meta in zip(session.queue, session.queue_meta)] == [(1, b._seq, 701)]
    store.close()
    assert rows(path, "SELECT topic, payload, qos, packet_id, state FROM deliveries") == [("d/2", b"two", 1, 701, 2)]
    store = SqliteStore(path, cfg.durability, cfg.autosave_interval)
    b = Broker(cfg, now=10.0, store=store)
    c = b.connection_made("127.0.0.1", 2, 10.0)
    b.data_received(c, w.connect("fan-0000", clean=False), 10.0)
    assert publishes(b"".join(c.out)) == [w.publish("d/2", b"two", qos=1, packet_id=701)]
    store.close()


def _periodic_mix(tmp_path: Path, name: str) -> Tuple[List[tuple], List[tuple], int, int, int]:
    """durability periodic, no save due: an online persistent subscriber acknowledging everything (on
    t/#), two offline ones queueing t/q/# and t/q/b/# (one shared copy per message), the first back for
    a while acknowledging all but two of its queue (the last delivery of its t/q/a messages: their
    shared copies' INSERTs are cancelled), then a save. What the save wrote (deliveries, messages), the
    buffer's largest length, the commits before the save, and the most entries not cancelled."""
    cfg = config(tmp_path / name, durability="periodic", autosave_interval=3600.0)
    path = cfg.database_path()
    store = SqliteStore(path, cfg.durability, cfg.autosave_interval)
    b = Broker(cfg, now=0.0, store=store)
    offline_sessions(b, 2, "t/q/#", 0.0)
    c = b.connection_made("127.0.0.1", 2, 0.0)
    b.data_received(c, w.connect("fan-0001", clean=False) + w.unsubscribe(2, ["t/q/#"])
                    + w.subscribe(3, [("t/q/b/#", 1)]), 0.0)
    b.connection_lost(c, 0.0)
    on = b.connection_made("127.0.0.1", 2, 0.0)
    b.data_received(on, w.connect("on", clean=False) + w.subscribe(1, [("t/#", 1)]), 0.0)
    pub = b.connection_made("127.0.0.1", 1, 0.0)
    b.data_received(pub, w.connect("p"), 0.0)
    store.commit(0.0, force=True)
    commits = store.commits
    longest = live = 0
    pid = 0
    for i in range(120):
        pid = pid % 60000 + 1
        topic = f"t/q/{'ab'[i % 10 == 0]}/{i}" if i % 5 == 0 else f"t/a/{i}"
        b.data_received(pub, w.publish(topic, topic.encode(), qos=1, packet_id=pid), 1.0)
        drain(b, on, 1.0)
        if i == 60:  # fan-0000 comes back, takes what waits, acknowledges all but the last two, leaves
            back = b.connection_made("127.0.0.1", 3, 1.0)
            b.data_received(back, w.connect("fan-0000", clean=False), 1.0)
            got = publishes(b"".join(back.out))
            b.data_received(back, b"".join(w.puback(packet_id_of(p)) for p in got[:-2]), 1.0)
            b.connection_lost(back, 1.0)
        b.end_turn(1.0)
        longest = max(longest, len(store.buffered))
        live = max(live, sum(op is not None for op in store.buffered))
    before_save = store.commits - commits
    store.commit(2.0, force=True)
    deliveries = rows(path, "SELECT seq, client_id, msg_id, topic, payload, qos, packet_id, state FROM deliveries "
                            "ORDER BY seq")
    messages = rows(path, "SELECT id, topic, payload FROM messages ORDER BY id")
    store.close()
    return deliveries, messages, longest, before_save, live


def test_periodic_buffer_drops_cancelled_entries_and_the_save_is_the_same(tmp_path, monkeypatch):
    """durability periodic keeps every change until the save; a delivery acknowledged before it
    cancels its INSERT, which left an empty slot per message (up to PERIODIC_MAX_OPS, then the save
    came early). Compacting the buffer once it is mostly cancelled bounds it, and what the save then
    writes (pending INSERTs renumbered: own copies, shared copies, deliveries acknowledged after the
    compaction) is what it writes without compaction."""
    from edgebroker import store as store_mod
    monkeypatch.setattr(store_mod, "COMPACT_AT", 10 ** 9)
    plain = _periodic_mix(tmp_path, "plain")
    monkeypatch.setattr(store_mod, "COMPACT_AT", 8)
    compacted = _periodic_mix(tmp_path, "compacted")
    assert plain[3] == compacted[3] == 0, "a save came before it was due"
    # without compaction a slot per message; with it, a few times what is not cancelled (the buffer is
    # looked at again once it has doubled since)
    assert plain[2] >= 120 and compacted[2] <= 4 * compacted[4] and compacted[2] < plain[2] * 2 // 3, \
        (plain[2:], compacted[2:])
    assert compacted[:2] == plain[:2]
    deliveries, messages = plain[:2]
    # what the save holds: for fan-0001 its 12 t/q/b messages, for fan-0000 the two it did not
    # acknowledge and the 11 queued after it left; nothing for the online subscriber; each message once
    by_client = {cid: [d for d in deliveries if d[1] == cid] for cid in ("fan-0000", "fan-0001", "on")}
    assert len(by_client["fan-0001"]) == 12 and len(by_client["fan-0000"]) == 13 and not by_client["on"]
    topic_of = {msg_id: topic for msg_id, topic, _ in messages}
    topics = {d[3] if d[2] is None else topic_of[d[2]] for d in deliveries}
    assert len(topics) == len(messages) + sum(1 for d in deliveries if d[2] is None)


def test_schema_4_database_is_migrated_and_its_copies_shared(tmp_path):
    """A database of schema version 4 (before messages were stored once) with one message stored for
    three sessions and another for one: migration 5 keeps one copy of the first, leaves the second in
    its row, and every session still gets its message after the restart."""
    sqlite_utils = pytest.importorskip("sqlite_utils")
    cfg = config(tmp_path)
    path = cfg.database_path()
    os.makedirs(os.path.dirname(path))
    db = sqlite_utils.Database(path)
    for migration in MIGRATIONS[:4]:
        migration(db)
    db.execute("PRAGMA user_version = 4")
    for cid in ("a", "b", "c"):
        db["sessions"].insert({"client_id": cid, "disconnected_at": 1.0})
        db["subscriptions"].insert({"client_id": cid, "topic_filter": "m/#", "qos": 1})
    seq = 0
    for cid in ("a", "b", "c"):
        seq += 1
        db["deliveries"].insert({"seq": seq, "client_id": cid, "topic": "m/x", "payload": b"P" * 1000, "qos": 1,
                                 "retain": 0, "packet_id": 1, "state": 2})
    db["deliveries"].insert({"seq": 4, "client_id": "a", "topic": "m/y", "payload": b"only a", "qos": 1,
                             "retain": 0, "packet_id": 2, "state": 2})
    db.conn.commit()
    db.close()

    store = SqliteStore(path)
    assert rows(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(path, "SELECT topic, length(payload) FROM messages") == [("m/x", 1000)]
    assert rows(path, "SELECT seq, topic, msg_id IS NULL FROM deliveries ORDER BY seq") == \
        [(1, None, 0), (2, None, 0), (3, None, 0), (4, "m/y", 1)]
    b = Broker(cfg, now=10.0, store=store)
    for cid, expected in (("a", [("m/x", b"P" * 1000), ("m/y", b"only a")]), ("b", [("m/x", b"P" * 1000)]),
                          ("c", [("m/x", b"P" * 1000)])):
        c = b.connection_made("127.0.0.1", 1, 10.0)
        b.data_received(c, w.connect(cid, clean=False), 10.0)
        got = drain(b, c, 10.0)
        assert [(topic_at(p)[0], p[topic_at(p)[1] + 2:]) for p in got] == expected, cid
        b.connection_lost(c, 10.0)
    store.close()
    assert rows(path, "SELECT count(*) FROM deliveries") == [(0,)]
    assert rows(path, "SELECT count(*) FROM messages") == [(0,)]
