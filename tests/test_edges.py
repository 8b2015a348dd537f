"""Mosquitto's choices at the protocol's edges, and what one client on the LAN must not be able to do.

Where MQTT 3.1.1 leaves a choice, the broker makes Mosquitto 2.0's (checked against Debian's mosquitto
2.0.11): deep topics are refused past 201 levels, PUBLISH into `$SYS` is acknowledged and discarded, an
acknowledgement of the wrong kind closes the connection, a 3.1 CONNACK has no session-present flag, a will
over message_size_limit refuses the CONNECT. In-memory tests use test_core's harness; wire tests a
running broker on loopback.
"""
from __future__ import annotations

from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mqttwire as w
from edgebroker import __version__
from edgebroker.codec import MAX_TOPIC_LEVELS, Parser, valid_topic_filter, valid_topic_name
from edgebroker.errors import MalformedPacket
from edgebroker.packets import Connack, Puback, Pubcomp, Publish, Pubrec, Pubrel
from edgebroker.topics import TopicTree, filter_matches
from mqttwire import RawClient, hexs
from test_core import Core, fields
from test_wire import open_client  # noqa: F401  (a fixture)

def _connected(open_client: Callable[[], RawClient], client_id: str) -> RawClient:
    c = open_client()
    got = c.connect(client_id)
    assert got == w.connack(False, 0), hexs(got)
    return c


# ---- deep topics ------------------------------------------------------------------------------------

def test_topic_tree_walk_survives_thousands_of_levels():
    """The walk is iterative: 5,000 levels (Python's recursion limit is 1,000) through literal, `+` and
    `#` branches, as subscribe, match, unsubscribe. Recursion died here with RecursionError at ~989."""
    depth = 5000
    topic = "/".join(f"l{i}" for i in range(depth))
    tree = TopicTree()
    tree.subscribe(topic, "exact", 1)
    tree.subscribe("/".join(["+"] * depth), "plus", 2)
    tree.subscribe("/".join(["+"] * (depth - 1) + ["#"]), "hash", 0)
    tree.subscribe("/".join(f"l{i}" for i in range(depth // 2)) + "/#", "half", 1)
    assert tree.match(topic) == {"exact": 1, "plus": 2, "hash": 0, "half": 1}
    assert tree.match(topic + "/more") == {"hash": 0, "half": 1}
    assert tree.match("/".join(["x"] * depth)) == {"plus": 2, "hash": 0}
    assert tree.unsubscribe(topic, "exact")
    assert tree.match(topic) == {"plus": 2, "hash": 0, "half": 1}
    assert filter_matches("/".join(["+"] * depth), topic)


LEVEL = st.sampled_from(["a", "b", "", "$x"])


@st.composite
def deep_or_wide(draw):  # type: ignore[no-untyped-def]
    """A topic of up to 3,000 levels made of a repeated short pattern (deep), plus filters derived from
    it (some levels turned to `+`, perhaps cut short with `#`), or unrelated ones."""
    pattern = draw(st.lists(LEVEL, min_size=1, max_size=4))
    repeat = draw(st.integers(1, 3000 // len(pattern)))
    levels = (pattern * repeat)[:3000]
    filters = []
    for _ in range(draw(st.integers(1, 6))):
        f = list(levels)
        for i in draw(st.lists(st.integers(0, len(f) - 1), max_size=20)):
            f[i] = "+"
        if draw(st.booleans()):
            f = f[:draw(st.integers(0, len(f)))] + ["#"]
        if draw(st.booleans()):
            f[draw(st.integers(0, len(f) - 1))] = "zz"  # one level that cannot match
        filters.append("/".join(f))
    return "/".join(levels), filters


@settings(max_examples=60, deadline=None)
@given(case=deep_or_wide())
def test_property_deep_topics_match_as_filter_matches_says(case):
    """Very deep topics: the tree's walk agrees with filter_matches (a loop over levels, no recursion)
    for every derived filter; then unsubscribing all of them empties the tree."""
    topic, filters = case
    tree = TopicTree()
    for i, f in enumerate(filters):
        tree.subscribe(f, i, i % 3)
    expected = {i: i % 3 for i, f in enumerate(filters) if filter_matches(f, topic)}
    assert tree.match(topic) == expected
    for i, f in enumerate(filters):
        assert tree.unsubscribe(f, i)
    assert tree.match(topic) == {} and tree.count == 0 and tree._root.children == {}


@settings(max_examples=20, deadline=None)
@given(width=st.integers(1, 20_000), pick=st.integers(0, 19_999))
def test_property_wide_tree_matches_one_sibling(width, pick):
    """Very wide: tens of thousands of sibling levels under one parent, plus `+` and `#`; a topic
    matches its own sibling and the wildcards only."""
    tree = TopicTree()
    for i in range(width):
        tree.subscribe(f"site/{i}/t", i, 1)
    tree.subscribe("site/+/t", "plus", 0)
    tree.subscribe("site/#", "hash", 2)
    i = pick % width
    assert tree.match(f"site/{i}/t") == {i: 1, "plus": 0, "hash": 2}
    assert tree.match(f"site/{width}/t") == {"plus": 0, "hash": 2}


def test_codec_refuses_topics_deeper_than_mosquittos_limit():
    """201 levels (200 separators) pass, 202 do not: Mosquitto 2.0.11 accepts a SUBSCRIBE, UNSUBSCRIBE,
    PUBLISH and will topic of 201 levels and closes the connection at 202 (checked against it)."""
    assert MAX_TOPIC_LEVELS == 201
    ok = "/".join(["a"] * 201)
    deep = "/".join(["a"] * 202)
    assert valid_topic_name(ok) and not valid_topic_name(deep)
    assert valid_topic_filter(ok) and not valid_topic_filter(deep)
    assert valid_topic_filter("/".join(["+"] * 200 + ["#"])) and not valid_topic_filter("/".join(["+"] * 201 + ["#"]))
    assert Parser().feed(w.publish(ok, b"x")) == [Publish(ok, b"x", 0, False, False, 0)]
    for data in (w.publish(deep, b"x"), w.publish(deep, b"x", qos=1, packet_id=1),
                 w.subscribe(1, [(deep, 0)]), w.unsubscribe(1, [deep]),
                 w.connect("c", will=w.Will(deep, b"x", 0, False))):
        with pytest.raises(MalformedPacket, match="more than 201 levels"):
            Parser().feed(data)


def test_deep_topics_close_one_connection_and_the_broker_serves_on(open_client):
    """A client subscribing and publishing 1,000 levels, as a filter of `+`, and as a will topic: each
    loses its connection (no SUBACK, no PUBACK, no CONNACK), and the broker keeps serving the others.
    Before the limit and the iterative walk, this subscribe + publish killed the whole broker."""
    watcher = _connected(open_client, "watcher")
    watcher.send(w.subscribe(1, [("ok/#", 1)]))
    assert watcher.read_raw_packet() == w.suback(1, [1])
    deep = "/".join(["d"] * 1000)
    c = _connected(open_client, "deep-sub")
    c.send(w.subscribe(1, [(deep, 0)]))
    c.expect_closed()
    c = _connected(open_client, "deep-plus")
    c.send(w.subscribe(1, [("/".join(["+"] * 1000), 0)]))
    c.expect_closed()
    c = _connected(open_client, "deep-pub")
    c.send(w.publish(deep, b"x", qos=1, packet_id=1))
    c.expect_closed()
    c = open_client()
    c.send(w.connect("deep-will", will=w.Will(deep, b"gone", 1, False)))
    c.expect_closed()
    # The deepest allowed: 201 levels, subscribed and delivered.
    ok = "ok/" + "/".join(["d"] * 200)
    c = _connected(open_client, "deep-ok")
    c.send(w.publish(ok, b"fine", qos=1, packet_id=7))
    assert c.read_raw_packet() == w.puback(7)
    got = watcher.read_raw_packet()
    assert got[0] == 0x32 and got.endswith(b"fine") and ok.encode() in got
    watcher.send(w.puback(int.from_bytes(got[5 + len(ok):7 + len(ok)], "big")))
    watcher.ping()


# ---- PUBLISH into $SYS ------------------------------------------------------------------------------

@pytest.mark.parametrize("topic", ["$SYS/broker/version", "$SYS/fake/alarm", "$SYS", "$SYSX/a"])
def test_publish_into_sys_is_acknowledged_and_discarded(topic):
    """Mosquitto 2.0.11 acknowledges a client's PUBLISH to any topic starting with `$SYS` (even `$SYS`
    and `$SYSX/a`) and discards it: no delivery, nothing retained, nothing stored. QoS 2 completes its
    flow [MQTT-4.3.3-2]."""
    core = Core()
    watcher = core.connect("watcher")
    watcher.subscribe(1, ("$SYS/#", 2), ("$SYS", 2), ("$SYSX/#", 2))
    dev = core.connect("dev")
    dev.send(w.publish(topic, b"fake", qos=1, packet_id=1, retain=True))
    assert dev.take() == [Puback(1)]
    dev.send(w.publish(topic, b"fake", qos=2, packet_id=2, retain=True))
    assert dev.take() == [Pubrec(2)]
    dev.send(w.pubrel(2))
    assert dev.take() == [Pubcomp(2)]
    dev.send(w.publish(topic, b"fake", qos=0, retain=True))
    watcher.ping()
    assert topic not in core.broker.retained
    late = core.connect("late")
    assert late.subscribe(1, (topic, 0)) == []
    # The broker's own $SYS tree still reaches subscribers.
    core.broker.publish_sys(core.now)
    assert any(p.topic == "$SYS/broker/version" for p in watcher.publishes())


def test_lowercase_sys_is_an_ordinary_topic():
    """Only `$SYS` is the broker's: `$sys/x` is a topic like any other `$` topic (as Mosquitto)."""
    core = Core()
    s = core.connect("s")
    s.subscribe(1, ("$sys/x", 0))
    dev = core.connect("dev")
    dev.send(w.publish("$sys/x", b"v", retain=True))
    assert [fields(p) for p in s.publishes()] == [("$sys/x", b"v", 0, False, False)]
    assert "$sys/x" in core.broker.retained


def test_sys_retained_from_an_older_database_is_dropped_at_start(tmp_path):
    """A retained `$SYS/fake/alarm` saved by a version that accepted it is not restored (and is
    deleted from the database); other retained messages are."""
    from edgebroker.broker import Broker
    from edgebroker.config import Config
    from edgebroker.store import SqliteStore

    path = str(tmp_path / "e.db")
    store = SqliteStore(path)
    store.retained_set("$SYS/fake/alarm", b"fire", 0)
    store.retained_set("plant/temp", b"21", 1)
    store.close()
    store = SqliteStore(path)
    broker = Broker(Config(persistence=False, sys_interval=0), 0.0, store=store)
    assert list(broker.retained) == ["plant/temp"]
    broker.end_turn(0.0)
    store.close()
    store = SqliteStore(path)
    assert [t for t, _, _ in store.load().retained] == ["plant/temp"]
    store.close()


def test_publish_into_sys_over_the_wire_is_acknowledged_and_not_retained(open_client):
    dev = _connected(open_client, "dev")
    dev.send(w.publish("$SYS/broker/version", b"fake", qos=1, packet_id=1, retain=True))
    assert dev.read_raw_packet() == w.puback(1)
    sub = _connected(open_client, "sub")
    sub.send(w.subscribe(1, [("$SYS/broker/version", 0)]))
    assert sub.read_raw_packet() == w.suback(1, [0])
    got = sub.read_raw_packet()  # the broker's own value, retained by its $SYS publisher
    assert got.startswith(b"\x31") and got.endswith(b"edgebroker version " + __version__.encode()), hexs(got)
    sub.ping()


# ---- acknowledgements of the wrong kind ---------------------------------------------------------------

def _one_in_flight(qos: int):  # type: ignore[no-untyped-def]
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("t", 2))
    pub = core.connect("pub")
    pub.send(w.publish("t", b"m", qos=qos, packet_id=5))
    pub.take()
    if qos == 2:
        pub.send(w.pubrel(5))
        pub.take()
    got = sub.publishes()
    assert len(got) == 1 and got[0].qos == qos
    return core, sub, got[0].packet_id


@pytest.mark.parametrize("qos,acks", [
    (1, [w.pubrec]),              # QoS 1 is acknowledged by PUBACK only [MQTT-4.3.2-1]
    (1, [w.pubcomp]),             # [MQTT-4.3.2-1]
    (2, [w.puback]),              # QoS 2: PUBREC, then PUBCOMP [MQTT-4.3.3-1]
    (2, [w.pubcomp]),             # PUBCOMP before PUBREC [MQTT-4.3.3-1]
    (2, [w.pubrec, w.puback]),    # PUBACK for the PUBREL in flight [MQTT-4.3.3-1]
])
def test_MQTT_4_8_0_1_wrong_kind_of_acknowledgement_closes_the_connection(qos, acks):
    """An acknowledgement that does not fit the message in flight under that packet id is a protocol
    violation: the connection closes [MQTT-4.8.0-1], as Mosquitto 2.0.11 does ("disconnected due to
    protocol error"; checked against it)."""
    core, sub, pid = _one_in_flight(qos)
    for ack in acks[:-1]:
        sub.send(ack(pid))
        assert sub.take() == [Pubrel(pid)] and not sub.closed
    sub.send(acks[-1](pid))
    assert sub.closed
    assert core.logged(f"protocol error: {acks[-1].__name__.upper()} for packet id {pid}")


def test_wrong_kind_in_a_run_of_pubacks_closes_too():
    """The fast path for a read of PUBACKs only checks the kind as well."""
    core, sub, pid = _one_in_flight(2)
    sub.send(w.puback(pid) + w.puback(pid))
    assert sub.closed


@pytest.mark.parametrize("ack", [w.puback, w.pubcomp])
def test_acknowledgement_for_an_unknown_id_is_ignored(ack):
    """An id not in flight (acknowledged already, or never used) is ignored, as Mosquitto does; a
    PUBREC for one still gets its PUBREL [MQTT-4.3.3-1]."""
    core, sub, pid = _one_in_flight(1)
    sub.send(w.puback(pid))
    sub.send(ack(pid))
    sub.send(ack(pid + 100))
    sub.ping()
    sub.send(w.pubrec(pid + 100))
    assert sub.take() == [Pubrel(pid + 100)]
    assert not sub.closed


def test_wrong_kind_closes_and_a_persistent_session_gets_the_message_again():
    """The message stays in flight when its acknowledgement was of the wrong kind: on reconnect it is
    resent with DUP [MQTT-4.4.0-1]."""
    core = Core()
    sub = core.connect("sub", clean=False)
    sub.subscribe(1, ("t", 1))
    pub = core.connect("pub")
    pub.send(w.publish("t", b"m", qos=1, packet_id=5))
    pid = sub.publishes()[0].packet_id
    sub.send(w.pubrec(pid))
    assert sub.closed
    again = core.connect("sub", clean=False, present=True)
    assert [fields(p) for p in again.publishes()] == [("t", b"m", 1, False, True)]


def test_wrong_kind_of_acknowledgement_over_the_wire(open_client):
    sub = _connected(open_client, "sub")
    sub.send(w.subscribe(1, [("t", 1)]))
    assert sub.read_raw_packet() == w.suback(1, [1])
    pub = _connected(open_client, "pub")
    pub.send(w.publish("t", b"m", qos=1, packet_id=5))
    assert pub.read_raw_packet() == w.puback(5)
    got = sub.read_raw_packet()
    pid = int.from_bytes(got[5:7], "big")
    sub.send(w.pubcomp(pid))
    sub.expect_closed()
    pub.ping()


# ---- CONNACK for MQTT 3.1, will size ------------------------------------------------------------------

def test_mqtt31_connack_has_no_session_present_flag():
    """MQTT 3.1 (MQIsdp, level 3) has no session-present flag: a 3.1 client resuming its session with
    clean session 0 gets 20 02 00 00, as from Mosquitto 2.0.11 (checked); a 3.1.1 client gets 01."""
    core = Core()
    for expected in (False, False):
        c = core.open()
        c.send(w.connect("old", clean=False, proto_name="MQIsdp", level=3))
        assert c.take() == [Connack(expected, 0)]
        c.lose()
    c = core.open()
    c.send(w.connect("old", clean=False))
    assert c.take() == [Connack(True, 0)]  # [MQTT-3.2.2-2]


def test_mqtt31_connack_bytes_over_the_wire(open_client):
    for _ in range(2):
        c = open_client()
        assert c.connect("old31", clean=False, proto_name="MQIsdp", level=3) == bytes.fromhex("20020000")
        c.close()


def test_will_over_message_size_limit_refuses_the_connect():
    """Mosquitto 2.0.11 answers a CONNECT whose will payload is over message_size_limit with CONNACK 5
    (not authorized) and closes (checked against it); at the limit it is accepted."""
    core = Core(message_size_limit=100)
    c = core.open()
    c.send(w.connect("big", will=w.Will("w/t", b"x" * 101, 1, False)))
    assert c.take() == [Connack(False, 5)]
    assert c.closed
    assert core.logged("will payload of 101 bytes over message_size_limit 100")
    core.connect("ok", will=w.Will("w/t", b"x" * 100, 1, False))
    assert core.broker.stats.clients_connected == 1


def test_will_size_unlimited_by_default():
    core = Core()
    core.connect("big", will=w.Will("w/t", b"x" * 65_535, 0, False))


# ---- retained messages: a tree, and a replay in slices ------------------------------------------------

RLEVELS = ["a", "b", "", "$s"]


@settings(max_examples=200, deadline=None)
@given(topics=st.lists(st.lists(st.sampled_from(RLEVELS), min_size=1, max_size=4).map("/".join).filter(bool),
                       min_size=1, max_size=30),
       drop=st.sets(st.integers(0, 29)),
       filters=st.lists(st.builds(lambda lv, h: "/".join(lv + (["#"] if h else [])),
                                  st.lists(st.sampled_from(RLEVELS + ["+"]), max_size=4), st.booleans())
                        .filter(bool), min_size=1, max_size=10))
def test_property_retained_tree_matches_what_filter_matches_accepts(topics, drop, filters):
    """The retained tree returns, for any filter, exactly the retained topics filter_matches accepts
    ($ topics and `#` matching the parent level included), also after some are cleared, and its byte
    count and pruning follow."""
    from edgebroker.retained import RetainedTree

    tree: RetainedTree[str] = RetainedTree()
    for t in topics:
        tree.set(t, t, len(t))
    for i in sorted(drop):
        if i < len(topics):
            tree.pop(topics[i])
    kept = {t for i, t in enumerate(topics) if i not in drop and t not in {topics[j] for j in drop if j < len(topics)}}
    assert set(tree) == kept and tree.payload_bytes == sum(len(t) for t in kept)
    for f in filters:
        got = tree.matching(f)
        assert sorted(got) == sorted(t for t in kept if filter_matches(f, t)), f
        assert len(got) == len(set(got))
    for t in list(tree):
        tree.pop(t)
    assert tree._root.children == {} and tree.payload_bytes == 0


def test_retained_tree_walks_only_the_branches_a_filter_allows():
    """`site/7/+` must not look at the 20,000 topics under `other/`: their branch is poisoned."""
    from edgebroker.retained import RetainedTree

    class Poisoned(dict):
        def items(self):  # type: ignore[no-untyped-def]
            raise AssertionError("walked a branch the filter excludes")
        values = get = __getitem__ = items  # type: ignore[assignment]

    tree: RetainedTree[str] = RetainedTree()
    for i in range(20_000):
        tree.set(f"other/{i}", "x", 1)
    for i in range(10):
        tree.set(f"site/7/{i}", f"v{i}", 2)
    tree._root.children["other"].children = Poisoned(tree._root.children["other"].children)
    assert tree.matching("site/7/+") == [f"v{i}" for i in range(10)]
    assert tree.matching("site/+/3") == ["v3"]
    assert tree.matching("site/#") == [f"v{i}" for i in range(10)]


def test_retained_replay_goes_out_in_slices_and_live_messages_wait_behind_it():
    """A subscription to 5,000 retained messages (600 KB) writes about REFILL_BYTES per turn, not all
    of it at once (it froze every other client); between slices other clients are served; a live
    message to a replayed topic, published during the replay, arrives after the retained one, so the
    last value the subscriber sees is the newest. Every retained message arrives once, in tree order."""
    from edgebroker.broker import REFILL_BYTES

    core = Core()
    pub = core.connect("pub")
    for i in range(5000):
        pub.send(w.publish(f"plant/{i}", b"x" * 100, retain=True))
    sub = core.connect("sub")
    sub.send(w.subscribe(1, [("plant/#", 0)]))
    conn = sub.conn
    assert conn.refill_held and conn.out_size <= REFILL_BYTES + 200
    first = sub.take()
    assert first[0].__class__.__name__ == "Suback"
    seen = [p.topic for p in first[1:]]
    # Meanwhile another client is served, and a live value for plant/4999 is published.
    other = core.connect("other")
    other.ping()
    pub.send(w.publish("plant/4999", b"new"))
    turns = 0
    while conn.refill_held:
        assert conn.out_size <= REFILL_BYTES + 200
        got = sub.take()
        seen += [(p.topic, p.payload) if p.topic == "plant/4999" else p.topic for p in got]
        core.broker.output_drained(conn)
        core.broker.end_turn(core.now)
        turns += 1
    seen += [(p.topic, p.payload) if p.topic == "plant/4999" else p.topic for p in sub.take()]
    assert turns >= 5000 * 110 // REFILL_BYTES - 1
    assert seen[:4999] == [f"plant/{i}" for i in range(4999)]
    assert seen[4999:] == [("plant/4999", b"x" * 100), ("plant/4999", b"new")]
    # After the replay, live QoS 0 messages go straight out again.
    pub.send(w.publish("plant/1", b"live"))
    assert [p.payload for p in sub.publishes()] == [b"live"]
    assert conn.replay is None


def test_many_filter_subscribe_over_many_retained_gets_each_match_once_per_filter():
    """One SUBSCRIBE of 1,000 wildcard filters over 20,000 retained messages: each filter gets its
    matches [MQTT-3.3.1-6] (a message matched by two filters of one SUBSCRIBE is sent for each, as
    Mosquitto does); the subscriber gets them all, in slices."""
    core = Core()
    pub = core.connect("pub")
    for i in range(20_000):
        pub.send(w.publish(f"site/{i % 1000}/dev/{i // 1000}", b"%d" % i, retain=True))
    sub = core.connect("sub")
    filters = [(f"site/{i}/+/+", 0) for i in range(1000)]
    sub.send(w.subscribe(1, filters))
    got = sub.take()
    sub.conn.refill_held = bool(sub.conn.replay)
    while sub.conn.refill_held:
        core.broker.output_drained(sub.conn)
        core.broker.end_turn(core.now)
        got += sub.take()
    pubs = [p for p in got if isinstance(p, Publish)]
    assert len(pubs) == 20_000
    assert sorted(int(p.payload) for p in pubs) == list(range(20_000))
    assert all(p.retain for p in pubs)


def test_sys_stored_bytes_follow_retained_payloads():
    core = Core()
    pub = core.connect("pub")
    pub.send(w.publish("a", b"12345", retain=True))
    pub.send(w.publish("b", b"1", retain=True))
    pub.send(w.publish("a", b"12", retain=True))
    assert core.broker.retained.payload_bytes == 3
    pub.send(w.publish("b", b"", retain=True))  # clears it [MQTT-3.3.1-10]
    assert core.broker.retained.payload_bytes == 2 and list(core.broker.retained) == ["a"]


# ---- out of file descriptors ------------------------------------------------------------------------

_FD_BROKER = r"""
import os, resource, sys
from edgebroker import log as L
from edgebroker.config import Config, Listener
from edgebroker.server import Server
server = Server(Config(listeners=[Listener(0, "127.0.0.1")], allow_anonymous=True, persistence=False, sys_interval=1),
                log=L.Logger(L.DEFAULT_TYPES, stream=sys.stderr))
room = int(sys.argv[1])
# Room for exactly `room` more descriptors: each accepted connection takes one.
limit = len(os.listdir("/proc/self/fd")) - 1 + room  # listdir's own descriptor is closed again
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print("PORT", server.ports[0], flush=True)
server.serve_forever()
"""


def test_out_of_file_descriptors_refuses_at_once_logs_once_and_recovers(tmp_path):
    """With the open-files limit reached, accept() fails with EMFILE. The broker used to leave the
    connection in the backlog and spin, logging the error every turn; now each waiting connection is
    accepted on a spare descriptor and closed at once (the client sees a close, no CONNACK), the error is
    logged once per episode, the refusals are counted in $SYS/broker/connections/refused, the listener
    is polled again when a connection closes, and new clients then connect."""
    import subprocess
    import sys
    from pathlib import Path

    from test_persistence import child_env, read_line
    from util import wait_for

    room = 4
    log_path = tmp_path / "broker.log"
    with open(log_path, "wb") as log_file:
        p = subprocess.Popen([sys.executable, "-c", _FD_BROKER, str(room)], cwd=str(Path(__file__).parent.parent),
                             env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log_file)
    clients = []
    try:
        port = int(read_line(p.stdout, 10.0, "PORT line").split()[1])

        def client(cid: str) -> RawClient:
            c = RawClient("127.0.0.1", port, timeout=5.0)
            clients.append(c)
            return c

        held = []
        for i in range(room):
            c = client(f"c{i}")
            assert c.connect(f"c{i}") == w.connack(False, 0)
            held.append(c)
        for i in range(3):
            c = client(f"refused{i}")
            c.send(w.connect(f"refused{i}"))
            c.expect_closed()
        held[0].ping()  # the broker still serves its clients, and a few turns have passed
        log = log_path.read_text()
        assert log.count("Error accepting connections") == 1, log
        assert "Too many open files" in log, log

        held[0].send(w.disconnect())  # frees a descriptor: the listener is polled again
        held[0].expect_closed()
        late = client("late")
        assert late.connect("late") == w.connack(False, 0)
        wait_for(lambda: "Accepting connections again (3 refused" in log_path.read_text(), what="recovery line")
        late.send(w.subscribe(1, [("$SYS/broker/connections/refused", 0)]))
        assert late.read_raw_packet() == w.suback(1, [0])
        got = late.read_raw_packet()  # retained: perhaps from before the last refusal; then each second
        while not got.endswith(b"connections/refused3"):
            assert got[-1:] in (b"0", b"1", b"2"), hexs(got)
            got = late.read_raw_packet()
        assert log_path.read_text().count("Error accepting connections") == 1
    finally:
        for c in clients:
            c.close()
        p.terminate()
        p.wait(10)
        p.stdout.close()


# ---- $SYS: Mosquitto's tree -------------------------------------------------------------------------

#: Every $SYS topic Debian's mosquitto 2.0.11 published within 3 s of start (sys_interval 1, two clients,
#: one retained message), recorded from it: ours must carry each of them.
MOSQUITTO_SYS = """bytes/received bytes/sent clients/active clients/connected clients/disconnected clients/expired
clients/inactive clients/maximum clients/total heap/current heap/maximum messages/received messages/sent
messages/stored publish/bytes/received publish/bytes/sent publish/messages/dropped publish/messages/received
publish/messages/sent shared_subscriptions/count store/messages/bytes store/messages/count
subscriptions/count uptime version""".split() + ["retained messages/count"] + [
    f"load/{name}/{window}" for name in ("bytes/received", "bytes/sent", "connections", "messages/received",
                                         "messages/sent", "publish/dropped", "publish/received", "publish/sent",
                                         "sockets") for window in ("1min", "5min", "15min")]


def test_sys_tree_has_every_topic_mosquitto_publishes():
    core = Core()
    core.broker.memory_probe = lambda: 1 << 20
    sub = core.connect("sub")
    sub.subscribe(1, ("$SYS/#", 0))
    core.broker.publish_sys(1.0)
    ours = {p.topic for p in sub.publishes()}
    missing = [t for t in MOSQUITTO_SYS if "$SYS/broker/" + t not in ours]
    assert not missing, missing


def test_sys_publish_bytes_count_payload_bytes_received_and_sent():
    """$SYS/broker/publish/bytes/received and /sent: payload bytes of PUBLISH packets, as Mosquitto
    counts them: received once per PUBLISH, sent once per copy (QoS 0 fan-out, QoS 1, queued and
    retained deliveries alike)."""
    core = Core()
    a = core.connect("a")
    a.subscribe(1, ("t/#", 1))
    b = core.connect("b")
    b.subscribe(1, ("t/#", 0))
    pub = core.connect("pub")
    pub.send(w.publish("t/0", b"12345"))                              # 5 in, 2 x 5 out
    pub.send(w.publish("t/1", b"abc", qos=1, packet_id=1, retain=True))  # 3 in, 2 x 3 out
    pub.send(w.publish("t/2", b"xy", qos=2, packet_id=2) + w.pubrel(2))  # 2 in, 2 x 2 out
    late = core.connect("late")
    late.subscribe(1, ("t/1", 0))                                     # retained: 3 out
    stats = core.broker.stats
    assert stats.publish_bytes_received == 10
    assert stats.publish_bytes_sent == 2 * 10 + 3
    watcher = core.connect("w")
    watcher.subscribe(1, ("$SYS/broker/publish/bytes/+", 0))
    core.broker.publish_sys(1.0)
    got = {p.topic: p.payload for p in watcher.publishes()}
    assert got["$SYS/broker/publish/bytes/received"] == b"10"
    assert got["$SYS/broker/publish/bytes/sent"] == b"23"


# ---- one huge packet --------------------------------------------------------------------------------

BIG = 20 * 1024 * 1024


def test_parser_gathers_a_huge_publish_at_about_its_size_once():
    """A 20 MiB PUBLISH fed in 64 KiB reads, as the loop does: Python allocations peak at about one
    copy of it (the gathering buffer becomes the payload), not three (buffer, bytes of the buffer,
    payload slice), which made a 200 MB PUBLISH cost 624 MiB of RSS."""
    import tracemalloc

    data = w.publish("big/t", b"\x5a" * BIG, qos=1, packet_id=9) + w.pingreq()
    parser = Parser()
    tracemalloc.start()
    try:
        got = []
        for i in range(0, len(data), 65536):
            got += parser.feed(data[i:i + 65536])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(p).__name__ for p in got] == ["Publish", "Pingreq"]
    p = got[0]
    assert (p.topic, p.qos, p.packet_id, len(p.payload)) == ("big/t", 1, 9, BIG)
    assert p.payload == b"\x5a" * BIG
    assert peak < 1.3 * BIG, f"peak {peak / BIG:.2f} x the packet"


def test_parser_large_path_keeps_the_stream_and_its_errors():
    """What follows a large packet in the same read is decoded as usual; a malformed large PUBLISH
    (wildcard topic) is refused like a small one [MQTT-3.3.2-2]."""
    big = w.publish("t", b"y" * (2 * 1024 * 1024), qos=0)
    parser = Parser()
    got = parser.feed(big[:100])
    got += parser.feed(big[100:] + w.publish("u", b"after") + w.pingreq()[:1])
    assert [(p.topic, len(p.payload)) for p in got] == [("t", 2 * 1024 * 1024), ("u", 5)]
    assert [type(p).__name__ for p in parser.feed(w.pingreq()[1:])] == ["Pingreq"]
    bad = w.publish("t/#", b"y" * (2 * 1024 * 1024))
    parser = Parser()
    parser.feed(bad[:100])
    with pytest.raises(MalformedPacket, match="wildcards"):
        parser.feed(bad[100:])


def test_huge_publish_through_the_broker_costs_about_twice_its_size(make_broker):
    """A 20 MiB QoS 0 PUBLISH from one client to a subscriber, through a broker on loopback: the
    broker's Python allocations peak below 2.5 x its size (gathered once, encoded once for the
    subscriber, sent from views of it, never copied at each partial send), and it arrives whole."""
    import socket
    import threading
    import tracemalloc

    b = make_broker(allow_anonymous=True)
    sub = RawClient(b.host, b.port, timeout=30)
    pub = RawClient(b.host, b.port, timeout=30)
    try:
        assert sub.connect("sub") == w.connack(False, 0) and pub.connect("pub") == w.connack(False, 0)
        sub.send(w.subscribe(1, [("big", 0)]))
        assert sub.read_raw_packet() == w.suback(1, [0])
        packet = w.publish("big", b"\x33" * BIG)
        sink = bytearray(len(packet))
        view = memoryview(sink)
        got = 0
        sub.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # partial sends on the broker side
        tracemalloc.start()
        try:
            sender = threading.Thread(target=pub.send, args=(packet,))
            sender.start()
            while got < len(packet):
                n = sub.sock.recv_into(view[got:], min(65536, len(packet) - got))
                assert n, "connection closed"
                got += n
            sender.join(30)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert bytes(sink) == packet
        assert peak < 2.5 * BIG, f"peak {peak / BIG:.2f} x the packet"
        pub.ping()
    finally:
        sub.close()
        pub.close()


def test_a_large_output_left_by_a_partial_send_is_kept_as_a_view_not_copied():
    """Each partial send of a 20 MiB packet used to copy what was left of it (data[sent:]): a 200 MB
    delivery took 11 s. The rest is now a view of the same bytes, and small chunks after a large one
    wait their turn instead of being joined to it."""
    import socket
    import time

    from edgebroker.config import Config, Listener
    from edgebroker.server import Server

    server = Server(Config(listeners=[Listener(0, "127.0.0.1")], allow_anonymous=True, persistence=False))
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        conn = server.broker.connection_made("test", 0, time.monotonic())
        conn.handle = a
        big = b"\x44" * BIG
        conn.write(big)
        conn.write(b"small")
        server._flush(conn, time.monotonic())
        assert isinstance(conn.out[0], memoryview) and conn.out[0].obj is big
        assert conn.out[1:] == [b"small"] and conn.out_size == len(conn.out[0]) + 5
        received = bytearray()
        while conn.out:
            received += b.recv(1 << 20)
            server._flush(conn, time.monotonic())
        b.settimeout(5)
        while len(received) < BIG + 5:
            received += b.recv(1 << 20)
        assert received == big + b"small" and conn.out_size == 0
    finally:
        a.close()
        b.close()
        server.close()


# ---- closing ----------------------------------------------------------------------------------------

def test_a_client_that_closes_its_socket_is_closed_logged_and_forgotten():
    """A client going away (its socket closed, no DISCONNECT) is closed on the broker's side at once, its
    line logged as Mosquitto's, its descriptor closed and out of the poller, whether its SUBACK was read
    or not; one whose last bytes the broker has not read (a DISCONNECT followed by junk) still gets
    what was sent before its close, the drain's way."""
    import os
    import socket
    import threading

    from edgebroker.config import Config, Listener
    from edgebroker.server import Server
    from util import wait_for

    lines = []
    server = Server(Config(allow_anonymous=True, listeners=[Listener(port=0, address="127.0.0.1")],
                           persistence=False), log=lambda level, msg: lines.append(msg))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.ports[0]
    try:
        with RawClient("127.0.0.1", port) as c:  # the loop runs: descriptors counted from here
            assert c.connect("warm") == w.connack(False, 0)
        wait_for(lambda: not server.broker.connections, what="the first client's close")
        before = len(os.listdir("/proc/self/fd"))
        for k in range(5):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(w.connect(f"gone-{k}") + w.subscribe(1, [(f"t/{k}", 0)]))
            if k % 2:
                assert s.recv(9) == w.connack(False, 0) + w.suback(1, [0])
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10.0)
            got = b""
            while True:  # the broker's close: end of file after what it had to send
                more = s.recv(64)
                if not more:
                    break
                got += more
            assert got in (b"", w.connack(False, 0) + w.suback(1, [0])), hexs(got)
            s.close()
        wait_for(lambda: sum("closed its connection" in line for line in lines) == 6, what="six lines")
        assert [line for line in lines if line.startswith("Client gone-")] == [
            f"Client gone-{k} closed its connection." for k in range(5)]
        wait_for(lambda: len(os.listdir("/proc/self/fd")) == before, what="every descriptor closed")
        assert len(server._sel._files) == len(server._listening) + 1  # the listener and the wake socket
        assert not server.broker.connections and not server.broker.sessions
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(w.connect("junk") + w.disconnect() + b"\x00" * 100)
        s.settimeout(10.0)
        got = b""
        while True:
            more = s.recv(64)
            if not more:
                break
            got += more
        assert got == w.connack(False, 0)
        s.close()
    finally:
        server.shutdown()
        thread.join(10)
