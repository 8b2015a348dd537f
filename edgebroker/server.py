"""The event loop: the only code with sockets, the selector and the clock.

One turn of the loop reads like a list (Mosquitto's main loop is the model):
  select(timeout = next timer)  ->  now = monotonic(), read once
  accept new connections; recv up to 16 KiB from each readable socket (RECV_SIZE) and hand it to the core
  flow control                  ->  stop reading publishers the core paused, resume the others
  broker.tick(now)              ->  connect deadlines, keepalive, $SYS (called when one is due)
  broker.end_turn(now)          ->  one SQLite transaction for what this turn must make durable; while
                                    more input is already waiting it is handled first (up to 5 ms);
                                    changes nothing waits on (acknowledged deliveries) are committed
                                    with the next one that is waited on, or within a second
  flush                         ->  one send per connection with output; EVENT_WRITE only on backlog
  close                         ->  sockets of connections the core ended, after a last flush
`shutdown()` and `request_reload()` may be called from another thread or a signal handler: they set a
flag and write one byte to a wake-up socket, nothing more; the loop does the work between turns.

Hosted concerns (bridges, serial ports, GPIO) share the loop without a thread of their own in the core:
their file descriptors enter the same selector (`add_reader`, `add_writer`), their timers are asked
each turn when they next want to run (`add_timer`), a thread of theirs hands work over with `wake()`
and a handler the loop runs on its own thread (`add_wake_handler`), and `add_service` registers what
the server stops at exit and reconfigures on SIGHUP. A callback that raises is logged and the loop
goes on: one hosted device must not stop the broker. Those hooks are hosting.py's (the mixin Hosting).
"""
from __future__ import annotations

import _socket
import os
import time

from . import __version__
from . import log as L
from . import record
from .auth import Security, load_security, security_lines
from .broker import Broker, Connection
from .connection import EARLY_FLUSH, OUT_BUFFER_LIMIT
from .config import DEFAULT_PORT, LISTENER_SECURITY, Config, Listener, literal_family
from .dblock import DatabaseLock, check_directory
from .errors import ConfigError, ListenError
from .fdreserve import OUT_OF_DESCRIPTORS, RETRY, DescriptorReserve, descriptor_limit
from .hashing import Verifier
from .hosting import Hosting, _Watch
from .hostos import (NODELAY_INHERITED, accept_queue, bytes_received, follow_cpus, resident_memory,
                     set_scheduling_policy)
from .notify import Notifier
from .poller import EVENT_READ, EVENT_WRITE, Poller
from .store import NullStore, SqliteStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Dict, List, Optional, Tuple

    #: A hosted callback: called with the loop's monotonic time.
    Callback = Callable[[float], Any]

__all__ = ["Server"]

#: Bytes read per recv: a couple of hundred small packets per read, one syscall each turn. What a turn
#: reads from many publishers, with the output it makes for a subscriber, is in memory at once: at 64 KiB
#: a QoS 0 flood of 8 publishers (bench S1) held 512 KiB of output for its subscriber per turn, about
#: 1.4 MiB with its packets and the flush's joined copy; at 16 KiB a quarter of that (S1's peak 1.3 MiB
#: lower). A client that does not keep up no longer turns smaller turns into a larger backlog: its QoS 0
#: output is bounded by count (connection.Q0_BACKED_UP; bench/README.md, Issue 19).
RECV_SIZE = 16384
#: What a connection whose last read was smaller asks for: a sensor's PUBLISH now and then. The bytes
#: object then comes from Python's small-object allocator, not from malloc of RECV_SIZE cut down to the
#: size read (at S5's rate that cost more than the rest of the read). A read that fills it means a
#: burst: the next read asks for RECV_SIZE again.
RECV_SMALL = 448
#: What a connection asks for while the parser gathers a packet that lacks more than RECV_SIZE: a
#: 200 MiB PUBLISH in 800 reads, not 12,800.
RECV_LARGE = 256 * 1024
#: Connections accepted per listener per turn, so a connect storm cannot starve established clients.
ACCEPT_BATCH = 64
#: Unread input drained before closing a socket, so the kernel sends FIN (not RST) and the peer gets
#: what we flushed last (a refusing CONNACK).
CLOSE_DRAIN_BYTES = 256 * 1024
#: `Connection.close_reason` of a connection whose peer closed it (the read found its end)
EOF_REASON = "closed its connection"
#: Output chunks this large are sent by themselves and what a send leaves of them is kept as a view, not
#: copied: a 200 MB PUBLISH to a subscriber is not joined with what follows it, nor copied again at each
#: partial send (which made its delivery quadratic: 11 s for 200 MB).
LARGE_OUTPUT = 256 * 1024

#: What one send of a large output joins at most: the small chunks up to this many bytes (or one
#: large chunk by itself), then the next slice while the socket takes them. A backlog of small packets
#: is not copied whole at every writable event of a slow reader, nor is a turn's output for a fast one
#: copied whole before its first send.
SEND_SLICE = 256 * 1024

_WAKE = object()


def _send_slice(out: List[Any]) -> Tuple[int, Any]:
    """How many of `out`'s chunks the next send takes, and their bytes: the small chunks up to
    SEND_SLICE, or the first large one by itself."""
    n = size = 0
    last = len(out)
    while n < last:
        chunk = len(out[n])
        if chunk >= LARGE_OUTPUT or size >= SEND_SLICE:
            break
        size += chunk
        n += 1
    if n == 0:
        return 1, out[0]
    return n, (out[0] if n == 1 else b"".join(out[:n]))

#: Options read only at start (database opened, pid file written, user switched, scheduling set): a reload
#: that changes them logs which, and the running broker keeps their old values. So do the listeners'
#: sockets (compared without their security settings, which a reload changes).
RESTART_ONLY = ("persistence", "persistence_location", "persistence_file", "durability",
                "autosave_interval", "autosave_on_changes", "commit_window_ms", "pid_file", "user",
                "scheduling_policy")


class _ListenSocket:
    __slots__ = ("sock", "listener", "port", "family", "count", "tls", "index", "nodelay", "shared")

    def __init__(self, sock: _socket.socket, listener: Listener, port: int, family: int) -> None:
        self.sock = sock
        self.listener = listener
        self.port = port
        self.family = family
        self.count = 0  # open connections, for max_connections
        self.tls: Any = None  # a TLS listener's ssl.SSLContext
        self.index = -1  # in config.listeners; -1 for the default loopback listener
        #: its accepted sockets come with TCP_NODELAY (set on it, inherited: Linux)
        self.nodelay = False
        #: what its accepts share (Server._accept_shared), made at the first and after a reload
        self.shared: Any = None


def configure_logger(logger: L.Logger, config: Config) -> None:
    """Apply the configuration's logging options to a Logger (-v means every log type, as Mosquitto)."""
    types = L.ALL if config.verbose else L.type_bits(config.log_type)
    logger.configure(types, config.log_dest, config.log_file, config.log_timestamp, config.log_timestamp_format,
                     config.log_facility)


class Server(Hosting):
    """Binds the configured listeners on construction (so bind errors surface before anything runs)
    and serves them in `serve_forever()` until `shutdown()`.

    `reloader`, when given, is called by the loop after `request_reload()` (SIGHUP): it returns the new
    Config or raises (ConfigError, OSError), in which case the running configuration is kept."""

    def __init__(self, config: Config, log: Optional[L.LogFunc] = None, default_port: int = DEFAULT_PORT,
                 reloader: Optional[Callable[[], Config]] = None,
                 after_bind: Optional[Callable[[], None]] = None,
                 notifier: Optional[Notifier] = None,
                 after_open: Optional[Callable[[], None]] = None,
                 security: Optional[Tuple[Security, List[Optional[Security]]]] = None) -> None:
        """`after_bind` runs once the listeners are bound and before the database is opened: the place
        to daemonize (an SQLite connection must not cross a fork). `after_open` runs once the database
        is open (its schema migrated, in a child process that needs to read the Python installation)
        and loaded: the place to drop root privileges. `notifier` (systemd's
        $NOTIFY_SOCKET) hears READY/RELOADING/STOPPING, the client count and watchdog pings.
        `security`: the password and ACL files already read (auth.load_security); else read here."""
        self.config = config
        self.notifier = notifier
        self.log: L.LogFunc = log if log is not None else L.null_log
        self.reloader = reloader
        self._reload = False
        self._listening: List[_ListenSocket] = []
        self._writing: Dict[Connection, None] = {}
        self._stop = False
        self._closed = False
        self.store: NullStore = NullStore()
        self._db_lock: Optional[DatabaseLock] = None
        self._sel = Poller()
        self._wake_r, self._wake_w = _socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, EVENT_READ, _WAKE)
        #: hosted concerns (see the module's docstring)
        self._timers: List[Callable[[float], float]] = []
        self._wake_handlers: List[Callback] = []
        self._services: List[Any] = []
        self._flushers: List[Callback] = []
        #: out of file descriptors (fdreserve.py): listeners not polled until one frees, since when
        self._fd_reserve = DescriptorReserve()
        self._fd_paused: List[_ListenSocket] = []
        self._fd_retry_at = float("inf")
        self._fd_episode: Optional[int] = None  # connections_refused when the episode began
        #: scheduling_policy auto: whether the loop may run on one CPU only (None: the policy is not auto's)
        self._one_cpu: Optional[bool] = None
        try:
            self._bind_all(default_port)
            if after_bind is not None:
                after_bind()
            if config.persistence:
                path = config.database_path()
                check_directory(path, create=config.persistence_location is None)
                self._db_lock = DatabaseLock(path)  # one database, one broker: held until close()
                self.store = SqliteStore(path, config.durability, config.autosave_interval,
                                         config.autosave_on_changes, self.log, config.commit_window_ms / 1000)
                window = f", commit window {config.commit_window_ms} ms" if self.store.window else ""
                self.log(L.NOTICE, f"Persistence: {path} (durability {config.durability}{window}).")
            if security is None:
                security = load_security(config)
            self.broker = Broker(config, time.monotonic(), log, self.store, resident_memory, security)
            if config.bridges:
                from .bridge import start_bridges  # nothing of the bridges is loaded without one
                start_bridges(self, time.monotonic())
            if config.serial or config.gpio:
                self._start_devices()
            if after_open is not None:
                after_open()
            for level, line in security_lines(*security, config):
                self.log(level, line)
            verifier = Verifier()  # password hashes off the loop; its thread starts with the first one
            verifier.start(self)
            self.add_service(verifier)
        except BaseException:
            self.close()
            raise

    @property
    def ports(self) -> List[int]:
        """The bound port of each listening socket, in order (ephemeral ports resolved)."""
        return [ls.port for ls in self._listening]

    # ---- binding ----------------------------------------------------------------------------

    def _bind_all(self, default_port: int) -> None:
        if self.config.listeners:
            for i, listener in enumerate(self.config.listeners):
                first = len(self._listening)
                if listener.unix_socket is not None:
                    self._bind_unix(listener)
                else:
                    try:
                        pairs = _addresses(listener.address, listener.port)
                    except OSError as exc:  # a host name that does not resolve
                        raise _listen_error(listener, None, exc) from None
                    if listener.socket_domain is not None:
                        family = _socket.AF_INET if listener.socket_domain == "ipv4" else _socket.AF_INET6
                        pairs = [pair for pair in pairs if pair[0] == family]
                        if not pairs:
                            raise ListenError(f"cannot listen on address {listener.address} port {listener.port}: "
                                              f"it has no {listener.socket_domain} address (socket_domain "
                                              f"{listener.socket_domain})", listener)
                    for family, addr in pairs:
                        self._bind(listener, family, addr)
                for ls in self._listening[first:]:
                    ls.index = i
            return
        # No listener configured: loopback only, IPv4 and IPv6 when the host has it (Mosquitto 2.0's
        # "local only mode"). With port 0 the IPv6 socket takes the port the IPv4 one got.
        v4 = Listener(default_port, "127.0.0.1")
        port = self._bind(v4, _socket.AF_INET, ("127.0.0.1", default_port))
        if _socket.has_ipv6:
            try:
                self._bind(Listener(port, "::1"), _socket.AF_INET6, ("::1", port, 0, 0))
            except ListenError:
                pass  # no IPv6 loopback here: IPv4 alone is a working default

    def _bind(self, listener: Listener, family: int, addr: Tuple) -> int:
        sock = _socket.socket(family, _socket.SOCK_STREAM)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
            if family == _socket.AF_INET6:
                sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        except OSError as exc:
            sock.close()
            raise _listen_error(listener, addr, exc) from None
        port = self._listen(sock, addr, listener, family)
        self.log(L.NOTICE, f"Opening {'ipv6' if family == _socket.AF_INET6 else 'ipv4'} listen socket on port {port}.")
        return port

    def _bind_unix(self, listener: Listener) -> None:
        path = listener.unix_socket
        assert path is not None
        if os.path.exists(path):
            import stat
            if not stat.S_ISSOCK(os.stat(path).st_mode):
                raise ListenError(f"cannot listen on Unix socket {path}: it exists and is not a socket", listener)
            try:
                os.unlink(path)  # a stale socket from a previous run (Mosquitto does the same)
            except OSError as exc:
                raise _listen_error(listener, path, exc) from None
        self._listen(_socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM), path, listener, _socket.AF_UNIX)
        self.log(L.NOTICE, f"Opening unix listen socket on path {path}.")

    def _listen(self, sock: _socket.socket, addr: object, listener: Listener, family: int) -> int:
        """Bind, listen, register; returns the bound port (0 for a Unix socket)."""
        try:
            sock.bind(addr)
            sock.listen(_socket.SOMAXCONN)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise _listen_error(listener, addr, exc) from None
        port = sock.getsockname()[1] if family != _socket.AF_UNIX else 0
        ls = _ListenSocket(sock, listener, port, family)
        if family != _socket.AF_UNIX and self.config.set_tcp_nodelay and NODELAY_INHERITED:
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                ls.nodelay = True
            except OSError:
                pass
        if listener.tls:
            ls.tls = self._tls_context(listener)
        self._listening.append(ls)
        self._sel.register(sock, EVENT_READ, ls)
        return port

    # ---- the loop ---------------------------------------------------------------------------

    def serve_forever(self) -> None:
        poll = self._sel.poll
        broker = self.broker
        store = self.store
        # The store's uncommitted changes (a list it never replaces): while it is empty, and nothing
        # else waits for the end of the turn (held acknowledgements, refills, flushers), the store's
        # per-turn calls have nothing to do and the turn goes straight to the flush. At a low rate
        # every message is a turn of its own, so this is per-message work.
        buffered = store.buffered
        flushers = self._flushers
        # log_dest topic: the logger's list is cleared in place, never replaced, so look it up once.
        logger = self.log if isinstance(self.log, L.Logger) else None
        log_lines = logger.topic_lines if logger is not None else None
        monotonic = time.monotonic
        conn_class = Connection
        read_event = EVENT_READ
        write_event = EVENT_WRITE
        recv_small = RECV_SMALL
        self.log(L.NOTICE, f"edgebroker version {__version__} running")
        self._one_cpu = set_scheduling_policy(self.config.scheduling_policy, self.log)
        notifier = self.notifier
        if logger is not None:
            logger.hold_lines(True)  # flushed once per turn, at its end (see log.py)
        try:
            now = monotonic()
            tick_due = broker.tick(now)  # when the core's timers next want a turn (keepalive, $SYS)
            next_timer = self._run_timers(now, tick_due)
            if notifier is not None:
                notifier.ready(monotonic(), broker.stats.clients_connected)
            while not self._stop:
                timeout = next_timer - monotonic()
                events = poll(timeout if timeout > 0.0 else 0.0)
                now = monotonic()
                for data, mask in events:
                    if data.__class__ is conn_class:
                        if data.closed:
                            continue
                        if mask == read_event or mask & read_event:  # (== alone: the usual case)
                            # The read, here and not in a method of its own: at a low rate every
                            # message is a turn of its own, and the call was 500 of its 39,000
                            # instructions (bench.inproc TURN).
                            try:
                                got = data.handle.recv(data.recv_size)
                            except (BlockingIOError, InterruptedError):
                                got = None
                            except OSError as exc:
                                got = None
                                broker.connection_lost(data, now, f"socket error: {exc.strerror or exc}")
                            if got:
                                broker.data_received(data, got, now)
                                if len(got) < recv_small:
                                    data.recv_size = recv_small
                                else:
                                    data.recv_size = RECV_SIZE if data.parser.missing <= RECV_SIZE else RECV_LARGE
                            elif got is not None:
                                broker.connection_lost(data, now)
                            if len(events) > 1 and not store.output_waits():
                                # Its answers leave now, not after the other connections of this
                                # turn: the client works on them while the loop handles the rest.
                                broker.release_held()
                                if data.out and data not in self._writing and not data.closed:
                                    self._flush(data, now)
                                if broker.early:  # a QoS 0 flood's subscribers: not all of the turn at once
                                    self._flush_early(now)
                        if mask != read_event and mask & write_event and not data.closed:
                            self._flush(data, now)
                    elif data is _WAKE:
                        try:
                            self._wake_r.recv(4096)
                        except OSError:
                            pass
                        for handler in self._wake_handlers:
                            self._call(handler, now)
                    elif data.__class__ is _Watch:
                        if mask & read_event and data.reader is not None:
                            self._call(data.reader, now)
                        if mask & write_event and data.writer is not None:
                            self._call(data.writer, now)
                    else:
                        self._accept(data, now, events)
                if self._reload:
                    self._do_reload()
                    tick_due = now  # the new configuration may move $SYS's next publication
                if log_lines:
                    broker.publish_log_lines(log_lines[:])
                    log_lines.clear()
                if now >= tick_due:
                    tick_due = broker.tick(now)
                else:  # nothing due (a turn of a message, at a low rate): the core's clock only
                    broker._now = now
                next_timer = tick_due
                if notifier is not None:
                    next_timer = min(next_timer, notifier.tick(now, broker.stats.clients_connected))
                if self._timers:
                    next_timer = self._run_timers(now, next_timer)
                if broker.flow_changed:
                    self._apply_flow(now)
                if buffered or broker.held or broker.drained or flushers:
                    if events and store.hold_until(now) > now:
                        # Group commit: this turn's output waits on changes not yet committed, and
                        # more input may already be waiting. Look again without blocking: if there is
                        # more, handle it in the same commit (up to the window); if not, commit and
                        # flush now, so a client waiting for our answer never waits on the window.
                        next_timer = now
                        continue
                    broker.end_turn(now)
                    if flushers and store.settled():  # what they send may acknowledge what the
                        for flusher in flushers:      # commit window still holds (a serial ACK)
                            self._call(flusher, now)
                    wake = store.wake_at(now)  # deferred changes: commit them at the latest when due
                    if wake < next_timer:
                        next_timer = wake
                if broker.dirty:
                    self._flush_dirty(now)
                    if broker.drained:
                        next_timer = now  # a held refill goes on in the next turn: do not block
                if broker.closing:
                    self._finish_closing()
                if logger is not None and logger.pending:
                    logger.flush()
            if notifier is not None:
                notifier.stopping()
            self._stop_services()
            now = monotonic()
            broker.shutdown(now)
            broker.end_turn(now)
            self._flush_dirty(now)
            self._finish_closing()
        finally:
            if logger is not None:
                logger.hold_lines(False)
            self.close()

    def request_reload(self) -> None:
        """Ask the loop to reload its configuration (SIGHUP); safe from signal handlers."""
        self._reload = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _do_reload(self) -> None:
        self._reload = False
        if self.reloader is None:
            return
        if self.notifier is not None:
            self.notifier.reloading()
        try:
            config = self.reloader()
            security = load_security(config)  # a password or ACL file that cannot be read keeps the old ones
            if isinstance(self.log, L.Logger):
                configure_logger(self.log, config)
        except Exception as exc:  # a bad file must not stop a running broker: keep the old config
            self.log(L.ERR, f"Error: reloading the configuration failed, keeping the running one: {exc}")
            if self.notifier is not None:
                self.notifier.reloaded(str(exc))
            return
        changed = [name for name in RESTART_ONLY if getattr(config, name) != getattr(self.config, name)]
        if _sockets(config.listeners) != _sockets(self.config.listeners):
            changed.insert(0, "listeners")
        if changed:
            self.log(L.WARNING, f"Warning: {', '.join(changed)} changed: read at start only, so the change "
                                "takes effect after a restart; the rest of the configuration is reloaded.")
            # The running broker keeps them: its config says what it does. (Listeners keep the sockets
            # they have; their security settings are reloaded.)
            config = record.replace(config, **{name: getattr(self.config, name) for name in changed
                                                    if name != "listeners"})
        self.config = config
        self.broker.reconfigure(config)
        self.broker.set_security(*security)
        for level, line in security_lines(*security, config):
            self.log(level, line)
        self._reload_tls()
        for ls in self._listening:
            ls.shared = None  # what its accepts share: made again from the new settings
        for service in self._services:
            reload = getattr(service, "reload", None)
            if reload is not None:
                try:
                    reload(config)
                except Exception as exc:  # the service keeps its running settings and says why
                    self.log(L.ERR, f"Error: reloading {service!r} failed: {exc}")
        self.log(L.NOTICE, "Reloaded configuration.")
        if self.notifier is not None:
            self.notifier.reloaded()

    def shutdown(self) -> None:
        """Ask the loop to stop; safe from other threads and signal handlers."""
        self._stop = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass

    def _start_devices(self) -> None:
        """[[serial]] and [[gpio]]: only a config that has them loads firmware_bridge (and pyserial,
        gpiozero); a device missing at start is a ConfigError naming its file and line."""
        from firmware_bridge import hosted

        levels = {"error": L.ERR, "warning": L.WARNING, "notice": L.NOTICE, "info": L.INFO, "debug": L.DEBUG}
        try:
            hosted.start(self, levels)
        except hosted.DeviceError as exc:
            raise ConfigError(str(exc)) from None

    def close(self) -> None:
        """Close every socket. Idempotent; serve_forever calls it on the way out."""
        if self._closed:
            return
        self._closed = True
        self._stop_services()
        broker = getattr(self, "broker", None)  # None when __init__ failed before making it
        for conn in (list(broker.connections) + broker.closing) if broker is not None else ():
            if conn.listener is not None:  # its socket is still open
                conn.listener = None
                try:
                    conn.handle.close()  # type: ignore[attr-defined]
                except OSError:
                    pass
        for ls in self._listening:
            ls.sock.close()
            if ls.family == _socket.AF_UNIX and ls.listener.unix_socket:
                try:
                    os.unlink(ls.listener.unix_socket)
                except OSError:
                    pass
        self._wake_r.close()
        self._wake_w.close()
        self._sel.close()
        self._fd_reserve.close()
        self.store.close()
        if self._db_lock is not None:
            self._db_lock.release()

    # ---- per-socket work ----------------------------------------------------------------------

    def _accept(self, ls: _ListenSocket, now: float, ready: Optional[List[Tuple[Any, int]]] = None) -> None:
        """Accept what waits on a listener. `ready`: the turn's events, which a connection whose first
        bytes (its CONNECT) are here already joins, to be read in this turn and not the next."""
        if self._one_cpu is not None:  # scheduling_policy auto: the CPUs are looked at as clients come
            self._one_cpu = follow_cpus(self._one_cpu, self.log)
        # As many as wait in the accept queue, then (after more than one: a burst) as many as came
        # meanwhile, asked again: not until an accept() fails with EAGAIN, a Python exception of 6.8k
        # instructions (most of the loop's work for a batch of one). Where the count is not known (0 at
        # first: not Linux, a Unix socket, a spurious wake-up), until then as before.
        left = ACCEPT_BATCH
        # What every connection shares, looked up once per configuration (a device reconnecting is a
        # batch of one): a connection's own work is then its objects, its system calls and its log line.
        broker = self.broker
        shared = ls.shared
        if shared is None:
            shared = ls.shared = self._accept_shared(ls)
        family, tcp, plain, stats, security, port, nodelay, set_nodelay, messages, register, accept, limit = shared
        socket_type = _socket.SocketType
        stream = _socket.SOCK_STREAM
        while left:
            waiting = accept_queue(ls.sock) if tcp else 0
            if waiting:
                batch = waiting if waiting < left else left
            elif left < ACCEPT_BATCH:
                return  # every one that waited is accepted
            else:
                batch = left
            left -= batch
            for _ in range(batch):
                try:
                    # accept() less its wrapper: the socket module's Python class costs 40 bytes more per
                    # connection than the C socket it wraps, and the loop needs none of what it adds.
                    fd, addr = accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if exc.errno in OUT_OF_DESCRIPTORS:
                        self._out_of_descriptors(ls, now, exc)
                    else:
                        self.log(L.ERR, f"Error accepting a connection on port {port}: {exc.strerror}.")
                    return
                if self._fd_episode is not None:
                    refused = stats.connections_refused - self._fd_episode
                    self._fd_episode = None
                    self.log(L.NOTICE, f"Accepting connections again ({refused} refused while out of file "
                                       f"descriptors).")
                sock = socket_type(family, stream, 0, fd)
                peer = f"{addr[0]}:{addr[1]}" if tcp else "unix socket"
                if 0 <= limit <= ls.count:
                    self.log(L.NOTICE, f"Client connection from {peer} denied: max_connections exceeded.")
                    sock.close()
                    continue
                sock.setblocking(False)
                if set_nodelay:
                    # We batch writes ourselves (one send per connection per turn); Nagle would only add
                    # latency to the small packets that remain. Set here only where the socket did not
                    # inherit it from its listener (or a reload turned the option off).
                    try:
                        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, int(nodelay))
                    except OSError:
                        pass
                stats.sockets += 1
                conn = broker.connection_made(peer, port, now)
                conn.handle = sock if ls.tls is None else self._tls_socket(sock, ls, conn)
                conn.security = security
                ls.count += 1
                conn.listener = ls
                register(fd, conn.handle, conn)
                if messages:
                    self.log(L.NOTICE, f"New connection from {peer} on port {port}.")
                if plain and ready is not None and bytes_received(sock):
                    ready.append((conn, EVENT_READ))  # read in this turn: one turn less per connection
            if waiting == 1:
                return  # a lone one (a device reconnecting): any that came since are the next turn's

    def _accept_shared(self, ls: _ListenSocket) -> Tuple[Any, ...]:
        """What `_accept` needs of the listener, the configuration and the security settings; a reload
        (`_do_reload`, which replaces the last two and a TLS listener's context) forgets it."""
        broker = self.broker
        config = self.config
        family = ls.family
        tcp = family != _socket.AF_UNIX
        nodelay = config.set_tcp_nodelay
        return (family, tcp, tcp and ls.tls is None,
                broker.stats, broker.security_for(ls.index), ls.port, nodelay, tcp and nodelay != ls.nodelay,
                config.connection_messages, self._sel.register_read, ls.sock._accept,  # type: ignore[attr-defined]
                ls.listener.max_connections)

    def _out_of_descriptors(self, ls: _ListenSocket, now: float, exc: OSError) -> None:
        """accept() found no descriptor: refuse what waits (closed at once, counted for $SYS), stop
        polling this listener until a connection closes or RETRY passes; log once per episode."""
        refused = self._fd_reserve.refuse_waiting(ls.sock, ACCEPT_BATCH)
        if refused == 0:
            return  # nothing was waiting: the last descriptor was just taken, the listener is not readable
        stats = self.broker.stats
        if self._fd_episode is None:
            self._fd_episode = stats.connections_refused
            self.log(L.ERR, f"Error accepting connections on port {ls.port}: {exc.strerror}. New connections "
                            f"are refused until a file descriptor is free (open files limit "
                            f"{descriptor_limit()}: ulimit -n, systemd's LimitNOFILE).")
        stats.connections_refused += refused or 0
        self._sel.unregister(ls.sock)
        if not self._fd_paused:
            self.add_timer(self._fd_retry)
        self._fd_paused.append(ls)
        self._fd_retry_at = now + RETRY

    def _fd_retry(self, now: float) -> float:
        if now < self._fd_retry_at:
            return self._fd_retry_at
        self._fd_resume()
        return float("inf")

    def _fd_resume(self) -> None:
        """Poll the paused listeners again (a descriptor may be free now)."""
        for ls in self._fd_paused:
            self._sel.register(ls.sock, EVENT_READ, ls)
        self._fd_paused.clear()
        self._fd_retry_at = float("inf")
        self.remove_timer(self._fd_retry)

    def _flush(self, conn: Connection, now: float) -> None:
        out = conn.out
        if not out:
            if conn in self._writing:  # only a TLS connection's own records wait (a handshake flight)
                self._tls_flush(conn, now)
            return
        n = len(out)
        if n == 1:
            data = out[0]
        elif conn.out_size < LARGE_OUTPUT:
            data = b"".join(out)
        else:
            n, data = _send_slice(out)
        while True:
            try:
                sent = conn.handle.send(data)  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                out.clear()
                conn.out_size = 0
                self.broker.connection_lost(conn, now, f"socket error: {exc.strerror or exc}")
                return
            self.broker.stats.bytes_sent += sent
            if sent != len(data) or n >= len(out):
                break
            del out[:n]  # a slice went whole: the next one, while the socket takes them
            conn.out_size -= sent
            n, data = _send_slice(out)
        if sent == len(data):
            out.clear()
            conn.out_size = 0
            if conn.refill_held:
                self.broker.output_drained(conn)
            if self._writing and conn in self._writing:
                del self._writing[conn]
                self._interest(conn)
                self.broker.output_flowing(conn)
        else:
            rest = data[sent:] if len(data) - sent < LARGE_OUTPUT else memoryview(data)[sent:]
            out[:n] = [rest]
            conn.out_size -= sent
            self.broker.output_backed_up(conn)  # its QoS 0 output is counted until all of it has left
            if conn not in self._writing and not conn.closed:
                self._writing[conn] = None
                self._interest(conn)

    # ---- TLS listeners: edgebroker/tlssocket.py gives their connections a plain socket's face ------

    def _tls_context(self, listener: Listener) -> Any:
        """The listener's SSLContext (one per listener, shared by its IPv4 and IPv6 sockets); a file
        that cannot be used raises ConfigError, so the broker does not start."""
        for ls in self._listening:
            if ls.listener is listener and ls.tls is not None:
                return ls.tls
        return _server_context(listener)

    def _reload_tls(self) -> None:
        """SIGHUP: read each TLS listener's files again (a renewed certificate, a new revocation list),
        as Mosquitto does; new connections get them, open ones keep theirs. A file that no longer
        loads keeps the running context, logged."""
        fresh: Dict[int, Any] = {}
        for ls in self._listening:
            if ls.tls is None:
                continue
            key = id(ls.listener)
            if key not in fresh:
                try:
                    fresh[key] = _server_context(ls.listener)
                except ConfigError as exc:
                    fresh[key] = ls.tls
                    self.log(L.ERR, f"Error: the {ls.listener.describe()} keeps its running certificate: {exc}")
            ls.tls = fresh[key]

    def _tls_socket(self, sock: _socket.socket, ls: _ListenSocket, conn: Connection) -> Any:
        from .tls import TlsEngine
        from .tlssocket import IDENTITY, SUBJECT, TlsSocket
        listener = ls.listener
        identity = IDENTITY if listener.use_identity_as_username else \
            SUBJECT if listener.use_subject_as_username else None
        return TlsSocket(sock, TlsEngine.server(ls.tls), conn, identity, lambda: self._tls_backlog(conn))

    def _tls_backlog(self, conn: Connection) -> None:
        """A TLS connection's own records (handshake) wait for room in the socket: watch for it."""
        if conn not in self._writing and not conn.closed:
            self._writing[conn] = None
            self._interest(conn)

    def _tls_flush(self, conn: Connection, now: float) -> None:
        try:
            done = conn.handle.flush_backlog()  # type: ignore[attr-defined]
        except OSError as exc:
            self.broker.connection_lost(conn, now, f"socket error: {exc.strerror or exc}")
            return
        if done:
            del self._writing[conn]
            self._interest(conn)

    def _interest(self, conn: Connection) -> None:
        """Register the events a connection needs now: READ unless flow control paused it, WRITE while
        it has a backlog; none at all means it leaves the selector until one comes back."""
        events = (0 if conn.paused_by else EVENT_READ) | (
            EVENT_WRITE if conn in self._writing else 0)
        sock = conn.handle
        try:
            registered = self._sel.get_key(sock).events  # type: ignore[arg-type]
        except KeyError:
            registered = 0
        if events == registered:
            return
        if not events:
            self._sel.unregister(sock)  # type: ignore[arg-type]
        elif not registered:
            self._sel.register(sock, events, conn)  # type: ignore[arg-type]
        else:
            self._sel.modify(sock, events, conn)  # type: ignore[arg-type]

    def _apply_flow(self, now: float) -> None:
        changed = self.broker.flow_changed
        while changed:
            batch = list(dict.fromkeys(changed))
            changed.clear()
            for conn in batch:
                if conn.closed:
                    continue
                self._interest(conn)
                if not conn.paused_by:
                    self.broker.resume(conn, now)  # may pause it (or others) again: loop until settled

    def _flush_dirty(self, now: float) -> None:
        dirty = self.broker.dirty
        writing = self._writing
        # Connections ended while flushing may publish wills, which append to `dirty`: the index loop
        # sees them too.
        i = 0
        while i < len(dirty):
            conn = dirty[i]
            i += 1
            # (a connection's output may have left after its read: nothing to flush then)
            if conn.out and not conn.closed and not (writing and conn in writing):
                self._flush(conn, now)
        dirty.clear()

    def _flush_early(self, now: float) -> None:
        """Output past connection.EARLY_FLUSH (Broker._q0_admit's list) leaves now; then watched again."""
        for conn in self.broker.early:
            if conn.out and not conn.closed and conn not in self._writing:
                self._flush(conn, now)
            if conn.q0_limit == OUT_BUFFER_LIMIT:  # (not backed up by that send)
                conn.q0_limit = EARLY_FLUSH
        self.broker.early.clear()

    def _finish_closing(self) -> None:
        closing = self.broker.closing
        forget = self._sel.forget
        socket_type = _socket.SocketType
        while closing:
            conn = closing.pop()
            sock = conn.handle
            ls = conn.listener
            if ls is None or sock is None:
                continue
            conn.listener = None
            ls.count -= 1  # type: ignore[attr-defined]
            if self._writing:
                self._writing.pop(conn, None)
            if conn.out:
                try:
                    sock.send(b"".join(conn.out))  # type: ignore[attr-defined]
                except OSError:
                    pass
                conn.out.clear()
            if sock.__class__ is socket_type and conn.close_reason == EOF_REASON:
                # The client closed its side and we read all it sent: nothing is left to drain, and
                # closing the socket takes it out of the epoll set (two system calls fewer than the
                # drain, and no epoll_ctl, for a device going away: bench.inproc LIFE).
                forget(sock.fileno(), True)  # type: ignore[attr-defined]
                sock.close()  # type: ignore[attr-defined]
                continue
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass  # flow control may have left it unregistered
            _drain_and_close(sock)  # type: ignore[arg-type]
        if self._fd_paused:
            self._fd_resume()  # a descriptor is free again


def _server_context(listener: Listener) -> Any:
    from .tls import server_context  # ssl only when a TLS listener exists
    return server_context(listener.certfile, listener.keyfile, listener.cafile,  # type: ignore[arg-type]
                          listener.capath, listener.require_certificate, listener.tls_version,
                          listener.ciphers, listener.crlfile)


def _sockets(listeners: List[Listener]) -> List[Listener]:
    """Listeners without their security settings, which a reload does change."""
    return [record.replace(ls, **{name: None for name in LISTENER_SECURITY}) for ls in listeners]


def _drain_and_close(sock: _socket.socket) -> None:
    try:
        sock.shutdown(_socket.SHUT_WR)
        drained = 0
        while drained < CLOSE_DRAIN_BYTES:
            chunk = sock.recv(RECV_SIZE)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    sock.close()


def _listen_error(listener: Listener, addr: object, exc: OSError) -> ListenError:
    """"cannot listen on ADDRESS port PORT: reason", naming the exact address tried (for a listener on
    all addresses, 0.0.0.0 or ::)."""
    reason = exc.strerror or str(exc)
    if listener.unix_socket is not None:
        return ListenError(f"cannot listen on Unix socket {listener.unix_socket}: {reason}", listener)
    if isinstance(addr, tuple):
        where = f"address {addr[0]} port {listener.port}"
        if listener.address is None:
            where += " (a listener on all addresses)"
    else:
        where = f"address {listener.address} port {listener.port}"
    return ListenError(f"cannot listen on {where}: {reason}", listener)


def _addresses(address: Optional[str], port: int) -> List[Tuple[int, Tuple]]:
    """The (family, sockaddr) pairs a listener binds: all of IPv4 and IPv6 when address is None."""
    if address is None:
        pairs: List[Tuple[int, Tuple]] = [(_socket.AF_INET, ("0.0.0.0", port))]
        if _socket.has_ipv6:
            pairs.append((_socket.AF_INET6, ("::", port, 0, 0)))
        return pairs
    if literal_family(address) == _socket.AF_INET:  # a literal address needs no resolver
        return [(_socket.AF_INET, (address, port))]
    if literal_family(address) == _socket.AF_INET6:
        return [(_socket.AF_INET6, (address, port, 0, 0))]
    infos = _socket.getaddrinfo(address, port, _socket.AF_UNSPEC, _socket.SOCK_STREAM, 0, _socket.AI_PASSIVE)
    seen = []
    for family, _, _, _, sockaddr in infos:
        pair = (family, sockaddr)
        if pair not in seen:
            seen.append(pair)
    return seen
