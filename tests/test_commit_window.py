"""The commit window (commit_window_ms): changes wait up to the window for their commit, and the
acknowledgements that depend on them wait with them; deliveries to online subscribers do not.

Theory of operation: the broker core runs in this process on a real SQLite file (a Broker with a
SqliteStore, driven through its sans-IO interface); the loop's clock is the `now` each call is given,
so the window's deadlines are exercised without sleeping and without asserting on real time. After
every step the test reads the database with a connection of its own, as a user with sqlite3 would,
and checks that no PUBACK has left (is in the connection's output) for a message whose row is not
committed. The end-to-end form, with kill -9 of a broker process, is in test_persistence.py (the
stream tests run with and without a window).
"""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import List

import pytest

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
    import mqttwire as w
except ImportError:  # tests imported as a package
    from tests import mqttwire as w  # type: ignore[no-redef]

from edgebroker.broker import Broker, Connection
from edgebroker.config import Config, Listener
from edgebroker.configfile import load_config
from edgebroker.errors import ConfigError
from edgebroker.store import COMMIT_BATCH, NullStore, SqliteStore

WINDOW = 0.2


def config(tmp_path: Path, **overrides) -> Config:  # type: ignore[no-untyped-def]
    kw = dict(persistence=True, persistence_location=str(tmp_path / "data"), allow_anonymous=True,
              listeners=[Listener(0, "127.0.0.1")], sys_interval=0)
    kw.update(overrides)
    return Config(**kw)  # type: ignore[arg-type]


def rows(path: str, sql: str) -> List[tuple]:
    con = sqlite3.connect(path)
    try:
        return list(con.execute(sql))
    finally:
        con.close()


def sent(conn: Connection) -> List[bytes]:
    """What the connection has been given to send, as packets; the output is then emptied (sent)."""
    packets = w.split_packets(b"".join(conn.out))
    conn.out.clear()
    conn.out_size = 0
    return packets


def packet_id_of(packet: bytes) -> int:
    i = 1
    while packet[i] & 0x80:
        i += 1
    i += 1
    i += 2 + int.from_bytes(packet[i:i + 2], "big")
    return int.from_bytes(packet[i:i + 2], "big")


class Rig:
    """A broker on a real database with a commit window, a publisher and persistent subscribers."""

    def __init__(self, tmp_path: Path, window: float = WINDOW, subscribers: int = 1, online: bool = False,
                 qos: int = 1) -> None:
        self.cfg = config(tmp_path)
        self.path = self.cfg.database_path()
        self.store = SqliteStore(self.path, commit_window=window)
        self.b = Broker(self.cfg, now=0.0, store=self.store)
        self.subs = []
        for i in range(subscribers):
            c = self.b.connection_made("127.0.0.1", 100 + i, 0.0)
            self.b.data_received(c, w.connect(f"sub{i}", clean=False) + w.subscribe(1, [("t/#", qos)]), 0.0)
            self.b.end_turn(0.0)
            sent(c)
            if online:
                self.subs.append(c)
            else:
                self.b.connection_lost(c, 0.0)
        self.pub = self.b.connection_made("127.0.0.1", 1, 0.0)
        self.b.data_received(self.pub, w.connect("pub"), 0.0)
        self.b.end_turn(0.0)
        sent(self.pub)
        self.store.commit(0.0, force=True)  # sessions noted offline: nothing deferred from here on
        self.acked: List[int] = []  # packet ids whose PUBACK, PUBREC or PUBCOMP left
        self.owned: List[int] = []  # those of PUBACK and PUBCOMP

    def publish(self, packet_id: int, now: float, qos: int = 1) -> None:
        self.b.data_received(self.pub, w.publish(f"t/{packet_id}", b"m%d" % packet_id, qos=qos,
                                                 packet_id=packet_id), now)
        self.turn(now)

    def turn(self, now: float) -> None:
        """The end of a loop turn: commit when due, then what the turn sends leaves."""
        self.b.end_turn(now)
        for p in sent(self.pub):
            assert p[0] in (0x40, 0x50, 0x70), w.hexs(p)
            self.acked.append(int.from_bytes(p[2:4], "big"))
            if p[0] != 0x50:  # PUBACK, PUBCOMP: the message is the broker's (a clean session's PUBREC
                self.owned.append(self.acked[-1])  # holds it in memory only, until PUBREL)
        self.check()

    def stored(self) -> List[str]:
        return [t for (t,) in rows(self.path, "SELECT coalesce(d.topic, m.topic) FROM deliveries d "
                                              "LEFT JOIN messages m ON m.id = d.msg_id")]

    def check(self) -> None:
        """No acknowledgement has left for a message that is not committed (to the offline sessions)."""
        if self.subs:
            return
        stored = self.stored()
        for pid in self.owned:
            assert f"t/{pid}" in stored, f"PUBACK for {pid} left before its commit (committed: {stored})"


def test_puback_waits_for_the_commit_the_window_delays(tmp_path):
    """[MQTT-4.3.2-2] PUBACK means the broker owns the message: with a window of 200 ms, a message for
    an offline persistent session is committed 200 ms after it came, and its PUBACK leaves then, not
    before (a test that fails when the hold is removed: the PUBACK would leave in the first turn)."""
    r = Rig(tmp_path)
    commits = r.store.commits
    r.publish(1, 1.0)
    assert r.acked == [] and r.stored() == []
    assert r.store.wake_at(1.0) == pytest.approx(1.0 + WINDOW)  # the loop comes back for it
    r.publish(2, 1.1)
    r.turn(1.15)
    assert r.acked == [] and r.store.commits == commits
    r.turn(1.0 + WINDOW)
    assert r.acked == [1, 2], "PUBACKs not sent once their commit was made"
    assert sorted(r.stored()) == ["t/1", "t/2"]
    assert r.store.commits == commits + 1, "the two messages were not committed together"
    r.b.data_received(r.pub, w.pingreq(), 1.3)  # answered at once: only acknowledgements wait
    r.b.end_turn(1.3)
    assert sent(r.pub) == [w.pingresp()]
    r.store.close()


def test_window_groups_a_trickle_into_fewer_commits(tmp_path):
    """A message every 50 ms for an offline session: without a window every message is a commit of
    its own; with 200 ms, a commit covers the messages of its window (counted by the store's commit
    counter, the figure $SYS/broker/store/commits shows)."""
    counts = {}
    for window in (0.0, WINDOW):
        d = tmp_path / f"w{window}"
        r = Rig(d, window=window)
        before = r.store.commits
        t = 1.0
        for pid in range(1, 21):
            r.publish(pid, t)
            t += 0.05
            wake = r.store.wake_at(t)
            if wake <= t:  # a loop turn for the timer, as the loop's select timeout would give it
                r.turn(wake)
        r.turn(t + 1.0)
        assert r.acked == list(range(1, 21))
        assert len(r.stored()) == 20
        counts[window] = r.store.commits - before
        r.store.close()
    assert counts[0.0] == 20
    assert counts[WINDOW] <= 6, counts


def test_delivery_acknowledged_within_the_window_is_never_written(tmp_path):
    """An online persistent subscriber gets the message at once (deliveries do not wait) and
    acknowledges it within the window: its row is cancelled before the commit, nothing is written,
    and the publisher's PUBACK leaves as soon as nothing waits, before the window's end."""
    r = Rig(tmp_path, online=True)
    sub = r.subs[0]
    changes = r.store._conn.total_changes
    # A trickle slower than the window: each message starts a window of its own (one cancelled before
    # does not leave its clock running), and each is acknowledged within it.
    for i in range(1, 6):
        t = 1.0 + 0.25 * i
        r.publish(i, t)
        got = [p for p in sent(sub) if p[0] >> 4 == 3]
        assert len(got) == 1, "delivery to an online subscriber waited for the window"
        assert r.acked == list(range(1, i))
        r.b.data_received(sub, w.puback(packet_id_of(got[0])), t + 0.01)
        r.turn(t + 0.01)
        assert r.acked == list(range(1, i + 1)), "PUBACK held although nothing waits for a commit any more"
    r.turn(10.0)
    assert r.store._conn.total_changes == changes, "rows written for deliveries acknowledged in the window"
    r.store.close()


def test_batch_of_waiting_changes_commits_before_the_window_ends(tmp_path):
    """A pipelining publisher is not held back by the window: once COMMIT_BATCH changes wait they are
    committed in that turn, and their PUBACKs leave."""
    r = Rig(tmp_path)
    n = COMMIT_BATCH
    r.b.data_received(r.pub, b"".join(w.publish(f"t/{i}", b"x", qos=1, packet_id=i) for i in range(1, n + 1)), 1.0)
    r.turn(1.0)
    assert r.acked == list(range(1, n + 1))
    assert len(r.stored()) == n
    r.store.close()


def test_qos2_delivery_to_a_persistent_session_is_not_held(tmp_path):
    """A QoS 2 delivery is committed in its own turn, window or not: sent before its row is committed,
    a crash could make the publisher's resend a second delivery [MQTT-4.3.3-2]."""
    r = Rig(tmp_path, qos=2)
    r.b.data_received(r.pub, w.publish("t/1", b"m1", qos=2, packet_id=1) + w.pubrel(1), 1.0)
    r.turn(1.0)
    assert r.acked == [1, 1] and r.stored() == ["t/1"]  # PUBREC, then PUBCOMP after the commit
    r.store.close()


def test_pubcomp_waits_for_the_commit_of_what_the_pubrel_released(tmp_path):
    """A QoS 2 message is released to subscribers at PUBREL; the PUBCOMP goes out first on the wire,
    but not before the commit of the deliveries the release made (here to an offline QoS 1 session, a
    change the window holds), even when nothing else waited when it was written [MQTT-4.3.3-2]."""
    r = Rig(tmp_path, qos=1)
    r.b.data_received(r.pub, w.publish("t/1", b"m1", qos=2, packet_id=1), 1.0)
    r.turn(1.0)
    assert r.acked == [1], "PUBREC held although nothing was stored (a clean session's QoS 2 id)"
    r.b.data_received(r.pub, w.pubrel(1), 1.01)
    r.turn(1.01)
    assert r.acked == [1] and r.stored() == [], "PUBCOMP left before the released message was committed"
    r.turn(1.01 + WINDOW)
    assert r.acked == [1, 1] and r.stored() == ["t/1"]
    r.store.close()


def test_commit_window_ms_in_files(tmp_path):
    toml = tmp_path / "e.toml"
    toml.write_text("commit_window_ms = 200\n")
    assert load_config(str(toml)).config.commit_window_ms == 200
    conf = tmp_path / "m.conf"
    conf.write_text("persistence true\ncommit_window_ms 50\n")
    assert load_config(str(conf)).config.commit_window_ms == 50
    bad = tmp_path / "bad.toml"
    bad.write_text("\n\ncommit_window_ms = 20000\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(bad))
    text = str(err.value)
    assert "bad.toml" in text and ":3" in text and "commit_window_ms" in text and "0-10000" in text, text
    periodic = tmp_path / "p.toml"
    periodic.write_text('durability = "periodic"\ncommit_window_ms = 100\n')
    warnings = [str(x) for x in load_config(str(periodic)).warnings]
    assert any("commit_window_ms" in x and "no effect" in x for x in warnings), warnings


def test_without_persistence_nothing_waits():
    """persistence false: no window, nothing pending, always settled (a bridge asks before it sends its
    acknowledgements to the remote)."""
    store = NullStore()
    assert (store.window, store.waiting, store.pending_durable(), store.settled()) == (0.0, 0, False, True)
