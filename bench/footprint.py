"""Where edgebroker's resident memory goes (issue 19: a Pi Zero has 512 MiB), as Markdown tables.

    .venv/bin/python -m bench.footprint            # about 20 s; --queued N (default 10,000)

Everything is measured in fresh processes, from /proc/PID/status (VmRSS; VmHWM, the peak, where it
differs) and /proc/PID/smaps (RSS by mapping), with the tree's bytecode compiled first, as an installed
broker has it (bench/brokers.py, `compile_bytecode`):

1. The interpreter alone: `python -c pass` with and without `-S` (no `site`: no .pth files) and `-I`,
   for this venv's Python, the system's python3 and python3.9 when they are installed.
2. The broker's imports in the order a start makes them, one fresh process importing them one after
   another: VmRSS after each, and how many modules each brought (with the bench's broker interpreter,
   then with this venv's Python under -S).
3. A running broker (`edgebroker -p 0`, a fresh database in a temporary XDG_DATA_HOME), started
   as the main benchmark starts it (bench/brokers.py, `broker_command`: the installed command's script
   run by this venv's Python without the editable install's hooks, as an installed broker starts):
   after start, with `-c` (a mosquitto.conf, whose persistence is off by default as in Mosquitto, and a
   TOML file, each setting max_queued_messages; a TOML file with a TLS listener, one TLS client served;
   one with a password file, one client logged in), then with a persistent session
   holding N queued QoS 1 messages of 64 B (S8's load, sent by one raw-socket publisher with 64 in
   flight), then after the session reconnected and drained them; and the RSS by mapping at the end.
Only 127.0.0.1, a port chosen by the broker (-p 0); every process started is killed at the end.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import wire  # noqa: E402
from bench.brokers import (  # noqa: E402
    broker_command, broker_python, compile_bytecode, kill_all, mosquitto_binary, repo_python, tls_files,
)

KIB = 1024.0

#: The modules a start imports, in its order; each row's cost is what it adds to those above it (memory
#: an import frees, such as the compiler's for record's generated __init__, is reused by later rows, so
#: only the running broker's figures below are the start's). `module:function` calls the function: the
#: TOML parser comes with the first TOML file read (with `-c`), _sqlite3 with the store's database (as
#: the store imports it, without functools: edgebroker/standins.py).
IMPORT_STEPS = ["edgebroker.log", "_socket", "edgebroker.config", "edgebroker.codec", "edgebroker.session",
                "edgebroker.store", "edgebroker.broker", "edgebroker.server", "edgebroker.cli.broker",
                "edgebroker.configfile", "edgebroker.tomlread:toml", "edgebroker.store:_import_sqlite3"]

_STATUS = ("import sys\nv = {}\nfor l in open('/proc/self/status'):\n"
           "    v[l.split(':')[0]] = l.split()[1] if len(l.split()) > 1 else ''\n"
           "print(v['VmRSS'], v['RssAnon'], len(sys.modules))\n")

_STEPS = """
import importlib, sys
def rss():
    for l in open('/proc/self/status'):
        if l.startswith('VmRSS'): return int(l.split()[1])
print('-', rss(), len(sys.modules), flush=True)
for name in sys.argv[1:]:
    module, _, call = name.partition(":")
    imported = importlib.import_module(module)
    if call:
        getattr(imported, call)()
    print(name, rss(), len(sys.modules), flush=True)
"""


def _env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT)
    for name in ("PYTHONDEVMODE", "PYTHONTRACEMALLOC", "PYTHONDONTWRITEBYTECODE"):
        env.pop(name, None)
    return env


def interpreters() -> List[Tuple[str, str]]:
    """This venv's Python, the system's python3, and a python3.9 (the oldest supported) if installed."""
    found = [("this venv", repo_python())]
    candidates = [shutil.which("python3", path="/usr/bin:/usr/local/bin"),
                  shutil.which("python3.9", path="/usr/bin:/usr/local/bin")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))[:1]
    seen = {os.path.realpath(repo_python())}
    for path in candidates:
        if not path or os.path.realpath(path) in seen:
            continue
        out = subprocess.run([path, "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True)
        if out.returncode == 0:
            seen.add(os.path.realpath(path))
            found.append((f"{out.stdout.strip()} ({path})", path))
    return found


def interpreter_table() -> List[str]:
    lines = ["| Python | `-c pass` MiB (anonymous) | modules | `-S` MiB (anonymous) | modules | `-I` MiB (anonymous) "
             "| modules |", "|---|--:|--:|--:|--:|--:|--:|"]
    for label, path in interpreters():
        cells = []
        for flags in ([], ["-S"], ["-I"]):
            out = subprocess.run([path] + flags + ["-c", _STATUS], capture_output=True, text=True, cwd="/",
                                 env={k: v for k, v in _env().items() if k != "PYTHONPATH"})
            rss, anonymous, modules = out.stdout.split()
            cells += [f"{int(rss) / KIB:.1f} ({int(anonymous) / KIB:.1f})", modules]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def import_table(flags: List[str], python: str = "") -> List[str]:
    out = subprocess.run([python or repo_python()] + flags + ["-c", _STEPS] + IMPORT_STEPS, capture_output=True,
                         text=True, env=_env(), cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    lines = ["| import | VmRSS after, MiB | added, KiB | modules added |", "|---|--:|--:|--:|"]
    prev_rss = prev_mods = 0
    for row in out.stdout.split("\n"):
        if not row.strip():
            continue
        name, rss, mods = row.split()
        if name == "-":
            lines.append(f"| (interpreter{' ' + ' '.join(flags) if flags else ''}) | {int(rss) / KIB:.1f} | | {mods} |")
        else:
            lines.append(f"| `{name}` | {int(rss) / KIB:.1f} | {int(rss) - prev_rss:+d} | {int(mods) - prev_mods} |")
        prev_rss, prev_mods = int(rss), int(mods)
    return lines


def _status(pid: int) -> Dict[str, int]:
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                found[key] = int(line.split()[1])
    return found


def _smaps(pid: int) -> Dict[str, int]:
    rss: Dict[str, int] = {}
    name = "?"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else "(anonymous)"
                if name.startswith("/"):
                    name = os.path.basename(name)
            elif parts[0] == "Rss:":
                rss[name] = rss.get(name, 0) + int(parts[1])
    return rss


class _Client:
    """A blocking raw-socket MQTT client: just enough for a queue and its drain (over TLS with `cafile`,
    the broker's certificate for localhost; logged in with `login`, a username and password)."""

    def __init__(self, port: int, client_id: str, clean: bool, cafile: Optional[str] = None,
                 login: Optional[Tuple[str, str]] = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if cafile is not None:
            import ssl
            self.sock = ssl.create_default_context(cafile=cafile).wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""
        self.counts: Dict[int, int] = {}
        user, password = login or (None, None)
        self.sock.sendall(wire.connect(client_id, clean=clean, username=user, password=password))
        self.wait(2, 1)

    def wait(self, packet_type: int, count: int) -> int:
        """Read until `count` packets of `packet_type` came since the connection was made (returns how
        many have); PUBACK every QoS 1 PUBLISH on the way."""
        while self.counts.get(packet_type, 0) < count:
            data = self.sock.recv(1 << 16)
            if not data:
                raise RuntimeError("the broker closed the connection")
            self.buf += data
            packets, rest = wire.split(self.buf)
            acks = []
            for first, body, end in packets:
                self.counts[first >> 4] = self.counts.get(first >> 4, 0) + 1
                if first >> 4 == 3 and first & 0x06:
                    acks.append(wire.puback(wire.publish_fields(self.buf, first, body, end)[2] or 0))
            self.buf = self.buf[rest:]
            if acks:
                self.sock.sendall(b"".join(acks))
        return self.counts[packet_type]

    def close(self) -> None:
        self.sock.close()


def broker_table(queued: int) -> List[str]:
    tmp = tempfile.mkdtemp(prefix="eb-footprint-")
    conf = os.path.join(tmp, "edgebroker.toml")
    with open(conf, "w") as f:
        f.write(f"max_queued_messages = {queued * 2}\n")
    env = dict(_env(), XDG_DATA_HOME=tmp)
    rows: List[str] = ["| state | VmRSS MiB | peak (VmHWM) MiB | anonymous MiB | file-backed MiB |",
                       "|---|--:|--:|--:|--:|"]
    procs: List[subprocess.Popen] = []

    def start(extra: List[str], python: str = "") -> Tuple[subprocess.Popen, int]:
        command = broker_command()  # the installed `edgebroker` command's script, as the benchmark starts it
        if python:
            command = [python, command[1]]
        proc = subprocess.Popen(command + ["-p", "0"] + extra, env=env, cwd=tmp,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        procs.append(proc)
        port = 0
        assert proc.stdout is not None
        for line in proc.stdout:
            if "listen socket on port" in line:
                port = int(line.rstrip().rstrip(".").rsplit(" ", 1)[1])
            if line.rstrip().endswith(" running"):
                break
        if not port:
            raise RuntimeError("the broker did not start")
        time.sleep(0.3)  # let the start's last allocations settle (a reading, not a synchronisation)
        return proc, port

    def row(label: str, pid: int) -> None:
        s = _status(pid)
        rows.append(f"| {label} | {s['VmRSS'] / KIB:.1f} | {s['VmHWM'] / KIB:.1f} | {s['RssAnon'] / KIB:.1f} "
                    f"| {s['RssFile'] / KIB:.1f} |")

    try:
        proc, _ = start([])   # a first start creates (migrates) the database; the rows below reuse it
        row("started, no configuration file, new database", proc.pid)
        proc.terminate()
        proc.wait()
        proc, _ = start([])
        row("started again, existing database", proc.pid)
        proc.terminate()
        proc.wait()
        for label, python in interpreters()[1:]:
            if subprocess.run([python, "-c", "import sqlite3"], capture_output=True).returncode == 0:
                # its own bytecode first, as pip would have compiled it for that Python
                subprocess.run([python, "-m", "compileall", "-q", os.path.join(ROOT, "edgebroker")],
                               capture_output=True)
                proc, _ = start([], python)
                row(f"the same with Python {label}", proc.pid)
                proc.terminate()
                proc.wait()
        mosquitto = mosquitto_binary()
        if mosquitto:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            mosquitto_port = probe.getsockname()[1]
            probe.close()
            mconf = os.path.join(tmp, "mosquitto.conf")
            with open(mconf, "w") as f:
                f.write(f"listener {mosquitto_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            proc = subprocess.Popen([mosquitto, "-c", mconf], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            procs.append(proc)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", mosquitto_port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            row("Mosquitto, started (for comparison)", proc.pid)
            proc.terminate()
            proc.wait()
        mconf = os.path.join(tmp, "edgebroker.conf")
        with open(mconf, "w") as f:
            f.write(f"max_queued_messages {queued * 2}\n")
        proc, _ = start(["-c", mconf])
        row("started with -c FILE.conf (mosquitto.conf syntax: persistence false)", proc.pid)
        proc.terminate()
        proc.wait()
        # What a TLS listener and a password file cost (bench/README.md, "Issue 19: what a TLS listener
        # and a password file cost"): each with one client served, as S2-tls and S6-auth start.
        cert, key = tls_files()
        import base64
        import hashlib
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", b"pw", salt, 101)
        with open(os.path.join(tmp, "passwd"), "w") as f:
            f.write(f"gw:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n")
        for label, text, client in (
                ("a TLS listener, one TLS client connected",
                 f'allow_anonymous = true\n[[listener]]\nport = 0\naddress = "127.0.0.1"\n'
                 f'certfile = "{cert}"\nkeyfile = "{key}"\n', {"cafile": cert}),
                ("a password file, one client logged in ($7$, 101 iterations)",
                 f'password_file = "{os.path.join(tmp, "passwd")}"\n', {"login": ("gw", "pw")})):
            fconf = os.path.join(tmp, "served.toml")
            with open(fconf, "w") as f:
                f.write(text)
            proc, port = start(["-c", fconf])
            served = _Client(port, "footprint-served", clean=True, **client)
            served.sock.sendall(wire.subscribe(1, [("footprint", 0)]))
            served.wait(9, 1)  # SUBACK: served (a refused login would have been closed)
            time.sleep(0.3)
            row(f"started with -c, {label}", proc.pid)
            served.close()
            proc.terminate()
            proc.wait()
        proc, port = start(["-c", conf])
        row("started with -c edgebroker.toml", proc.pid)
        started_rss = _status(proc.pid)["VmRSS"]
        sub = _Client(port, "footprint-q", clean=False)
        sub.sock.sendall(wire.subscribe(1, [("bench/#", 1)]))
        sub.wait(9, 1)
        sub.sock.sendall(b"\xe0\x00")  # DISCONNECT
        sub.close()
        pub = _Client(port, "footprint-pub", clean=True)
        sent = acked = 0
        payload = b"x" * 64
        while acked < queued:
            burst = []
            while sent < queued and sent - acked < 64:
                burst.append(wire.publish("bench/q", payload, qos=1, packet_id=wire.packet_id_for(sent)))
                sent += 1
            if burst:
                pub.sock.sendall(b"".join(burst))
            acked = pub.wait(4, acked + 1)
        queued_rss = _status(proc.pid)["VmRSS"]
        row(f"{queued:,} QoS 1 messages of 64 B queued for an offline session", proc.pid)
        sub = _Client(port, "footprint-q", clean=False)
        sub.wait(3, queued)
        row("after the session drained them", proc.pid)
        sub.close()
        pub.close()
        rows.append("")
        rows.append(f"Per queued message: {(queued_rss - started_rss) * 1024 / queued:.0f} bytes of VmRSS.")
        smaps = _smaps(proc.pid)
        total = sum(smaps.values())
        rows.append("")
        rows.append("| mapping (at the end) | RSS MiB |")
        rows.append("|---|--:|")
        for name, kib in sorted(smaps.items(), key=lambda item: -item[1])[:8]:
            rows.append(f"| {name} | {kib / KIB:.1f} |")
        rows.append(f"| (total) | {total / KIB:.1f} |")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", type=int, default=10_000, help="QoS 1 messages queued (default 10,000)")
    args = parser.parse_args(argv)
    compile_bytecode()
    try:
        print("## The interpreter alone (VmRSS of `python -c pass`, modules loaded)\n")
        print("\n".join(interpreter_table()))
        print("\n## The broker's imports, in start order (the bench's broker interpreter: this venv's Python "
              "without the editable install's hooks)\n")
        print("\n".join(import_table([], broker_python())))
        print("\nThis venv's Python without `site` (-S: no .pth files, as the venv's editable install and "
              "setuptools add them):\n")
        print("\n".join(import_table(["-S"])))
        print("\n## A running broker (the bench's broker interpreter)\n")
        print("\n".join(broker_table(args.queued)))
    finally:
        kill_all()  # the broker interpreter's virtualenv
    return 0


if __name__ == "__main__":
    sys.exit(main())
