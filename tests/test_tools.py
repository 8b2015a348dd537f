"""edgebroker-pub / edgebroker-sub against mosquitto_pub / mosquitto_sub, byte for byte, on two brokers.

Theory of operation: users type mosquitto_pub(1)/mosquitto_sub(1) command lines with the tool name
changed, so the reference is the real tools (Debian's mosquitto-clients). Each comparison runs
mosquitto_sub and edgebroker-sub side by side on the same broker with the same options, publishes the
same messages once (alternately with mosquitto_pub and edgebroker-pub, so both publishers and both
subscribers meet both peers), and compares the two stdouts byte for byte, the exit codes, and the output
against a literal where the output is deterministic. The brokers are edgebroker (the `broker` fixture,
in a thread) and a real Mosquitto started here on an ephemeral loopback port, so Mosquitto's tools run
against edgebroker too.

No sleeps: a subscriber is known to be subscribed when it prints a retained marker published before it
started (the broker sends retained messages only once the subscription exists [MQTT-3.3.1-6]), or, for
-R, when its -d output shows the SUBACK (mosquitto_sub under `stdbuf -oL`: it flushes -d lines only
with the next message otherwise). Subscribers stop by themselves (-C, -W); every wait has a deadline.
Error paths (refused connections, bad command lines) compare exit codes and stderr, with the tool names
made equal.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from edgebroker.cli import pub as eb_pub
from edgebroker.cli import sub as eb_sub
from edgebroker.cli.msgformat import render, render_format
from edgebroker.client import Client, ConnectFailed, Message, Subscribed
from edgebroker.codec import Parser
from edgebroker.config import Listener

try:
    from util import wait_for
except ImportError:
    from tests.util import wait_for  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = "/usr/sbin/mosquitto"
TIMEOUT = 10.0

needs_clients = pytest.mark.skipif(
    not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")),
    reason="mosquitto-clients not installed (apt-get install mosquitto-clients)")
needs_mosquitto = pytest.mark.skipif(not os.access(MOSQUITTO, os.X_OK),
                                     reason="mosquitto not installed (apt-get install mosquitto)")


def _tool(name: str) -> List[str]:
    """The console script next to this interpreter, else `python -m edgebroker pub|sub`."""
    script = Path(sys.executable).parent / f"edgebroker-{name}"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "edgebroker", name]


EB_PUB = _tool("pub")
EB_SUB = _tool("sub")
M_PUB = ["mosquitto_pub"]
M_SUB = ["mosquitto_sub"]


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# --- processes ---------------------------------------------------------------------------------------

class Proc:
    """A subprocess whose stdout a thread collects as raw bytes (no line splitting: -N and -F output
    need not end in newlines)."""

    def __init__(self, argv: Sequence[str], stdin: Optional[int] = None) -> None:
        self.argv = list(argv)
        self.p = subprocess.Popen(self.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=_env())
        self.out = bytearray()
        self._lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            with self._lock:
                self.out += chunk

    def output(self) -> bytes:
        with self._lock:
            return bytes(self.out)

    def wait_output(self, needle: bytes, timeout: float = TIMEOUT) -> None:
        wait_for(lambda: needle in self.output() or self.p.poll() is not None, timeout,
                 what=f"{needle!r} from {self.argv}")
        assert needle in self.output(), (self.argv, self.p.returncode, self.output(), self.stderr())

    def finish(self, timeout: float = TIMEOUT) -> Tuple[int, bytes, bytes]:
        """Wait for the process to exit by itself; (exit code, stdout, stderr)."""
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.argv} still running after {timeout}s; output {self.output()!r}") \
                from None
        self.reader.join(TIMEOUT)
        return rc, self.output(), self.stderr()

    def stderr(self) -> bytes:
        if self.p.poll() is None or self.p.stderr is None:
            return b""
        return self.p.stderr.read()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(TIMEOUT)
        for f in (self.p.stdout, self.p.stderr, self.p.stdin):
            if f is not None:
                f.close()
        self.reader.join(TIMEOUT)


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    made: List[Proc] = []

    def start(*argv: str, stdin: Optional[int] = None) -> Proc:
        pr = Proc(argv, stdin=stdin)
        made.append(pr)
        return pr

    yield start
    for pr in made:
        pr.stop()


def run(argv: Sequence[str], stdin: Optional[bytes] = None,
        timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), input=stdin, capture_output=True, timeout=timeout, env=_env())


# --- brokers -----------------------------------------------------------------------------------------

class Target:
    def __init__(self, name: str, host: str, port: int) -> None:
        self.name, self.host, self.port = name, host, port

    def hp(self) -> List[str]:
        return ["-h", self.host, "-p", str(self.port)]


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory) -> Iterator[Target]:
    """A real Mosquitto on an ephemeral loopback port, anonymous clients allowed, killed at teardown."""
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    directory = tmp_path_factory.mktemp("mosquitto")
    for _ in range(5):  # the port may be taken between choosing and binding it: try another
        port = _free_port()
        conf = directory / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: proc.poll() is not None or _accepts(port), TIMEOUT, what="mosquitto to listen")
        except AssertionError:
            proc.kill()
            proc.wait(TIMEOUT)
            raise
        if proc.poll() is None:
            break
        proc.wait(TIMEOUT)
    else:
        raise AssertionError("mosquitto did not start")
    yield Target("mosquitto", "127.0.0.1", port)
    proc.kill()
    proc.wait(TIMEOUT)


@pytest.fixture(params=["edgebroker", "mosquitto"])
def target(request) -> Target:
    if request.param == "edgebroker":
        b = request.getfixturevalue("broker")
        return Target("edgebroker", b.host, b.port)
    return request.getfixturevalue("mosquitto")


@pytest.fixture
def prefix() -> str:
    """A topic prefix of its own per test: retained messages on a shared Mosquitto do not leak."""
    return f"tt/{uuid.uuid4().hex[:10]}"


def publish(t: Target, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
    """Set-up publishes through our client library, in-process (the tools are what is under test)."""
    c = Client(client_id=f"setup-{uuid.uuid4().hex[:8]}")
    c.connect(t.host, t.port)
    mid = c.publish(topic, payload, qos, retain)
    deadline = time.monotonic() + TIMEOUT
    while mid in c.inflight_mids:
        assert time.monotonic() < deadline, "set-up publish not acknowledged"
        c.loop(deadline - time.monotonic())
    c.disconnect()


# --- side-by-side comparisons ------------------------------------------------------------------------

BINARY = b"\x00\xffbin\n"

# name: (sub options, [(pub options, stdin)], messages expected after the marker, expected output or None)
# {P} is the test's topic prefix. The subscriber always also subscribes to {P}-ready (the marker; outside
# {P}/# so that a wildcard subscription does not match it a second time).
SCENARIOS: Dict[str, Tuple[List[str], List[Tuple[List[str], Optional[bytes]]], int, Optional[bytes]]] = {
    "verbose": (
        ["-v", "-t", "{P}/t"],
        [(["-t", "{P}/t", "-m", "hello"], None),
         (["-t", "{P}/t", "-q", "1", "-m", "two words"], None),
         (["-t", "{P}/t", "-n"], None),
         (["-t", "{P}/t", "-l"], b"line one\n\nline three\r\nlast"),
         (["-t", "{P}/t", "-r", "-q", "1", "-m", "kept"], None)],
        8,
        b"{P}-ready ready\n{P}/t hello\n{P}/t two words\n{P}/t (null)\n{P}/t line one\n{P}/t (null)\n"
        b"{P}/t line three\r\n{P}/t last\n{P}/t kept\n"),
    "payload_qos2": (
        ["-q", "2", "-t", "{P}/t"],
        [(["-t", "{P}/t", "-q", "2", "-m", "x"], None),
         (["-t", "{P}/t", "-q", "2", "-f", "{FILE}"], None),
         (["-t", "{P}/t", "-q", "2", "-s"], b"multi\nline\n"),
         (["-t", "{P}/t", "-q", "2", "-n"], None)],
        4,
        b"ready\nx\n" + BINARY + b"\nmulti\nline\n\n"),  # an empty payload prints nothing at all
    "format": (
        ["-q", "1", "-t", "{P}/t", "-F", r"%t|%p|%q|%r|%l|%x|%X|%%|[%8t][%-8p][%05l][%.3t][%3p]\t@@"],
        [(["-t", "{P}/t", "-q", "1", "-m", "hi"], None),
         (["-t", "{P}/t", "-m", "abcdefghij"], None),
         (["-t", "{P}/t", "-q", "2", "-r", "-m", "kept"], None)],
        3,
        None),  # the topic's width depends on {P}: compared with mosquitto_sub only
    "no_eol": (
        ["-v", "-N", "-t", "{P}/t"],
        [(["-t", "{P}/t", "-m", "a"], None), (["-t", "{P}/t", "-m", "b"], None),
         (["-t", "{P}/t", "-n"], None)],
        3,
        b"{P}-ready ready{P}/t a{P}/t b"),
    "filter_out": (
        ["-v", "-t", "{P}/#", "-T", "{P}/skip/#"],
        [(["-t", "{P}/a", "-m", "1"], None), (["-t", "{P}/skip/x", "-m", "2"], None),
         (["-t", "{P}/b", "-m", "3"], None)],
        2,  # -C counts printed messages only
        b"{P}-ready ready\n{P}/a 1\n{P}/b 3\n"),
    "mqtt31": (
        ["-V", "mqttv31", "-v", "-q", "1", "-t", "{P}/t"],
        [(["-V", "mqttv31", "-t", "{P}/t", "-m", "old"], None),
         (["-V", "31", "-t", "{P}/t", "-q", "1", "-m", "older"], None)],
        2,
        b"{P}-ready ready\n{P}/t old\n{P}/t older\n"),
    "debug": (
        ["-d", "-v", "-q", "1", "-t", "{P}/t"],  # no -i: two subscribers with one id would take turns
        [(["-t", "{P}/t", "-q", "1", "-m", "one"], None), (["-t", "{P}/t", "-m", "two"], None)],
        2,
        None),  # compared with mosquitto_sub only; the message lines are checked below
}


@needs_clients
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_sub_output_equals_mosquitto_sub(target, procs, prefix, tmp_path, scenario):
    """Both subscribers print the same bytes for the same messages and exit 0 after -C; half of the
    messages come from mosquitto_pub, half from edgebroker-pub."""
    sub_args, pubs, count, expected = SCENARIOS[scenario]
    binfile = tmp_path / "payload.bin"
    binfile.write_bytes(BINARY)

    def fill(args: List[str]) -> List[str]:
        return [a.replace("{P}", prefix).replace("{FILE}", str(binfile)) for a in args]

    publish(target, f"{prefix}-ready", b"ready", retain=True)
    common = [*target.hp(), "-C", str(count + 1), "-W", "20", "-t", f"{prefix}-ready", *fill(sub_args)]
    subs = [procs(*M_SUB, *common), procs(*EB_SUB, *common)]
    for s in subs:
        s.wait_output(b"ready")
    for i, (args, stdin) in enumerate(pubs):
        tool = M_PUB if i % 2 == 0 else EB_PUB
        r = run([*tool, *target.hp(), *fill(args)], stdin=stdin)
        assert r.returncode == 0, (tool, args, r)
    (m_rc, m_out, m_err), (e_rc, e_out, e_err) = (s.finish() for s in subs)
    assert (m_rc, m_err) == (0, b""), (m_rc, m_out, m_err)
    assert (e_rc, e_err) == (0, b""), (e_rc, e_out, e_err)
    assert e_out == m_out
    if expected is not None:
        assert m_out == expected.replace(b"{P}", prefix.encode())
    if scenario == "debug":
        for line in (b"Client (null) sending CONNECT\n", b"Subscribed (mid: 1): 1, 1\n",
                     b"Client (null) sending PUBACK (m1, rc0)\n", f"{prefix}/t one\n".encode(),
                     f"{prefix}/t two\n".encode(), b"Client (null) sending DISCONNECT\n"):
            assert line in m_out, (line, m_out)
    if scenario == "format":
        lines = m_out.split(b"\n")
        assert lines[0] == f"{prefix}-ready|ready|0|1|5|7265616479|7265616479|%|".encode() \
            + f"[{prefix}-ready][ready   ][00005][{prefix[:3]}][rea]\t@".encode()
        assert lines[2].startswith(f"{prefix}/t|abcdefghij|0|0|10|".encode()), lines


@needs_clients
def test_count_stops_after_n_retained_messages(target, procs, prefix):
    """-C 2 with three retained messages waiting: two printed (in the broker's order, the same for both
    tools), exit 0, the third never printed."""
    for n in (1, 2, 3):
        publish(target, f"{prefix}/c/{n}", f"m{n}".encode(), retain=True)
    args = [*target.hp(), "-v", "-C", "2", "-W", "20", "-t", f"{prefix}/c/#"]
    subs = [procs(*M_SUB, *args), procs(*EB_SUB, *args)]
    (m_rc, m_out, _), (e_rc, e_out, _) = (s.finish() for s in subs)
    assert m_rc == e_rc == 0
    assert e_out == m_out
    assert len(m_out.splitlines()) == 2 and set(m_out.splitlines()) <= {
        f"{prefix}/c/{n} m{n}".encode() for n in (1, 2, 3)}, m_out


@needs_clients
def test_no_retained_R_skips_retained_messages(target, procs, prefix):
    """-R: the retained message is received (-d shows r1) but not printed; the live ones are; the whole
    -d transcript is identical to mosquitto_sub's."""
    if not shutil.which("stdbuf"):
        pytest.skip("stdbuf (coreutils) not found")
    publish(target, f"{prefix}/t", b"old", retain=True)
    args = [*target.hp(), "-R", "-d", "-v", "-C", "2", "-W", "20", "-t", f"{prefix}/t"]
    subs = [procs("stdbuf", "-oL", *M_SUB, *args), procs(*EB_SUB, *args)]
    for s in subs:
        s.wait_output(b"Subscribed (mid: 1): 0\n")
    publish(target, f"{prefix}/t", b"live1")
    publish(target, f"{prefix}/t", b"live2")
    (m_rc, m_out, _), (e_rc, e_out, _) = (s.finish() for s in subs)
    assert m_rc == e_rc == 0
    assert e_out == m_out
    assert f"'{prefix}/t', ... (3 bytes))".encode() in m_out  # the retained one arrived (r1)...
    assert b" old" not in m_out  # ...and was not printed
    assert m_out.endswith(f"{prefix}/t live1\n".encode()
                          + f"Client (null) received PUBLISH (d0, q0, r0, m0, '{prefix}/t', ... (5 bytes))\n"
                            f"{prefix}/t live2\n".encode()
                          + b"Client (null) sending DISCONNECT\n"), m_out


@needs_clients
def test_W_timeout_exits_27_with_timed_out(target, procs, prefix):
    """-W 1 with nothing to receive: "Timed out" on stderr, exit code 27, nothing on stdout."""
    args = [*target.hp(), "-W", "1", "-t", f"{prefix}/nothing"]
    subs = [procs(*M_SUB, *args), procs(*EB_SUB, *args)]
    results = [s.finish() for s in subs]
    assert results[0] == (27, b"", b"Timed out\n")
    assert results[1] == results[0]


def _same_error(m: Tuple[int, bytes], e: Tuple[int, bytes], tool: str) -> None:
    assert e[0] == m[0], (m, e)
    assert e[1].replace(f"edgebroker-{tool}".encode(), f"mosquitto_{tool}".encode()) == m[1], (m, e)


@needs_clients
def test_connection_refused_exit_code_and_message_equal_mosquittos():
    """Nothing listening on the port: both tools print "Error: Connection refused" and exit 1."""
    hp = ["-h", "127.0.0.1", "-p", str(_free_port())]
    for tool, args in (("pub", ["-t", "a", "-m", "x"]), ("sub", ["-t", "a"])):
        m = run([*(M_PUB if tool == "pub" else M_SUB), *hp, *args])
        e = run([*(EB_PUB if tool == "pub" else EB_SUB), *hp, *args])
        assert (m.returncode, m.stderr) == (1, b"Error: Connection refused\n")
        _same_error((m.returncode, m.stderr), (e.returncode, e.stderr), tool)
    assert run([*EB_PUB, *hp, "-t", "a", "-m", "x", "--quiet"]).stderr == b""


class RefusingServer:
    """Answers every CONNECT with a CONNACK carrying `code`, then waits for the client to close."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.connects: List[object] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.stopping:
                conn.close()
                return
            with conn:
                conn.settimeout(TIMEOUT)
                parser = Parser()
                packets: List[object] = []
                try:
                    while not packets:
                        data = conn.recv(4096)
                        if not data:
                            break
                        packets = parser.feed(data)
                    self.connects.extend(packets[:1])
                    conn.sendall(bytes((0x20, 2, 0, self.code)))
                    while conn.recv(4096):
                        pass
                except OSError:
                    pass

    def close(self) -> None:
        # close() does not interrupt a blocked accept() on Linux: wake it with one last connection.
        self.stopping = True
        socket.create_connection(("127.0.0.1", self.port), timeout=TIMEOUT).close()
        self.thread.join(TIMEOUT)
        self.sock.close()


@needs_clients
@pytest.mark.parametrize("code", [1, 2, 3, 4, 5])
def test_connack_refusal_messages_and_exit_codes_equal_mosquittos(code):
    """A CONNACK refusal: "Connection error: Connection Refused: ..." (pub adds "Error: The connection
    was refused."), exit code = the return code, for pub, pub -l and sub alike."""
    server = RefusingServer(code)
    try:
        hp = ["-h", "127.0.0.1", "-p", str(server.port)]
        for tool, args, stdin in (("pub", ["-t", "a", "-m", "x"], None), ("pub", ["-t", "a", "-l"], b"x\n"),
                                  ("sub", ["-t", "a"], None)):
            m = run([*(M_PUB if tool == "pub" else M_SUB), *hp, *args], stdin=stdin)
            e = run([*(EB_PUB if tool == "pub" else EB_SUB), *hp, *args], stdin=stdin)
            assert m.returncode == code and m.stderr.startswith(b"Connection error: Connection Refused: ")
            _same_error((m.returncode, m.stderr), (e.returncode, e.stderr), tool)
    finally:
        server.close()


# Command lines refused before connecting: exit code and stderr must equal Mosquitto's.
BAD_COMMAND_LINES = [
    ("sub", ["-t", "a", "-Z"]),
    ("sub", []),
    ("sub", ["-t", "a", "-V", "7"]),
    ("sub", ["-t", "a/#/b"]),
    ("sub", ["-t", "a", "-k", "2"]),
    ("sub", ["-t", "a", "-C", "0"]),
    ("sub", ["-t", "a", "-W", "0"]),
    ("sub", ["-t", "a", "-F", "%z"]),
    ("sub", ["-t", "a", "-F", "ab%"]),
    ("sub", ["-t", "a", "-F", "ab\\q"]),
    ("sub", ["-t", "a", "-h"]),
    ("sub", ["-t", "a", "-p", "70000"]),
    ("sub", ["-t", "a", "-R", "--retained-only"]),
    ("sub", ["-t", "a", "-T", "a/#/b"]),
    ("sub", ["-t", "a", "-m", "x"]),
    ("pub", ["-t", "a", "-m", "x", "-q", "3"]),
    ("pub", ["-t", "a/#", "-m", "x"]),
    ("pub", ["-t", "a", "-f", "/nonexistent/file"]),
    ("pub", ["-t", "a", "-m", "x", "-n"]),
    ("pub", ["-t", "a", "-m", "x", "-i", "a", "-I", "b"]),
    ("pub", ["-t", "a", "-m", "x", "--will-payload", "b"]),
    ("pub", ["-t", "a", "-m", "x", "--will-retain"]),
    ("pub", ["-t", "a", "-m", "x", "--will-topic", "w", "--will-qos", "5"]),
    ("pub", ["-t", "a", "-m", "x", "--will-topic", "w/#"]),
    ("pub", ["-t", "a", "-m", "x", "-R"]),
    ("pub", ["-t", "a", "-m", "x", "-P", "pw"]),
    ("pub", ["-t", "a", "-m", "x", "-c"]),
    ("pub", ["-t", "a", "-m"]),
    ("pub", ["-t", "a", "-s"]),
    ("pub", ["-t", "a", "-m", "x", "-L", "http://x/y"]),
]


@needs_clients
def test_bad_command_lines_exit_and_stderr_equal_mosquittos(capsys):
    """Mosquitto's messages and exit codes for bad command lines (our tools run in-process here)."""
    for tool, args in BAD_COMMAND_LINES:
        argv = ["-h", "127.0.0.1", "-p", "1", *args]
        m = run([*(M_PUB if tool == "pub" else M_SUB), *argv], stdin=b"")
        main = eb_pub.main if tool == "pub" else eb_sub.main
        if args[-1:] == ["-s"]:
            # -s reads stdin: give the in-process tool an empty one, as the subprocess got
            rc = _with_empty_stdin(lambda: main(argv))
        else:
            rc = main(argv)
        captured = capsys.readouterr()
        _same_error((m.returncode, m.stderr), (rc, captured.err.encode()), tool)


def _with_empty_stdin(fn: Callable[[], int]) -> int:
    import io
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(b""))
    try:
        return fn()
    finally:
        sys.stdin = saved


def test_help_and_missing_message_exit_1(capsys):
    """--help prints the usage on stdout and exits 1 (so does mosquitto_pub --help); -t without a
    message says so on stderr and prints the usage."""
    assert eb_sub.main(["--help"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("edgebroker-sub is a simple mqtt client") and "-F : output format." in out
    assert eb_pub.main(["-t", "a"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "Error: Both topic and message must be supplied.\n"
    assert captured.out.startswith("edgebroker-pub is a simple mqtt client")


@pytest.mark.parametrize("tool", [eb_pub.main, eb_sub.main])
@pytest.mark.parametrize("option", [["-V", "5"], ["-V", "mqttv5"], ["-x", "60"], ["-D", "connect", "x", "y"]])
def test_mqtt5_is_refused_clearly(capsys, tool, option):
    assert tool(["-t", "a", "-m", "x", *option] if tool is eb_pub.main else ["-t", "a", *option]) == 1
    assert "MQTT 5 is not supported" in capsys.readouterr().err


@pytest.mark.parametrize("tool", [eb_pub.main, eb_sub.main])
def test_tls_engine_options_are_refused_clearly(capsys, tool):
    assert tool(["-t", "a", "--cafile", "/etc/ssl/ca.pem", "--tls-engine", "pkcs11"]) == 1
    assert "--tls-engine: TLS engines not supported" in capsys.readouterr().err


# --- behaviour beyond one-shot output ----------------------------------------------------------------

def test_python_m_edgebroker_pub_and_sub(broker, prefix):
    """`python -m edgebroker pub ...` and `... sub ...` run the tools; without them, the broker."""
    t = Target("edgebroker", broker.host, broker.port)
    r = run([sys.executable, "-m", "edgebroker", "pub", *t.hp(), "-t", f"{prefix}/x", "-r", "-q", "1",
             "-m", "via -m"])
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    r = run([sys.executable, "-m", "edgebroker", "sub", *t.hp(), "-t", f"{prefix}/x", "-C", "1", "-v"])
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{prefix}/x via -m\n".encode(), b"")
    r = run([sys.executable, "-m", "edgebroker", "--help"])
    assert r.returncode == 0 and b"broker" in r.stdout


@needs_clients
def test_unix_socket_pub_and_sub_like_mosquittos_tools(make_broker, prefix, tmp_path):
    """--unix PATH: edgebroker-pub and edgebroker-sub reach a broker's unix socket listener, and print
    what mosquitto_pub/mosquitto_sub print through the same socket. The subscribers take the two
    retained messages published beforehand (-C 2), so no wait on the subscription is needed."""
    path = str(tmp_path / "mqtt.sock")
    make_broker(listeners=[Listener(port=0, address="127.0.0.1"), Listener(port=0, unix_socket=path)])
    for name, pub in (("eb", EB_PUB), ("m", M_PUB)):
        r = run([*pub, "--unix", path, "-t", f"{prefix}/unix/{name}", "-r", "-q", "1", "-m", f"from {name}"])
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), name
    outs = []
    for sub in (EB_SUB, M_SUB):
        r = run([*sub, "--unix", path, "-t", f"{prefix}/unix/+", "-C", "2", "-v", "-q", "1"])
        assert (r.returncode, r.stderr) == (0, b""), sub
        outs.append(r.stdout)
    assert outs[0] == outs[1]
    assert sorted(outs[0].splitlines()) == [f"{prefix}/unix/{n} from {n}".encode() for n in ("eb", "m")]


def _subscribe(t: Target, topic: str, qos: int = 1) -> Client:
    c = Client(client_id=f"watch-{uuid.uuid4().hex[:8]}")
    c.connect(t.host, t.port)
    c.subscribe([(topic, qos)])
    deadline = time.monotonic() + TIMEOUT
    while not any(isinstance(e, Subscribed) for e in c.loop(deadline - time.monotonic())):
        assert time.monotonic() < deadline, "no SUBACK"
    return c


def _next_message(c: Client, timeout: float = TIMEOUT) -> Message:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "no message"
        for e in c.loop(remaining):
            if isinstance(e, Message):
                return e


def test_pub_l_sends_each_line_as_it_arrives(broker, procs, prefix):
    """-l publishes a line as soon as it is read (stdin still open), not at end of input."""
    t = Target("edgebroker", broker.host, broker.port)
    watcher = _subscribe(t, f"{prefix}/t")
    pub = procs(*EB_PUB, *t.hp(), "-t", f"{prefix}/t", "-l", "-q", "1", stdin=subprocess.PIPE)
    assert pub.p.stdin is not None
    pub.p.stdin.write(b"first\n")
    pub.p.stdin.flush()
    assert _next_message(watcher).payload == b"first"
    assert pub.p.poll() is None  # still reading stdin
    pub.p.stdin.write(b"second\nthird")
    pub.p.stdin.close()
    assert [_next_message(watcher).payload for _ in range(2)] == [b"second", b"third"]
    assert pub.finish()[0] == 0
    watcher.disconnect()


def test_will_is_published_when_the_tool_dies(target, procs, prefix):
    """--will-topic/--will-payload/--will-qos/--will-retain reach the broker in the CONNECT: killing the
    subscriber (no DISCONNECT) makes the broker publish the will [MQTT-3.1.2-8]."""
    watcher = _subscribe(target, f"{prefix}/will", qos=1)
    sub = procs(*EB_SUB, *target.hp(), "-d", "-t", f"{prefix}/x", "--will-topic", f"{prefix}/will",
                "--will-payload", "gone", "--will-qos", "1", "--will-retain")
    sub.wait_output(b"Subscribed (mid: 1): 0\n")
    sub.p.send_signal(signal.SIGKILL)
    sub.p.wait(TIMEOUT)
    m = _next_message(watcher)
    assert (m.topic, m.payload, m.qos) == (f"{prefix}/will", b"gone", 1)
    watcher.disconnect()


def test_sigterm_disconnects_cleanly_exit_0(broker, procs, prefix):
    """SIGTERM (and SIGINT): DISCONNECT sent, exit 0, as mosquitto_sub; so no will is published."""
    t = Target("edgebroker", broker.host, broker.port)
    watcher = _subscribe(t, f"{prefix}/will")
    sub = procs(*EB_SUB, *t.hp(), "-d", "-t", f"{prefix}/x", "--will-topic", f"{prefix}/will")
    sub.wait_output(b"Subscribed (mid: 1): 0\n")
    sub.p.send_signal(signal.SIGTERM)
    rc, out, _ = sub.finish()
    assert rc == 0 and out.endswith(b"Client (null) sending DISCONNECT\n"), out
    publish(t, f"{prefix}/will", b"marker")  # the will would have come before this
    assert _next_message(watcher).payload == b"marker"
    watcher.disconnect()


def test_client_keepalive_sends_pingreq(broker):
    """With nothing else to send, the client sends PINGREQ after one keepalive period and the
    PINGRESP clears it [MQTT-3.1.2-23]."""
    lines: List[str] = []
    c = Client(client_id="pinger", keepalive=1, debug=lines.append)
    c.connect(broker.host, broker.port)
    deadline = time.monotonic() + 5
    while "Client pinger received PINGRESP" not in lines:
        assert time.monotonic() < deadline, lines
        c.loop(0.2)
    assert lines[-2:] == ["Client pinger sending PINGREQ", "Client pinger received PINGRESP"]
    c.disconnect()


def test_client_connect_failed_message():
    with pytest.raises(ConnectFailed) as info:
        Client().connect("127.0.0.1", _free_port())
    assert (str(info.value), info.value.rc) == ("Error: Connection refused", 1)


# --- output formatting, in memory ----------------------------------------------------------------------

def test_format_widths_match_mosquitto_sub():
    """Widths, flags and precision as mosquitto_sub 2.0 prints them (recorded from the real tool): %p/%x
    are cut to the width, hex to half of it; %.Np does not cut."""
    fmt = "[%10t][%-10t][%5.3t][%05l][%-5l][%6p][%-6p][%08x][%3m][%-010l][%.2p]"
    assert render_format(fmt, "r/1", b"ret one", 0, True, 0) == \
        b"[       r/1][r/1       ][  r/1][00007][7    ][ret on][ret on][00726574][  0][7         ][ret one]\n"
    assert render_format(fmt, "r/3", b"ret3", 1, True, 1, eol=False) == \
        b"[       r/3][r/3       ][  r/3][00004][4    ][  ret3][ret3  ][00007265][  1][4         ][ret3]"


def test_format_time_and_escapes():
    out = render_format(r"%I|%U|@Y-@m-@d @H:@M:@S.@N|@@|%%|\e\0\a\v", "t", b"p", 0, False, 0)
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}\|\d+\.\d{9}\|"
                        rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{9}\|@\|%\|\x1b\x00\x07\x0b\n", out), out


def test_format_json():
    out = render_format("%j", "a/b", b'say "hi"', 1, True, 7, eol=False)
    assert re.fullmatch(rb'\{"tst":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z[+-]\d{4}","topic":"a/b","qos":1,'
                        rb'"retain":1,"payloadlen":8,"mid":7,"payload":"say \\"hi\\""\}', out), out
    assert render_format("%j", "a", b"\x00\xff", 0, False, 0, eol=False).endswith(b'"payload":[0,255]}')
    assert render_format("%j", "a", b"", 0, False, 0, eol=False).endswith(b'"payloadlen":0,"payload":null}')


@pytest.mark.parametrize("verbose, eol, payload, expected", [
    (False, True, b"x", b"x\n"), (False, True, b"", b""), (False, False, b"x", b"x"),
    (True, True, b"x", b"t x\n"), (True, True, b"", b"t (null)\n"), (True, False, b"", b""),
])
def test_plain_and_verbose_output(verbose, eol, payload, expected):
    assert render("t", payload, 0, False, 0, verbose, None, eol) == expected

