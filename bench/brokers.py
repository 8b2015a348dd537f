"""Starting, probing, measuring and stopping the brokers under test (and nothing else).

Every broker runs on 127.0.0.1 on a port found by binding port 0, with its log in a temporary
directory, and is registered in `STARTED` so that the runner's `finally` can kill whatever is left.

Disk measurements (S9): the kernel's per-process I/O counters (/proc/PID/io) cover the whole life of a
process, threads and reaped children included, and stay readable while the process is a zombie. So
`stop()` sends SIGTERM, waits for the zombie state without reaping (no poll()/wait(), which would
reap), reads /proc/PID/io, and only then reaps: the counters then include the broker's final save or
checkpoint at shutdown. The temporary directories are put on a disk-backed file system
(`data_root()`), never tmpfs, where write_bytes would stay 0.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from . import wire
from .workers import TlsPort, open_socket

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Whether the broker writes to its client sockets with write(2) (counted in /proc/PID/io wchar) rather
#: than send(2) (not counted): Mosquitto's net__write() calls write(); edgebroker calls socket.send().
SOCKET_WRITES_IN_WCHAR = {"mosquitto": True, "edgebroker": False}

#: Every broker process started and not yet reaped, for the last-resort cleanup.
STARTED: Dict[int, subprocess.Popen] = {}


#: File systems whose writes never reach a block device: /proc/PID/io write_bytes stays 0 there.
MEMORY_FS = ("tmpfs", "ramfs", "devtmpfs", "hugetlbfs")
_data_root: Optional[str] = None


def mount_of(path: str) -> Tuple[str, str, str]:
    """(mount point, file system type, source) of the mount holding path, from /proc/self/mountinfo."""
    path = os.path.realpath(path)
    best = ("/", "?", "?")
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].replace("\\040", " ")
                fstype, source = (right.split() + ["?", "?"])[:2]
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, source)
    except OSError:
        pass
    return best


def data_root() -> str:
    """Where the brokers' temporary directories go: the system temporary directory unless it is a
    memory file system, else /var/tmp, else the repository's .bench-tmp (created)."""
    global _data_root
    if _data_root is None:
        for cand in (tempfile.gettempdir(), "/var/tmp", os.path.join(ROOT, ".bench-tmp")):
            try:
                os.makedirs(cand, exist_ok=True)
            except OSError:
                continue
            if mount_of(cand)[1] not in MEMORY_FS and os.access(cand, os.W_OK):
                _data_root = cand
                break
        else:
            _data_root = tempfile.gettempdir()
    return _data_root


def device_sectors_written(path: str) -> Optional[int]:
    """Sectors (512 B) written so far to the block device holding path (whole device, every process,
    file system journal included), from /proc/diskstats; None when it cannot be found."""
    st = os.stat(path)
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                v = line.split()
                if int(v[0]) == major and int(v[1]) == minor:
                    return int(v[9])
    except (OSError, ValueError, IndexError):
        pass
    return None


def read_io(pid: int) -> Dict[str, int]:
    """/proc/PID/io as a dict (empty when unreadable)."""
    out: Dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k.strip()] = int(v)
    except (OSError, ValueError):
        pass
    return out


def status_kib(pid: int, key: str) -> int:
    """A VmXXX line of /proc/PID/status in KiB (0 when the process is gone: VmHWM must be read before
    it exits)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat, readable until it is reaped
    (0.0 after)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, Z, ...), "" when the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def tree_bytes(path: str) -> int:
    """Sum of the sizes of the files under path (0 when it does not exist)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):  # an array; of inline tables for [[serial]]
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _conf_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _mosquitto_owned_dir(parent: str, path: str) -> None:
    """Create Mosquitto's persistence directory. Started as root, Mosquitto switches to its `user`
    (default "mosquitto", else "nobody") before it saves, as it does in service: the directory must then
    be that user's, and the temporary directory above it (mkdtemp: 0700) traversable."""
    os.makedirs(path, exist_ok=True)
    if os.geteuid() != 0:
        return
    import pwd
    for name in ("mosquitto", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        os.chmod(parent, 0o711)
        os.chown(path, pw.pw_uid, pw.pw_gid)
        return


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def repo_python() -> str:
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable


_broker_venv: Optional[str] = None


def broker_python() -> str:
    """The interpreter the benchmark runs edgebroker's broker with: the repository venv's own Python, in
    a virtualenv of its own (made once per run, without pip; removed by kill_all(), or at exit) whose one `.pth`
    line puts the repository venv's site-packages on sys.path for the broker's dependencies.

    An installed broker (`pip install .`, pi-image/install.sh) starts without the repository venv's
    editable install, whose `.pth` hook imports importlib's finder machinery, pathlib, urllib,
    ipaddress and re at every start: about 1 MiB of resident memory that every edgebroker row's peak
    RSS would otherwise carry (bench/README.md, "Issue 19"). A `.pth` line that is a path only extends
    sys.path: the hooks of that site-packages are not run. The broker itself still comes from the
    working tree (PYTHONPATH). Falls back to repo_python() when a virtualenv cannot be made."""
    global _broker_venv
    if _broker_venv is None:
        base = repo_python()
        made = tempfile.mkdtemp(prefix="bench-broker-venv-")
        import atexit  # also when a caller never reaches kill_all() (a script of one's own)
        atexit.register(shutil.rmtree, made, True)
        try:
            subprocess.run([base, "-m", "venv", "--without-pip", made], check=True, timeout=60,
                           capture_output=True)
            site = subprocess.run([base, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, timeout=30, capture_output=True, text=True).stdout.strip()
            own = subprocess.run([os.path.join(made, "bin", "python"), "-c",
                                  "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 check=True, timeout=30, capture_output=True, text=True).stdout.strip()
            with open(os.path.join(own, "edgebroker-bench.pth"), "w") as f:
                f.write(site + "\n")
            _broker_venv = made
        except (OSError, subprocess.SubprocessError):
            shutil.rmtree(made, ignore_errors=True)
            _broker_venv = ""
    return os.path.join(_broker_venv, "bin", "python") if _broker_venv else repo_python()


#: The `edgebroker` command as pip writes it for pyproject.toml's console script (pip's template), less the
#: two lines that import `re` for a Windows suffix, which pi-image/install.sh takes out: the Pi's service
#: starts the broker with this script (pi-image/edgebroker.service).
EDGEBROKER_SCRIPT = ("# -*- coding: utf-8 -*-\nimport sys\nfrom edgebroker.cli.broker import main\n"
                     "if __name__ == '__main__':\n    sys.exit(main())\n")


def broker_command() -> List[str]:
    """How the benchmark starts edgebroker's broker (its arguments follow): broker_python() running the
    `edgebroker` console script as an installed broker has it (EDGEBROKER_SCRIPT, written beside that
    interpreter). Not `python -m edgebroker`: runpy's importlib.util imports contextlib, collections,
    functools and types, about 0.6 MiB of resident memory the installed command does not load
    (bench/README.md, Issue 19)."""
    python = broker_python()
    script = os.path.join(os.path.dirname(python), "edgebroker")
    if not _broker_venv:  # no virtualenv of its own: a directory of the run's, removed at exit
        global _script_dir
        if _script_dir is None:
            _script_dir = tempfile.mkdtemp(prefix="bench-broker-script-")
            import atexit
            atexit.register(shutil.rmtree, _script_dir, True)
        script = os.path.join(_script_dir, "edgebroker")
    if not os.path.exists(script):
        with open(script, "w") as f:
            f.write(EDGEBROKER_SCRIPT)
    return [python, script]


_script_dir: Optional[str] = None


def mosquitto_binary() -> Optional[str]:
    for path in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if path and os.path.exists(path):
            return path
    return None


def mosquitto_version() -> str:
    exe = mosquitto_binary()
    if exe is None:
        return "not installed"
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=10)
        for line in (out.stdout + out.stderr).splitlines():
            if "version" in line:
                return line.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


_compiled = False


def compile_bytecode() -> None:
    """Compile the working tree's modules to __pycache__ once per run, as pip does when it installs the
    wheel: an installed broker loads bytecode, while one that compiles its sources at every start (as
    under PYTHONDONTWRITEBYTECODE, or from a directory it may not write) keeps 1.7 to 3.5 MiB more
    resident memory from the compiler (bench/README.md, "Issue 19")."""
    global _compiled
    if not _compiled:
        import compileall

        for package in ("edgebroker", "firmware_bridge"):
            compileall.compile_dir(os.path.join(ROOT, package), quiet=1)
        _compiled = True


_help_cache: Optional[str] = None


def edgebroker_help() -> str:
    global _help_cache
    if _help_cache is None:
        env = dict(os.environ, PYTHONPATH=ROOT)
        out = subprocess.run([repo_python(), "-m", "edgebroker", "--help"], capture_output=True, text=True,
                             timeout=30, cwd=ROOT, env=env)
        _help_cache = out.stdout + out.stderr
    return _help_cache


def edgebroker_has_config_file() -> bool:
    """Whether the CLI reads a configuration file (-c/--config-file)."""
    return "--config-file" in edgebroker_help()


def edgebroker_extra_args() -> List[str]:
    """`--no-persistence` when the CLI has it; nothing else (the benchmark measures the defaults)."""
    return ["--no-persistence"] if "--no-persistence" in edgebroker_help() else []


class Broker:
    """One running broker process. `kind` is "edgebroker" or "mosquitto"."""

    def __init__(self, kind: str, max_queued_messages: Optional[int] = None, seed: bool = True,
                 options: Optional[Dict[str, Any]] = None, disk: bool = False, tls: bool = False) -> None:
        """max_queued_messages None: the benchmark's default setup (edgebroker through its CLI with its
        defaults; Mosquitto with max_queued_messages 100000). A number: both brokers queue that many.
        options: more configuration options (edgebroker: TOML keys; Mosquitto: conf lines, replacing
        the defaults below), where "{data}" in a string value stands for the broker's data directory.
        disk: measure the disk writes of the broker's whole life (`final` after stop()).
        tls: the listener speaks TLS (tls_files(): a certificate for localhost and its key); `port` is
        then a workers.TlsPort, which the generator's clients connect to over TLS."""
        self.kind = kind
        self.max_queued = max_queued_messages
        self.seed = seed
        self.options = dict(options or {})
        self.disk = disk
        self.tls = tls
        self.port: int = free_port()
        if tls:
            self.port = TlsPort(self.port, tls_files()[0])
        self.dir = tempfile.mkdtemp(prefix=f"bench-{kind}-", dir=data_root())
        #: The persistence directory: edgebroker's default (XDG_DATA_HOME/edgebroker), Mosquitto's
        #: persistence_location when the options set one.
        self.data_dir = os.path.join(self.dir, kind)
        self.log_path = os.path.join(self.dir, "broker.log")
        self.proc: Optional[subprocess.Popen] = None
        self.note = ""
        self._cpu0 = 0.0
        #: Filled by stop(): /proc/PID/io at the zombie state, shutdown seconds, data bytes at the end,
        #: device sectors written over the broker's life (disk=True only).
        self.final: Dict[str, Any] = {}
        self._sectors0: Optional[int] = None

    def _opt(self, v: Any) -> Any:
        return v.replace("{data}", self.data_dir) if isinstance(v, str) else v

    def persists(self) -> bool:
        """Whether this broker is configured to write a persistence file."""
        default = self.kind == "edgebroker"
        return bool(self.options.get("persistence", default))

    # ---- lifecycle ---------------------------------------------------------------------------

    def command(self) -> List[str]:
        if self.kind == "mosquitto":
            exe = mosquitto_binary()
            if exe is None:
                raise RuntimeError("mosquitto not found: apt-get install -y mosquitto")
            conf = os.path.join(self.dir, "mosquitto.conf")
            opts = {k: self._opt(v) for k, v in self.options.items()}
            if "persistence_location" in opts:
                _mosquitto_owned_dir(self.dir, opts["persistence_location"])
            if self.tls:
                opts.update(zip(("certfile", "keyfile"), tls_files()))
            with open(conf, "w") as f:
                f.write(mosquitto_config(self.port, self.max_queued or 100_000, opts))
            if opts:
                self.note = ", ".join(f"{k} {_conf_value(v)}" for k, v in self.options.items())
            return [exe, "-c", conf]
        if self.kind == "edgebroker":
            base = broker_command() + ["-p", str(self.port)] + edgebroker_extra_args()
            if self.max_queued is None and not self.options and not self.tls:
                return base
            if edgebroker_has_config_file():
                conf = os.path.join(self.dir, "edgebroker.toml")
                lines = ["# generated by bench/: every other option at its default"]
                if self.max_queued is not None:
                    lines.append(f"max_queued_messages = {self.max_queued}")
                lines += [f"{k} = {_toml_value(self._opt(v))}" for k, v in self.options.items()]
                if self.tls:
                    # A listener of its own replaces -p's; a configured listener refuses anonymous
                    # clients unless told (Mosquitto 2.0), and the generator is anonymous.
                    cert, key = tls_files()
                    lines += ["allow_anonymous = true", "[[listener]]", f"port = {int(self.port)}",
                              'address = "127.0.0.1"', f"certfile = {_toml_value(cert)}",
                              f"keyfile = {_toml_value(key)}"]
                with open(conf, "w") as f:
                    f.write("\n".join(lines) + "\n")
                shown = ([f"max_queued_messages = {self.max_queued}"] if self.max_queued is not None else []) + \
                        [f"{k} = {_toml_value(v)}" for k, v in self.options.items()]
                self.note = "-c with " + ", ".join(shown) if shown else ""
                return base + ["-c", conf]
            if self.options:
                raise RuntimeError("this edgebroker CLI has no --config-file: cannot set " + ", ".join(self.options))
            # An older CLI without configuration files: start the same Server through the library API
            # with the one setting the scenario needs (bench/edge_launch.py mirrors the CLI).
            self.note = f"started via bench/edge_launch.py (max_queued_messages {self.max_queued})"
            return [broker_python(), os.path.join(ROOT, "bench", "edge_launch.py"), "-p", str(self.port),
                    "--max-queued-messages", str(self.max_queued)]
        raise ValueError(self.kind)

    def start(self, timeout: float = 15.0) -> None:
        cmd = self.command()
        env = dict(os.environ, PYTHONPATH=ROOT)  # measure the working tree, not an installed copy
        env.pop("PYTHONDEVMODE", None)
        if self.kind == "edgebroker":
            compile_bytecode()
            # Its default data directory, inside this run's temporary directory: persistence stays on as
            # by default, but every run starts from the same empty database and nothing is left behind.
            # The database is a copy of one created (schema migrated) by a first start, so that each run
            # measures a broker starting on an existing database, as it does in service, not the
            # one-off migration (which imports sqlite-utils and costs ~20 MiB of RSS for the process).
            env["XDG_DATA_HOME"] = self.dir
            if self.seed and self.persists():
                seed = edgebroker_seed_dir()
                if seed is not None:
                    shutil.copytree(seed, self.data_dir)
            if self.persists():
                # A persistence_location must exist (Mosquitto's rule, and edgebroker's): the S9 rows name it.
                os.makedirs(self.data_dir, exist_ok=True)
        if self.disk:
            # Flush everything dirty first (the seed copy above included), so that the device counter
            # below starts from a clean page cache; stop() syncs again before reading it.
            os.sync()
            self._sectors0 = device_sectors_written(self.dir)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, env=env, start_new_session=True)
        finally:
            log.close()
        STARTED[self.proc.pid] = self.proc
        deadline = time.monotonic() + timeout
        last_err: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with code {self.proc.returncode} at start:\n{self.log_tail()}")
            try:
                probe(self.port)
                self._cpu0 = self.cpu_seconds()
                return
            except (OSError, wire.ProtocolError) as exc:
                last_err = exc
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} not answering on port {self.port} after {timeout:.0f} s ({last_err}):\n"
                           f"{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (a clean shutdown: Mosquitto's final save, SQLite's final commit and checkpoint), then
        wait. With disk=True, fill `final` first: /proc/PID/io read in the zombie state, before reaping."""
        proc = self.proc
        if proc is None:
            return
        try:
            if self.disk:
                try:
                    self._stop_measured(proc, timeout)
                except Exception as exc:  # measuring must never leave a broker running
                    self.final["io_note"] = f"measurement failed: {type(exc).__name__}: {exc}"
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        finally:
            STARTED.pop(proc.pid, None)
            self.proc = None
            shutil.rmtree(self.dir, ignore_errors=True)

    def _stop_measured(self, proc: subprocess.Popen, timeout: float) -> None:
        pid = proc.pid
        if proc.returncode is not None or proc_state(pid) in ("", "Z", "X"):
            self.final["io_note"] = "the broker had exited before the end of the scenario"
            self.final["io"] = read_io(pid)
            return
        self.final["data_bytes_before_stop"] = tree_bytes(self.data_dir)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        state = ""
        # Not proc.poll(): it would reap the process, and /proc/PID/io with it.
        while time.monotonic() - t0 < timeout:
            state = proc_state(pid)
            if state in ("Z", "X", ""):
                break
            time.sleep(0.005)
        if state != "Z":
            self.final["io_note"] = (f"no zombie state within {timeout:.0f} s of SIGTERM (state {state!r}): "
                                     f"counters read before reaping anyway")
        self.final["shutdown_s"] = time.monotonic() - t0
        self.final["io"] = read_io(pid)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self.final["exit_code"] = proc.returncode
        self.final["data_bytes_end"] = tree_bytes(self.data_dir)
        self.final["data_files_end"] = {os.path.relpath(os.path.join(d, n), self.data_dir):
                                        os.path.getsize(os.path.join(d, n))
                                        for d, _s, fs in os.walk(self.data_dir) for n in fs}
        self.final["log_bytes"] = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        # A broker that could not save (Mosquitto's "Error saving in-memory database", SQLite errors)
        # must not pass for one that writes little.
        self.final["log_errors"] = self.log_lines("error", "warning", limit=5)
        if self._sectors0 is not None:
            os.sync()  # write back what the broker left dirty, so the device counter includes it
            s1 = device_sectors_written(self.dir)
            if s1 is not None:
                self.final["device_bytes"] = (s1 - self._sectors0) * 512

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pin(self, cpu: int) -> None:
        """Run every thread of the broker on that one CPU from now on (S8-apart, S8-shared)."""
        assert self.proc is not None
        for tid in os.listdir(f"/proc/{self.proc.pid}/task"):
            os.sched_setaffinity(int(tid), {cpu})

    def log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def log_lines(self, *needles: str, limit: int = 3) -> List[str]:
        """Distinct log lines (timestamp stripped) containing any needle, case-insensitive."""
        found: List[str] = []
        try:
            with open(self.log_path, "rb") as f:
                for raw in f:
                    line = raw.decode("utf-8", "replace").strip()
                    low = line.lower()
                    if any(n in low for n in needles):
                        text = line.split(": ", 1)[-1]
                        if text not in found:
                            found.append(text)
                            if len(found) >= limit:
                                break
        except OSError:
            pass
        return found

    # ---- measurements ------------------------------------------------------------------------

    def rss_kib(self) -> int:
        assert self.proc is not None
        return status_kib(self.proc.pid, "VmRSS")

    def hwm_kib(self) -> int:
        assert self.proc is not None
        return status_kib(self.proc.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        """utime + stime of the broker process (all its threads), from /proc/PID/stat."""
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    def mark_cpu(self) -> None:
        self._cpu0 = self.cpu_seconds()

    def cpu_since_mark(self) -> float:
        return self.cpu_seconds() - self._cpu0


def mosquitto_config(port: int, max_queued: int, options: Optional[Dict[str, Any]] = None) -> str:
    """options replace the defaults here (e.g. persistence true) or add lines (persistence_location)."""
    conf: Dict[str, Any] = {
        "allow_anonymous": True,
        "persistence": False,
        "max_queued_messages": max_queued,
        "max_queued_bytes": 0,
        "max_inflight_messages": 20,
    }
    conf.update(options or {})
    return "\n".join(["# generated by bench/: loopback only; queues large enough that no scenario drops messages",
                      f"listener {port} 127.0.0.1"] + [f"{k} {_conf_value(v)}" for k, v in conf.items()] + [""])


_tls_files: Optional[Tuple[str, str]] = None


def tls_files() -> Tuple[str, str]:
    """(certificate, key) for localhost and 127.0.0.1, made once per run with the openssl command:
    self-signed, ECDSA P-256 (what a gateway's certificate usually is); the clients trust it as a CA."""
    global _tls_files
    if _tls_files is None:
        d = tempfile.mkdtemp(prefix="bench-tls-", dir=data_root())
        import atexit
        atexit.register(shutil.rmtree, d, True)
        cert, key = os.path.join(d, "server.pem"), os.path.join(d, "server.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, capture_output=True)
        os.chmod(key, 0o644)  # Mosquitto reads it after switching to its own user
        os.chmod(d, 0o755)
        _tls_files = (cert, key)
    return _tls_files


def probe(port: int, timeout: float = 2.0) -> None:
    """One MQTT CONNECT/CONNACK round trip, then DISCONNECT: the broker is ready."""
    s = open_socket(port, timeout)
    try:
        s.sendall(wire.connect("bench-probe"))
        data = b""
        while len(data) < 4:
            chunk = s.recv(4 - len(data))
            if not chunk:
                raise wire.ProtocolError("connection closed before CONNACK")
            data += chunk
        if data[0] != 0x20 or data[3] != 0:
            raise wire.ProtocolError(f"bad CONNACK {data!r}")
        s.sendall(wire.DISCONNECT_BYTES)
    finally:
        s.close()


_seed: Optional[str] = None
_seed_done = False


def edgebroker_seed_dir() -> Optional[str]:
    """A data directory holding the database an edgebroker start creates (None when it creates none,
    e.g. with persistence off). Made once per benchmark run; removed by kill_all(), or at exit."""
    global _seed, _seed_done
    if not _seed_done:
        _seed_done = True
        b = Broker("edgebroker", seed=False)
        try:
            b.start()
            b.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            b.proc.wait(timeout=10)  # type: ignore[union-attr]
            data = os.path.join(b.dir, "edgebroker")
            if os.path.isdir(data) and os.listdir(data):
                _seed = tempfile.mkdtemp(prefix="bench-edgebroker-seed-")
                import atexit  # also when a caller never reaches kill_all() (a script of one's own)
                atexit.register(shutil.rmtree, _seed, True)
                os.rmdir(_seed)
                shutil.copytree(data, _seed)
        finally:
            b.stop()
    return _seed


def kill_all() -> None:
    """Last resort: kill every broker still registered (each by its own pid)."""
    global _broker_venv
    for pid, proc in list(STARTED.items()):
        try:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        except (OSError, subprocess.SubprocessError):
            pass
        STARTED.pop(pid, None)
    if _seed is not None:
        shutil.rmtree(_seed, ignore_errors=True)
    if _broker_venv:
        shutil.rmtree(_broker_venv, ignore_errors=True)
        _broker_venv = None
