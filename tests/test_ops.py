"""Running the broker the way an init system and an administrator do: one database per broker, the
persistence directory, the test session's isolation from the user's database, start-up failures.

Theory of operation: brokers run as real processes (`python -m edgebroker`, or tests/brokerproc.py
when a test kills one with SIGKILL), each with its own temporary data directory; a test waits for a
log line or an exit with a deadline, never by sleeping. Tests that need a user other than root (file
permissions mean nothing to root) drop to `nobody` in the child, after importing what they need
(this venv may live under /root, closed to other users). Every process started here is killed at
teardown.
"""
from __future__ import annotations

import os
import pwd
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest

from edgebroker.config import default_data_dir

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 15.0


def child_env(**extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


class Broker:
    """`python -m edgebroker ARGS` with its stderr (the log) read line by line with deadlines."""

    def __init__(self, args: Sequence[str], env: Dict[str, str], cwd: Optional[str] = None) -> None:
        self.p = subprocess.Popen([sys.executable, "-m", "edgebroker", *args], env=env, cwd=cwd or str(REPO),
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.seen: List[str] = []
        self._buf = b""

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> str:
        """The first line (from here on) matching the regular expression; fails at EOF or after timeout."""
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                raw, self._buf = self._buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace")
                self.seen.append(line)
                if re.search(pattern, line):
                    return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {pattern!r} within {timeout}s:\n" + "\n".join(self.seen))
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"exit {self.p.wait(TIMEOUT)} before a line with {pattern!r}:\n"
                                         + "\n".join(self.seen))
                self._buf += chunk

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(TIMEOUT)
        finally:
            if self.p.stdout is not None:
                self.p.stdout.close()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(TIMEOUT)
        if self.p.stdout is not None and not self.p.stdout.closed:
            self.p.stdout.close()


@pytest.fixture
def brokers() -> Iterator[List[Broker]]:
    made: List[Broker] = []
    yield made
    for b in made:
        b.kill()


def start(made: List[Broker], *args: str, env: Dict[str, str], cwd: Optional[str] = None) -> Broker:
    b = Broker(args, env, cwd)
    made.append(b)
    return b


def run(*args: str, env: Dict[str, str], cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgebroker", *args], env=env, cwd=cwd or str(REPO),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT * 2)


# ---------------------------------------------------------------------------------------------------------
# One database, one broker
# ---------------------------------------------------------------------------------------------------------

def test_a_second_broker_on_the_same_database_refuses_to_start_naming_file_and_holder(tmp_path, brokers):
    """The issue's case: `edgebroker -p A` and `edgebroker -p B` side by side on the default database.
    The second exits 1 naming the database and the first one's pid; after the first stops cleanly a
    new broker starts on that database."""
    env = child_env(XDG_DATA_HOME=str(tmp_path))
    db = tmp_path / "edgebroker" / "edgebroker.db"
    first = start(brokers, "-p", "0", env=env)
    first.expect(r"version \S+ running$")
    second = run("-p", "0", env=env)
    assert second.returncode == 1, second.stderr
    assert f"Error: persistence database {db} is in use by process {first.p.pid}" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    assert first.p.poll() is None  # the first is untouched
    assert first.stop() == 0
    assert not (tmp_path / "edgebroker" / "edgebroker.db.lock").exists()  # removed at a clean stop
    third = start(brokers, "-p", "0", env=env)
    third.expect(r"version \S+ running$")
    assert third.stop() == 0


def test_a_killed_brokers_lock_does_not_block_the_restart(tmp_path):
    """SIGKILL leaves the lock file behind, but the kernel dropped the lock: the next broker starts, and
    while it runs a second one is refused with the new holder's pid."""
    data = tmp_path / "data"
    data.mkdir()
    cmd = [sys.executable, str(REPO / "tests" / "brokerproc.py"), "--dir", str(data)]
    procs: List[subprocess.Popen] = []

    def launch() -> subprocess.Popen:
        p = subprocess.Popen(cmd, env=child_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        procs.append(p)
        return p

    def port_line(p: subprocess.Popen) -> str:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], TIMEOUT)
        assert ready, "no PORT line"
        return p.stdout.readline().decode()

    try:
        a = launch()
        assert port_line(a).startswith("PORT ")
        a.kill()
        a.wait(TIMEOUT)
        assert (data / "edgebroker.db.lock").exists()
        b = launch()
        assert port_line(b).startswith("PORT ")
        c = launch()
        assert c.wait(TIMEOUT) == 1
        err = c.stderr.read().decode()  # type: ignore[union-attr]
        assert f"{data / 'edgebroker.db'} is in use by process {b.pid}" in err, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(TIMEOUT)
            for f in (p.stdout, p.stderr):
                if f is not None:
                    f.close()


# ---------------------------------------------------------------------------------------------------------
# Test isolation: nothing here touches the user's default database
# ---------------------------------------------------------------------------------------------------------

def test_the_test_session_never_uses_the_users_default_database():
    """conftest points XDG_DATA_HOME at a temporary directory for the whole session: the default data
    directory, here and in any child process (which inherits the environment), is inside it."""
    real = [os.path.join(os.path.expanduser("~"), ".local", "share", "edgebroker"), "/var/lib/edgebroker"]
    xdg = os.environ.get("XDG_DATA_HOME", "")
    assert xdg and os.path.realpath(xdg).startswith(os.path.realpath(tempfile.gettempdir()) + os.sep), xdg
    here = default_data_dir()
    assert here == os.path.join(xdg, "edgebroker") and here not in real
    child = subprocess.run([sys.executable, "-c", "from edgebroker.config import default_data_dir as d; print(d())"],
                           env=child_env(), capture_output=True, text=True, timeout=TIMEOUT, cwd=str(REPO))
    assert child.stdout.strip() == here, child


# ---------------------------------------------------------------------------------------------------------
# persistence_location: missing or not writable
# ---------------------------------------------------------------------------------------------------------

def test_a_persistence_location_that_does_not_exist_is_an_error_and_is_not_created(tmp_path):
    """Mosquitto's behaviour: the directory must exist. (Before, it was created silently, as root with an
    empty database.) The default data directory is still created."""
    missing = tmp_path / "no" / "such"
    conf = tmp_path / "b.conf"
    conf.write_text(f"listener 0 {tmp_path / 'sock'}\nallow_anonymous true\npersistence true\n"
                    f"persistence_location {missing}/\n")
    done = run("-c", str(conf), env=child_env())
    assert done.returncode == 1, done.stderr
    assert f"the directory {missing}" in done.stderr and "does not exist" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not missing.exists() and not (tmp_path / "no").exists()


#: As root, import what is needed, drop to the uid/gid given, then start a Server on ./data.
UNPRIVILEGED_SERVER = """
import os, sys
from edgebroker.config import Config, Listener
from edgebroker.server import Server
from edgebroker.store import StoreError
uid, gid = int(sys.argv[1]), int(sys.argv[2])
if os.geteuid() != uid:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
try:
    Server(Config(listeners=[Listener(0, "127.0.0.1")], persistence_location="data"))
except StoreError as exc:
    print(exc)
    sys.exit(3)
print("STARTED")
"""


@pytest.mark.parametrize("mode", [0o555, 0o666])
def test_a_persistence_location_that_is_not_writable_says_so(tmp_path, mode):
    """A directory the broker's user cannot write (0555) or cannot enter (0666, where SQLite then failed
    to open the file and the error advised moving aside a database that does not exist): the error
    says the directory is not writable, names it, and advises nothing about a database file."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    tmp_path.chmod(0o755)
    (tmp_path / "data").mkdir()
    (tmp_path / "data").chmod(mode)
    done = subprocess.run([sys.executable, "-c", UNPRIVILEGED_SERVER, str(uid), str(gid)], cwd=str(tmp_path),
                          env=child_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert done.returncode == 3, (done.stdout, done.stderr)
    assert "the directory data is not writable" in done.stdout, done.stdout
    assert "mv " not in done.stdout and "aside" not in done.stdout, done.stdout
    (tmp_path / "data").chmod(0o755)
    assert os.listdir(tmp_path / "data") == []


# ---------------------------------------------------------------------------------------------------------
# `user`: started as root, the broker does as root what needs root, then runs as that user
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def throwaway_user() -> Iterator[pwd.struct_passwd]:
    """A system user made for this test (useradd) and removed after it (userdel)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("switching users needs root (the suite runs as root here and in CI)")
    name = f"ebt{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, timeout=TIMEOUT)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=TIMEOUT)


def test_user_option_as_root_migrates_the_database_as_root_then_runs_as_the_user(throwaway_user, brokers):
    """`python -m edgebroker -c FILE` as root with `user`, the interpreter living under /root (closed to
    other users): the new database's schema is created (sqlite-utils, in a child interpreter) while
    still root, then the broker runs as the user and owns the database's files. Before, the child ran
    after the switch and failed with ModuleNotFoundError."""
    user = throwaway_user
    work = Path(tempfile.mkdtemp(prefix="edgebroker-user-", dir="/tmp"))
    try:
        work.chmod(0o755)
        (work / "data").mkdir()
        conf = work / "edgebroker.toml"
        conf.write_text(f'user = "{user.pw_name}"\npersistence_location = "{work}/data"\n'
                        '[[listener]]\nport = 0\naddress = "127.0.0.1"\n')
        b = start(brokers, "-c", str(conf), env=child_env(), cwd=str(work))
        b.expect(r"Running as user " + user.pw_name)
        b.expect(r"version \S+ running$")
        status = Path(f"/proc/{b.p.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:5] == [str(user.pw_uid)] * 4, uid_line
        db = work / "data" / "edgebroker.db"
        for name in (db, work / "data" / "edgebroker.db.lock", work / "data"):
            assert name.stat().st_uid == user.pw_uid, name
        assert not any("Error" in line or "Traceback" in line for line in b.seen), b.seen
        assert b.stop() == 0
        assert not (work / "data" / "edgebroker.db.lock").exists()
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Start-up failures: named, logged, and reported by -d
# ---------------------------------------------------------------------------------------------------------

def _busy_port() -> "socket.socket":
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s


def test_a_listener_that_cannot_listen_is_named_with_address_port_and_line(tmp_path):
    busy = _busy_port()
    port = busy.getsockname()[1]
    try:
        conf = tmp_path / "b.conf"
        conf.write_text(f"persistence false\nallow_anonymous true\nlistener 0 {tmp_path / 's'}\n"
                        f"listener {port} 127.0.0.1\n")
        done = run("-c", str(conf), env=child_env())
    finally:
        busy.close()
    assert done.returncode == 1, done.stderr
    assert f"Error: cannot listen on address 127.0.0.1 port {port}: Address already in use " \
           f"(the listener at {conf}:4)" in done.stderr, done.stderr


@pytest.mark.parametrize("case", ["pid-file-directory", "damaged-database", "busy-listener"])
def test_daemon_reports_every_start_up_failure_on_the_terminal_in_the_log_and_by_its_exit_status(case, tmp_path):
    """`-d` with a start-up error after the fork (a pid file in a missing directory, a damaged database)
    or before it (a busy port): exit status 1, the error on the terminal and in the log file. Before,
    the first two exited 0 with nothing listening and nothing said."""
    log_file = tmp_path / "b.log"
    data = tmp_path / "data"
    data.mkdir()
    lines = [f"log_dest file {log_file}", "persistence true", f"persistence_location {data}/",
             "allow_anonymous true"]
    busy = None
    if case == "pid-file-directory":
        lines.append(f"pid_file {tmp_path / 'no-such-dir' / 'b.pid'}")
        expected = f"cannot write pid file {tmp_path / 'no-such-dir' / 'b.pid'}: No such file or directory"
    elif case == "damaged-database":
        (data / "edgebroker.db").write_bytes(b"SQLite format 3\0" + b"\xff" * 4000)
        expected = f"persistence database {data / 'edgebroker.db'}"
    else:
        busy = _busy_port()
        lines.append(f"listener {busy.getsockname()[1]} 127.0.0.1")
        expected = f"cannot listen on address 127.0.0.1 port {busy.getsockname()[1]}"
    if case != "busy-listener":
        lines.append(f"listener 0 {tmp_path / 'sock'}")
    conf = tmp_path / "b.conf"
    conf.write_text("\n".join(lines) + "\n")
    try:
        done = run("-c", str(conf), "-d", env=child_env())
    finally:
        if busy is not None:
            busy.close()
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert f"Error: {expected}" in done.stderr, done.stderr
    assert expected in log_file.read_text(), log_file.read_text()
    assert not (tmp_path / "sock").exists()  # nothing left serving


# ---------------------------------------------------------------------------------------------------------
# -t: what can be checked without starting
# ---------------------------------------------------------------------------------------------------------

def test_check_config_checks_directories_and_listener_addresses(tmp_path):
    good = tmp_path / "ok"
    good.mkdir()
    conf = tmp_path / "b.conf"
    conf.write_text(f"log_dest file {good}/b.log\npid_file {good}/b.pid\npersistence true\n"
                    f"persistence_location {good}/\nallow_anonymous true\nlistener 1883 127.0.0.1\n")
    done = run("-c", str(conf), "-t", env=child_env())
    assert done.returncode == 0 and done.stdout == f"{conf}: OK\n", done
    assert not (good / "b.log").exists() and not (good / "b.pid").exists()  # nothing created

    missing = tmp_path / "missing"
    conf.write_text(f"log_dest file {missing}/b.log\npid_file {missing}/b.pid\npersistence true\n"
                    f"persistence_location {missing}/\nallow_anonymous true\nlistener 1883 127.0.0.1\n")
    done = run("-c", str(conf), "-t", env=child_env())
    assert done.returncode == 1, done
    err = done.stderr
    assert f"Error: {conf}: log file (log_dest file): the directory {missing} of {missing}/b.log does not exist" \
        in err, err
    assert f"Error: {conf}: pid_file: the directory {missing} of {missing}/b.pid does not exist" in err, err
    assert f"Error: {conf}: persistence_location: the directory {missing} does not exist" in err, err
    assert "listener" not in err, err
    assert not missing.exists()


def test_check_config_names_a_listener_address_this_host_does_not_have(tmp_path):
    """In a network namespace of our own (unshare -n: its loopback is down, so ::1 does not exist) a
    listener on ::1 is reported by -t; nothing else is wrong with the file."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare (util-linux) for a network namespace")
    conf = tmp_path / "b.conf"
    conf.write_text("persistence false\nallow_anonymous true\nlistener 1883 ::1\nlistener 1884 127.0.0.1\n")
    done = subprocess.run(["unshare", "-n", sys.executable, "-m", "edgebroker", "-c", str(conf), "-t"],
                          env=child_env(), cwd=str(REPO), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=TIMEOUT)
    if "unshare failed" in done.stderr or "unshare:" in done.stderr:
        pytest.skip(f"cannot create a network namespace here: {done.stderr.strip()}")
    assert done.returncode == 1, done
    assert done.stderr == f"Error: {conf}: listener on port 1883, address ::1: address ::1 is not an address " \
                          "of this host\n", done.stderr


# ---------------------------------------------------------------------------------------------------------
# SIGHUP: options read only at start
# ---------------------------------------------------------------------------------------------------------

def test_a_reload_that_changes_restart_only_options_says_which_and_keeps_them(tmp_path):
    """persistence false -> true, durability and pid_file changed on reload: the log names them and says
    a restart is needed; the running broker keeps the old values (its config says what it does), and
    the rest of the file (max_queued_messages) is applied. Before, it said only "Reloaded"."""
    import threading

    from edgebroker.config import Config, Listener
    from edgebroker.server import Server
    from util import wait_for

    first = Config(listeners=[Listener(0, "127.0.0.1")], persistence=False, max_queued_messages=7)
    second = Config(listeners=[Listener(0, "127.0.0.1")], persistence=True, persistence_location=str(tmp_path),
                    durability="sync", pid_file=str(tmp_path / "b.pid"), max_queued_messages=3)
    lines: List[str] = []
    server = Server(first, log=lambda level, msg: lines.append(msg), reloader=lambda: second)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        server.request_reload()
        wait_for(lambda: "Reloaded configuration." in lines, what="the reload")
    finally:
        server.shutdown()
        thread.join(10)
    warning = next(line for line in lines if "restart" in line)
    assert warning.startswith("Warning: persistence, persistence_location, durability, pid_file changed:"), warning
    assert server.config.persistence is False and server.config.durability == "crash"
    assert server.config.pid_file is None
    assert server.broker.config.max_queued_messages == 3
    assert not any(name.startswith("edgebroker") for name in os.listdir(tmp_path))  # no database opened


# ---------------------------------------------------------------------------------------------------------
# A Mosquitto file moved over: every refused option reported at once
# ---------------------------------------------------------------------------------------------------------

def test_every_refused_option_of_a_file_is_reported_at_once(tmp_path):
    """Unknown and unsupported options, in the main file and an included one, come back in one error
    (file, line and option each), in reading order, and the CLI prints one `Error:` line each. Before,
    a run reported the first only: one edit-and-rerun cycle per option."""
    from edgebroker.configfile import load_config
    from edgebroker.errors import ConfigError

    inc = tmp_path / "conf.d"
    inc.mkdir()
    (inc / "extra.conf").write_text("mount_point site/\n")
    main = tmp_path / "m.conf"
    main.write_text("allow_anonymous true\nhttp_dir /www\nsys_interval 5\nno_such_option 1\n"
                    f"listener 1883 127.0.0.1\nmemory_limit 1000\ninclude_dir {inc}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(main))
    where = [(e.file, e.line, e.option) for e in info.value.errors]  # type: ignore[attr-defined]
    assert where == [(str(main), 2, "http_dir"), (str(main), 4, "no_such_option"), (str(main), 6, "memory_limit"),
                     (str(inc / "extra.conf"), 1, "mount_point")], where
    done = run("-c", str(main), "-t", env=child_env())
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert [line.split(": ")[2] for line in lines] == ["http_dir", "no_such_option", "memory_limit",
                                                       "mount_point"], lines
    assert all(line.startswith("Error: ") for line in lines), lines

    # A value error stops the reading: the refusals before it come with it; one found when the file is
    # read through comes after them.
    main.write_text("http_dir /www\nmax_keepalive five\nmount_point x/\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(main))
    assert [(e.line, e.option) for e in info.value.errors] == [(1, "http_dir"), (2, "max_keepalive")]  # type: ignore
    main.write_text("http_dir /www\nmax_keepalive 5\nmount_point x/\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(main))
    assert [(e.line, e.option) for e in info.value.errors] == [  # type: ignore
        (1, "http_dir"), (3, "mount_point"), (2, "max_keepalive")]

    toml = tmp_path / "m.toml"
    toml.write_text('http_dir = "/www"\nsys_interval = 5\nmount_point = "x/"\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(toml))
    assert [(e.line, e.option) for e in info.value.errors] == [(1, "http_dir"), (3, "mount_point")]  # type: ignore


# ---------------------------------------------------------------------------------------------------------
# log_facility: a real syslog socket
# ---------------------------------------------------------------------------------------------------------

def test_log_facility_sends_syslog_lines_to_local_n(tmp_path):
    """`log_dest syslog` with `log_facility 5`: the lines reach /dev/log (a datagram socket of ours, bound
    there, or bind-mounted over the system's in a mount namespace of our own) with facility local5;
    without log_facility, daemon."""
    import socket as so
    if os.geteuid() != 0:
        pytest.skip("binding /dev/log needs root")
    sock_path = tmp_path / "log"
    listener = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(TIMEOUT)
    own_dev_log = not os.path.exists("/dev/log")
    try:
        for facility_line, facility in (("log_facility 5\n", 21), ("", 3)):  # local5 = 21, daemon = 3
            conf = tmp_path / "s.conf"
            conf.write_text(f"log_dest syslog\n{facility_line}persistence false\nallow_anonymous true\n"
                            f"listener 0 {tmp_path / 'mqtt.sock'}\n")
            argv = [sys.executable, "-m", "edgebroker", "-c", str(conf)]
            if own_dev_log:
                os.symlink(str(sock_path), "/dev/log")
            else:
                if not shutil.which("unshare"):
                    pytest.skip("/dev/log exists and no unshare to put ours in its place")
                argv = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                        f'mount --bind "{sock_path}" /dev/log && exec "$@"', "sh", *argv]
            proc = subprocess.Popen(argv, env=child_env(), cwd=str(REPO), stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                seen = []
                while True:
                    data = listener.recv(4096).decode("utf-8", "replace")
                    seen.append(data)
                    if " running" in data:
                        break
                pri = int(data[1:data.index(">")])
                assert (pri >> 3, pri & 7) == (facility, 5), seen  # severity notice
                assert "edgebroker[" in data, data
            finally:
                proc.terminate()
                assert proc.wait(TIMEOUT) == 0, proc.stderr.read()  # type: ignore[union-attr]
                proc.stderr.close()  # type: ignore[union-attr]
                if own_dev_log:
                    os.unlink("/dev/log")
    finally:
        listener.close()


# ---------------------------------------------------------------------------------------------------------
# socket_domain: one address family per listener
# ---------------------------------------------------------------------------------------------------------

def test_socket_domain_binds_one_family(tmp_path):
    """`listener PORT localhost` with socket_domain ipv4 binds 127.0.0.1 only; socket_domain ipv6 with an
    IPv4 address is an error naming the listener; a bad value names file, line and option."""
    from edgebroker.configfile import load_config
    from edgebroker.errors import ConfigError, ListenError
    from edgebroker.server import Server

    conf = tmp_path / "d.conf"
    toml = tmp_path / "d.toml"
    toml.write_text('persistence = false\n[[listener]]\nport = 0\naddress = "localhost"\nsocket_domain = "ipv4"\n')
    server = Server(load_config(str(toml)).config)
    try:
        assert [ls.family for ls in server._listening] == [socket_family("ipv4")]
        assert server._listening[0].sock.getsockname()[0] == "127.0.0.1"
    finally:
        server.close()
    toml.write_text('persistence = false\n[[listener]]\nport = 0\naddress = "127.0.0.1"\nsocket_domain = "ipv6"\n')
    with pytest.raises(ListenError) as info:
        Server(load_config(str(toml)).config)
    assert "cannot listen on address 127.0.0.1 port 0: it has no ipv6 address (socket_domain ipv6)" in str(info.value)
    conf.write_text("listener 1883 127.0.0.1\nsocket_domain ipv5\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(conf))
    assert str(info.value).startswith(f"{conf}:2: socket_domain: must be ipv4 or ipv6"), str(info.value)


def socket_family(domain: str) -> int:
    import socket as so
    return so.AF_INET if domain == "ipv4" else so.AF_INET6


def test_accepted_sockets_have_tcp_nodelay_as_configured_before_and_after_a_reload():
    """set_tcp_nodelay (default true, Mosquitto's option): the broker's side of every accepted TCP
    connection has TCP_NODELAY as configured, whether the socket inherited it from the listener (Linux,
    no system call per connection) or got it at accept, and a reload that turns it off or on again
    applies to the connections accepted after it."""
    import socket
    import threading

    from edgebroker.config import Config, Listener
    from edgebroker.server import Server
    from mqttwire import connect as connect_packet
    from util import wait_for

    configs = [Config(listeners=[Listener(0, "127.0.0.1")], persistence=False, allow_anonymous=True,
                      set_tcp_nodelay=on) for on in (True, False, True)]
    lines: List[str] = []
    server = Server(configs[0], log=lambda level, msg: lines.append(msg), reloader=lambda: configs.pop(1))
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    clients = []
    try:
        seen = []
        for step in range(3):
            if step:
                server.request_reload()
                wait_for(lambda: lines.count("Reloaded configuration.") == step, what="the reload")
            client = socket.create_connection(("127.0.0.1", server.ports[0]), timeout=10)
            clients.append(client)
            client.sendall(connect_packet(f"nodelay-{step}"))
            assert client.recv(4)[:2] == b"\x20\x02"  # CONNACK: the loop has accepted it
            conn = next(c for c in list(server.broker.connections) if c.client_id == f"nodelay-{step}")
            seen.append(conn.handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        assert seen == [1, 0, 1]
    finally:
        for client in clients:
            client.close()
        server.shutdown()
        thread.join(10)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the accept queue's length is Linux's TCP_INFO")
def test_accept_queue_is_the_number_of_connections_waiting_to_be_accepted():
    """The loop accepts as many connections as its listener's accept queue holds (hostos.accept_queue,
    read from Linux's TCP_INFO), not until accept() fails, and reads in the same turn a connection
    that has sent bytes already (hostos.bytes_received): both counts must be the kernel's."""
    import socket

    from edgebroker.hostos import accept_queue, bytes_received
    from util import wait_for

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    clients = []
    try:
        assert accept_queue(listener) == 0
        for _ in range(3):
            clients.append(socket.create_connection(listener.getsockname(), timeout=10))
        wait_for(lambda: accept_queue(listener) == 3, what="3 connections in the accept queue")
        accepted = listener.accept()[0]
        assert accept_queue(listener) == 2
        assert bytes_received(accepted) == 0
        clients[0].sendall(b"0123456789")
        wait_for(lambda: bytes_received(accepted) == 10, what="10 bytes received")
        accepted.close()
    finally:
        for client in clients:
            client.close()
        listener.close()
    unix = socket.socket(socket.AF_UNIX)
    try:
        assert accept_queue(unix) == 0  # not TCP: not known
    finally:
        unix.close()


def test_a_burst_of_connections_waiting_before_the_loop_runs_is_accepted_whole():
    """More connections than one turn accepts (ACCEPT_BATCH) wait in the accept queue, each with its
    CONNECT sent, before the loop starts: every one gets its CONNACK (the rest in the next turns)."""
    import socket
    import threading

    from edgebroker.config import Config, Listener
    from edgebroker.server import ACCEPT_BATCH, Server
    from mqttwire import connect as connect_packet

    server = Server(Config(listeners=[Listener(0, "127.0.0.1")], persistence=False, allow_anonymous=True))
    clients = []
    thread = threading.Thread(target=server.serve_forever)
    try:
        for k in range(ACCEPT_BATCH + 7):
            client = socket.create_connection(("127.0.0.1", server.ports[0]), timeout=10)
            clients.append(client)
            client.sendall(connect_packet(f"burst-{k}"))
        thread.start()
        for client in clients:
            assert client.recv(4) == b"\x20\x02\x00\x00"
        assert server.broker.stats.clients_connected == ACCEPT_BATCH + 7
    finally:
        for client in clients:
            client.close()
        server.shutdown()
        if thread.is_alive():
            thread.join(10)
        else:
            server.close()
