"""The garbage collector in a running broker (edgebroker/gcpolicy.py): the thresholds a started broker runs
with, and the paths that used to leave reference cycles (a client closed for a malformed packet, a TLS
connection, closed or dropped mid-handshake) now free their connection by reference count, so the collector
running less often costs no memory there.

The cycle checks run with the collector disabled and DEBUG_SAVEALL: whatever only the collector could
free shows up in gc.garbage, and no edgebroker object may be among it."""
from __future__ import annotations

import gc
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List

import pytest

import mqttwire as w
from edgebroker import gcpolicy
from edgebroker.broker import Broker
from edgebroker.config import Config, Listener
from tlscerts import Certs, make_certs
from util import wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_a_started_broker_runs_with_the_policys_thresholds(tmp_path):
    """The command line applies gcpolicy.settle() once the server is built: serve_forever (replaced
    here, in a broker process of its own) finds the thresholds in force and the collector still on."""
    code = ("import gc, sys\n"
            "from edgebroker.server import Server\n"
            "def serve(self):\n"
            "    print('thresholds', gc.get_threshold(), gc.isenabled(), flush=True)\n"
            "Server.serve_forever = serve\n"
            "from edgebroker.cli import broker\n"
            "print('before', gc.get_threshold(), flush=True)\n"
            "sys.exit(broker.main(['-p', '0']))\n")
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "before (700, 10, 10)" in out.stdout  # the interpreter's, until the broker has started
    assert f"thresholds {gcpolicy.THRESHOLDS} True" in out.stdout
    assert gcpolicy.THRESHOLDS[0] > 700  # less often than the interpreter's default


@pytest.fixture
def saved_garbage() -> Iterator[List[object]]:
    """The collector off and DEBUG_SAVEALL for the test; what it would have freed, for inspection."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    found: List[object] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def ours(objects: List[object]) -> List[str]:
    return sorted({type(o).__module__ + "." + type(o).__qualname__ for o in objects
                   if type(o).__module__.startswith("edgebroker")})


def test_a_client_closed_for_a_malformed_packet_leaves_no_cycle(saved_garbage):
    """The MalformedPacket the core keeps until it closes the connection carried a traceback holding
    the frame that held it: a cycle reaching the Connection, its Session and Parser, per bad client."""
    broker = Broker(Config(persistence=False), now=0.0)
    for k in range(20):
        conn = broker.connection_made(f"127.0.0.1:{k + 1}", 1883, 0.0)
        broker.data_received(conn, w.connect(f"bad-{k}") + b"\x00\x00", 0.0)  # reserved packet type 0
        assert conn.closed and "malformed packet" in conn.close_reason
    broker.closing.clear()
    broker.dirty.clear()
    del conn
    gc.collect()
    saved_garbage.extend(gc.garbage)
    assert ours(saved_garbage) == []


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(str(tmp_path_factory.mktemp("certs")))


def test_closed_tls_connections_leave_no_cycle(make_broker, certs, saved_garbage):
    """A TLS connection's handle (TlsSocket) pointed back at its Connection, and its backlog callback
    was a closure over it. Clients that connect and disconnect, are closed for a malformed packet, or
    drop mid-handshake: once the loop has closed them nothing of theirs is left for the collector."""
    rb = make_broker(listeners=[Listener(port=0, address="127.0.0.1"),
                                Listener(port=0, address="127.0.0.1", certfile=certs.server,
                                         keyfile=certs.server_key)])
    plain, tls_port = rb.server.ports
    ctx = ssl.create_default_context(cafile=certs.ca)
    for k in range(5):
        c = w.RawClient(rb.host, tls_port, timeout=10.0)
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        c.send(w.connect(f"tls-{k}"))
        assert c.read_raw_packet() == w.connack(0, 0)
        c.send(w.disconnect() if k % 2 else b"\x00\x00")  # a clean end, or closed as malformed
        c.close()
        s = socket.create_connection((rb.host, tls_port), timeout=10.0)
        s.sendall(b"\x16\x03\x01\x00\x05hello")  # a handshake that never finishes
        s.close()
    broker = rb.server.broker
    wait_for(lambda: len(broker.connections) == 0 and not broker.closing, what="every connection closed")
    probe = w.RawClient(rb.host, plain, timeout=10.0)  # a turn of the loop after the closes
    probe.send(w.connect("probe"))
    assert probe.read_raw_packet() == w.connack(0, 0)
    probe.close()
    wait_for(lambda: len(broker.connections) == 0 and not broker.closing, what="the probe closed")
    gc.collect()
    saved_garbage.extend(gc.garbage)
    assert ours(saved_garbage) == []
