"""The broker's typed configuration: one schema, Mosquitto's option names and defaults.

This is the in-memory schema; `configfile` reads TOML and mosquitto.conf files into it. Every field has
a doc comment with its unit and default; a default differs from Mosquitto's only where the comment says
why. Values are validated on construction (`__post_init__`), so a bad value never reaches the loop: the
error names the option, and the file reader adds the file and line.
"""
from __future__ import annotations

import os
import _socket

from .errors import ConfigError
from .record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional, Tuple

    # Only annotations here: the modules that read or run bridges and devices import them (a broker
    # without any loads neither, bench/README.md, Issue 19).
    from .bridgeconfig import BridgeConfig
    from .devices import GpioDevice, SerialPort

__all__ = ["Config", "Listener", "DEFAULT_PORT", "DURABILITY_LEVELS", "LOG_DESTS", "LOG_TYPES",
           "DEFAULT_LOG_TYPES", "LISTENER_SECURITY", "literal_family", "MAX_PACKET_SIZE_LIMIT", "MAX_PAYLOAD", "default_data_dir",
           "listener_clash"]

DEFAULT_PORT = 1883
#: tls_version values (Mosquitto 2.0: the lowest version accepted).
TLS_VERSION_NAMES = ("tlsv1.3", "tlsv1.2", "tlsv1.1")
DURABILITY_LEVELS = ("sync", "crash", "periodic")
#: Longest commit window: acknowledgements held longer would meet clients' own timeouts.
MAX_COMMIT_WINDOW_MS = 10_000
#: Values of scheduling_policy.
SCHEDULING_POLICIES = ("auto", "other", "batch")
#: Where log lines can go (Mosquitto's log_dest values; "none" is the empty tuple).
LOG_DESTS = ("stdout", "stderr", "syslog", "topic", "file")
#: Mosquitto's log_type names we log under ("all" and "none" are spelled out by the file reader).
LOG_TYPES = ("error", "warning", "notice", "information", "subscribe", "unsubscribe", "debug")
#: Mosquitto's default log_type set.
DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information")
#: The largest MQTT packet: 1 byte of type, 4 of remaining length, 268435455 of body [MQTT-2.2.3].
MAX_PACKET_SIZE_LIMIT = 1 + 4 + 268435455
#: The largest PUBLISH payload MQTT can carry (Mosquitto's MQTT_MAX_PAYLOAD).
MAX_PAYLOAD = 268435455
#: Options a listener may set for itself with per_listener_settings true (Mosquitto's list).
LISTENER_SECURITY = ("allow_anonymous", "password_file", "acl_file", "auto_id_prefix", "allow_zero_length_clientid")
#: Bytes of the UUID the broker appends to auto_id_prefix; a client id is at most 65535 bytes of UTF-8.
_ASSIGNED_ID_SUFFIX = 36


def literal_family(address: str) -> int:
    """AF_INET or AF_INET6 for an IPv4 or IPv6 literal, 0 for anything else (a host name). Not
    `ipaddress`: 0.3 MiB of resident memory for the broker's whole life (bench/README.md, "Issue 19")."""
    for family in (_socket.AF_INET, _socket.AF_INET6):
        try:
            _socket.inet_pton(family, address)
        except (OSError, ValueError):
            continue
        return family
    return 0


def _nonempty(value: Optional[str], option: str) -> None:
    if value is not None and (not value or "\0" in value):
        raise ConfigError("must be a non-empty string without NUL characters", option=option)


@record
class Listener:
    """One listening socket. address None binds every address, IPv4 and IPv6 (Mosquitto 2.0's
    `listener PORT`); an address is an IPv4/IPv6 literal or a host name to bind."""
    #: TCP port; 0 picks a free port (tests), or with unix_socket marks a Unix socket listener.
    port: int = DEFAULT_PORT
    #: Address to bind; None = all addresses.
    address: Optional[str] = None
    #: Connections this listener accepts at a time; -1 = unlimited (Mosquitto default). A mosquitto.conf
    #: `max_connections 0` (unlimited in Mosquitto) is read as -1.
    max_connections: int = -1
    #: Path of a Unix domain socket (Mosquitto 2.0's `listener 0 PATH`); port must be 0 and address None.
    unix_socket: Optional[str] = None
    #: Mosquitto's socket_domain: "ipv4" or "ipv6" binds only that family's addresses (of `address`, or
    #: all of them); None = both.
    socket_domain: Optional[str] = None
    # ---- security (per listener: only with per_listener_settings true; None = not set) ----------
    #: As Config.allow_anonymous, for this listener; None = false (a listener is configured).
    allow_anonymous: Optional[bool] = None
    #: As Config.password_file / acl_file, for this listener; None = none.
    password_file: Optional[str] = None
    acl_file: Optional[str] = None
    #: As Config.auto_id_prefix / allow_zero_length_clientid; None = the broker-wide value.
    auto_id_prefix: Optional[str] = None
    allow_zero_length_clientid: Optional[bool] = None

    # ---- TLS (Mosquitto's certificate options; docs/security.md) --------------------------------
    #: PEM server certificate and its key: both make this a TLS listener (neither: plain TCP).
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    #: PEM file / directory (`openssl rehash`ed) of the CAs that client certificates must chain to.
    cafile: Optional[str] = None
    capath: Optional[str] = None
    #: Ask every client for a certificate and refuse, during the handshake, one without a valid one.
    require_certificate: bool = False
    #: The client certificate's CN (identity) or whole subject (RFC 2253) is the client's username,
    #: and no password is checked; both need require_certificate. Identity wins when both are set.
    use_identity_as_username: bool = False
    use_subject_as_username: bool = False
    #: Lowest TLS version accepted: tlsv1.3, tlsv1.2, tlsv1.1; None = TLS 1.2 and 1.3 (Mosquitto 2.0).
    tls_version: Optional[str] = None
    #: OpenSSL cipher list for TLS 1.2 and lower (`openssl ciphers` syntax); None = OpenSSL's default.
    ciphers: Optional[str] = None
    #: PEM revocation list: client certificates it names fail the handshake (with require_certificate).
    crlfile: Optional[str] = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} out of range 0-65535", option="port")
        if self.max_connections != -1 and self.max_connections < 1:
            raise ConfigError(f"must be -1 (unlimited) or at least 1, got {self.max_connections}",
                              option="max_connections")
        _nonempty(self.address, "address")
        _nonempty(self.unix_socket, "unix_socket")
        if self.socket_domain not in (None, "ipv4", "ipv6"):
            raise ConfigError(f"must be ipv4 or ipv6, got {self.socket_domain!r}", option="socket_domain")
        if self.unix_socket is not None and (self.port != 0 or self.address is not None):
            raise ConfigError("a Unix socket listener has port 0 and no address", option="unix_socket")
        for name in ("password_file", "acl_file", "auto_id_prefix"):
            _nonempty(getattr(self, name), name)
        self._check_tls()

    @property
    def tls(self) -> bool:
        """A TLS listener (certfile and keyfile set)."""
        return self.certfile is not None

    def _check_tls(self) -> None:
        """The TLS options' combinations (the files themselves are read by tls.server_context)."""
        for name in ("certfile", "keyfile", "cafile", "capath", "ciphers", "crlfile", "tls_version"):
            _nonempty(getattr(self, name), name)
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("certfile and keyfile go together: set both for a TLS listener, or neither",
                              option="keyfile" if self.certfile is None else "certfile")
        if self.certfile is None:
            for name in ("cafile", "capath", "require_certificate", "use_identity_as_username",
                         "use_subject_as_username", "tls_version", "ciphers", "crlfile"):
                if getattr(self, name) not in (None, False):
                    raise ConfigError("is a TLS option: it needs certfile and keyfile on the same listener",
                                      option=name)
            return
        if self.tls_version is not None and self.tls_version not in TLS_VERSION_NAMES:
            raise ConfigError(f"expected one of {', '.join(TLS_VERSION_NAMES)}, got {self.tls_version!r}",
                              option="tls_version")
        if self.require_certificate and self.cafile is None and self.capath is None:
            raise ConfigError("client certificates are checked against cafile or capath: set one",
                              option="require_certificate")
        for name in ("use_identity_as_username", "use_subject_as_username"):
            if getattr(self, name) and not self.require_certificate:
                raise ConfigError("needs require_certificate true (without it no client is asked for a "
                                  "certificate, and Mosquitto refuses every client with CONNACK 4)", option=name)
        if self.crlfile is not None and not self.require_certificate:
            raise ConfigError("has no effect without require_certificate true (no client certificate is "
                              "asked for)", option="crlfile")

    def security_fields(self) -> Tuple[str, ...]:
        """The per-listener security options this listener sets."""
        return tuple(name for name in LISTENER_SECURITY if getattr(self, name) is not None)

    def bind_key(self) -> Tuple[object, ...]:
        """What two listeners must not share: the Unix socket path, or (port, normalised address)."""
        if self.unix_socket is not None:
            return ("unix", self.unix_socket)
        address = self.address
        if address is not None:
            family = literal_family(address.strip("[]"))
            if family:  # one spelling of each address (::1 and 0:0::1 are one)
                address = _socket.inet_ntop(family, _socket.inet_pton(family, address.strip("[]")))
            else:
                address = address.lower()  # a host name
        return ("tcp", self.port, address)

    def describe(self) -> str:
        if self.unix_socket is not None:
            return f"listener on Unix socket {self.unix_socket}"
        return (f"{'TLS ' if self.tls else ''}listener on port {self.port}, "
                + (f"address {self.address}" if self.address else "all addresses"))


@record
class Config:
    # ---- listeners ------------------------------------------------------------------------------
    #: Empty means the built-in default: loopback only (127.0.0.1 and ::1) on port 1883 (or -p), as
    #: Mosquitto 2.0 does when its configuration defines no listener ("local only mode").
    listeners: List[Listener] = field(default_factory=list)
    #: Disable Nagle's algorithm on client sockets. Default true, unlike Mosquitto (false): the loop
    #: already batches each connection's output into one send per turn, so Nagle would only add latency.
    set_tcp_nodelay: bool = True

    # ---- limits ---------------------------------------------------------------------------------
    #: QoS 1/2 messages in flight to one client at a time, 0-65535; 0 = unlimited (packet ids are 16 bits,
    #: so 65535 in practice). Mosquitto default 20.
    max_inflight_messages: int = 20
    #: Payload bytes of QoS 1/2 messages in flight to one client: another one is sent only while those in
    #: flight hold fewer bytes than this (so one larger message still goes, alone), as mosquitto.conf(5)
    #: describes; 0 = no limit (Mosquitto default). Both limits apply.
    max_inflight_bytes: int = 0
    #: QoS 1/2 messages queued per client beyond the inflight window (and while offline); 0 = unlimited.
    #: Mosquitto default 1000: bounds the memory one slow or absent client can hold. It also bounds live
    #: QoS 0 output, as in Mosquitto 2.0: once a client's socket refuses part of what it is sent, a QoS 0
    #: message is sent only while fewer packets than this wait to be written; the others are dropped
    #: (counted in $SYS/broker/publish/messages/dropped).
    max_queued_messages: int = 1000
    #: Payload bytes queued per client; 0 = no limit (Mosquitto default). For live QoS 0 output to a
    #: backed-up client (see max_queued_messages): the bytes waiting to be written.
    max_queued_bytes: int = 0
    #: Queue QoS 0 messages for offline persistent clients too (Mosquitto default false).
    queue_qos0_messages: bool = False
    #: Largest packet accepted from a client, in bytes, fixed header included; 0 = the protocol's maximum
    #: (256 MiB). Otherwise at least 20, as Mosquitto: smaller would refuse ordinary CONNECTs.
    max_packet_size: int = 0
    #: Largest PUBLISH payload accepted, in bytes; 0 = no limit (Mosquitto default). Mosquitto drops a
    #: larger message but completes its QoS flow.
    message_size_limit: int = 0
    #: Largest keepalive, in seconds, a client may ask for, 10-65535 (Mosquitto's range); a CONNECT above
    #: it is refused (CONNACK 2), as Mosquitto does for MQTT 3.1/3.1.1 clients. Default 65535.
    max_keepalive: int = 65535
    #: Seconds a new connection has to send its CONNECT before it is closed (bounds idle sockets that
    #: never speak MQTT; Mosquitto uses a fixed 10 s for the same purpose). edgebroker's own option.
    connect_timeout: float = 10.0

    # ---- clients --------------------------------------------------------------------------------
    #: Clean-session clients may send an empty client id and get one assigned [MQTT-3.1.3-6].
    allow_zero_length_clientid: bool = True
    #: Prefix of assigned client ids (Mosquitto's auto_id_prefix, default "auto-").
    auto_id_prefix: str = "auto-"
    #: When not empty, only clients whose id starts with this prefix may connect (Mosquitto's
    #: clientid_prefixes, one prefix despite the name). Default "": no restriction.
    clientid_prefixes: str = ""
    #: Seconds after which a disconnected persistent session (clean session 0) is discarded; None = never
    #: (Mosquitto default). Files write it in Mosquitto's duration syntax (`2d`, `1w`...).
    persistent_client_expiration: Optional[float] = None
    #: Retained messages allowed; when false a PUBLISH with retain set closes the connection (Mosquitto).
    retain_available: bool = True
    #: Deliver at the subscription's QoS even when the publish was lower (Mosquitto's option; non-standard).
    upgrade_outgoing_qos: bool = False
    #: Seconds between $SYS updates, 0-65535; 0 disables the $SYS tree. Mosquitto default 10.
    sys_interval: float = 10.0

    # ---- process --------------------------------------------------------------------------------
    #: Write the broker's process id to this file at start and remove it at exit; None = no pid file
    #: (Mosquitto writes it only with -d; edgebroker whenever it is set, for systemd's PIDFile=).
    pid_file: Optional[str] = None
    #: When started as root, the user to run as. Default None: edgebroker does not switch users by itself
    #: (Mosquitto's default is "mosquitto"); run it as the user you want (systemd User=).
    user: Optional[str] = None

    # ---- logging --------------------------------------------------------------------------------
    #: Where log lines go, any of LOG_DESTS; empty = nowhere (`log_dest none`). Mosquitto default stderr.
    log_dest: Tuple[str, ...] = ("stderr",)
    #: The file for log_dest "file" (Mosquitto's `log_dest file PATH`); set exactly when "file" is.
    log_file: Optional[str] = None
    #: Which messages are logged, from LOG_TYPES; empty = none. Mosquitto default error, warning, notice,
    #: information. -v (verbose) logs all of them.
    log_type: Tuple[str, ...] = DEFAULT_LOG_TYPES
    #: Log client connections and disconnections (Mosquitto default true).
    connection_messages: bool = True
    #: Start each log line with a timestamp (Mosquitto default true).
    log_timestamp: bool = True
    #: strftime(3) format of that timestamp; None = seconds since the epoch (Mosquitto default).
    log_timestamp_format: Optional[str] = None
    #: With log_dest syslog: log to facility local0-local7 (0-7) instead of "daemon" (None, Mosquitto's
    #: default), e.g. 5 for local5.
    log_facility: Optional[int] = None
    #: Log every packet (mosquitto -v = log_type all). Set by the command line, not by files.
    verbose: bool = False

    # ---- persistence ----------------------------------------------------------------------------
    #: Keep retained messages and persistent sessions in SQLite so they survive a restart. On by default
    #: (unlike Mosquitto): a gateway must not lose acknowledged data on a power cut. A mosquitto.conf
    #: without a `persistence` line gets Mosquitto's default, false.
    persistence: bool = True
    #: Directory of the database; None = the default data directory (`default_data_dir()`).
    persistence_location: Optional[str] = None
    #: File name of the database inside persistence_location. Not Mosquitto's "mosquitto.db": the file is
    #: SQLite, not Mosquitto's format, and must not be mistaken for it.
    persistence_file: str = "edgebroker.db"
    #: "sync": each turn's commit is fsynced (safe against power loss); "crash" (default): WAL with
    #: synchronous=NORMAL, safe against kill -9 and crashes, consistent after power loss; "periodic":
    #: written every autosave_interval seconds (Mosquitto's model: fewest writes, bounded loss window).
    #: edgebroker's own option.
    durability: str = "crash"
    #: Seconds between saves with durability "periodic" (Mosquitto default 1800).
    autosave_interval: float = 1800.0
    #: With durability "periodic": save after autosave_interval *changes* instead of seconds (Mosquitto).
    autosave_on_changes: bool = False
    #: With durability "crash" or "sync": the commit window, in milliseconds. A message for a persistent
    #: session (or a retained one) waits up to this long for its commit, with its publisher's PUBACK or
    #: PUBREC; a delivery its subscriber acknowledges meanwhile is never written. 0: every loop turn
    #: commits what it changed. Default 50: the smallest window measured (0, 50, 200, 1000) that cuts a
    #: trickle's writes through an online persistent session to a tenth (docs/persistence.md, "Commit
    #: window"). edgebroker's own option; read at start.
    commit_window_ms: int = 50

    # ---- security -------------------------------------------------------------------------------
    #: May clients connect without a username? None = Mosquitto 2.0's default: true in local only mode (no
    #: listener configured: only this machine can connect), false as soon as a listener is configured.
    allow_anonymous: Optional[bool] = None
    #: false (Mosquitto's default): allow_anonymous, password_file, acl_file apply to every listener;
    #: true: each listener has its own (set on the Listener; auto_id_prefix and allow_zero_length_clientid
    #: too), and a listener without them refuses anonymous clients and checks no ACL.
    per_listener_settings: bool = False
    #: A password file as mosquitto_passwd (or edgebroker-passwd) writes it: `user:$7$...` lines. Clients
    #: with a username must then give its password (CONNACK 4 otherwise). None = usernames unchecked.
    password_file: Optional[str] = None
    #: Mosquitto's ACL file: which topics each user may read and write (docs/security.md). None = no ACL.
    acl_file: Optional[str] = None

    # ---- process --------------------------------------------------------------------------------
    #: The loop's CPU scheduling policy (Linux): "batch" (SCHED_BATCH: a wake-up of the broker does not
    #: preempt the task running on its CPU, so on one CPU a client finishes its turn and the broker then
    #: handles all it sent at once, instead of a context switch per packet), "other" (the normal
    #: policy), or "auto": batch when the broker may run on one CPU only (a Pi Zero), other otherwise,
    #: and nothing changed when the service manager already set a policy. Measured in bench/README.md
    #: ("One CPU"). edgebroker's own option; read at start.
    scheduling_policy: str = "auto"

    # ---- bridges --------------------------------------------------------------------------------
    #: Bridges to other brokers (mosquitto.conf `connection` blocks, TOML `[[bridge]]` tables), in file
    #: order; see edgebroker/bridgeconfig.py. Empty: no bridge, and nothing of the bridge code runs.
    bridges: Tuple[BridgeConfig, ...] = ()

    # ---- serial and GPIO (firmware_bridge) --------------------------------------------------------
    #: `[[serial]]` tables: UART sensors whose lines or frames become publishes (edgebroker.devices).
    serial: Tuple[SerialPort, ...] = ()
    #: `[[gpio]]` tables: the Pi's own pins through gpiozero.
    gpio: Tuple[GpioDevice, ...] = ()

    def __post_init__(self) -> None:
        names = [b.name for b in self.bridges]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise ConfigError(f"a second bridge named {name!r} (names must be unique)", option="connection")
        local_ids = [b.local_id for b in self.bridges]
        for i, cid in enumerate(local_ids):
            if cid in local_ids[:i]:
                raise ConfigError(f"bridge local_clientid {cid!r} is not unique; set local_clientid for one of "
                                  "the bridges (Mosquitto's rule)", option="local_clientid")
        _check_devices(self.serial, self.gpio)
        for name in ("max_queued_messages", "max_queued_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be 0 or more, got {getattr(self, name)}", option=name)
        if self.max_inflight_bytes < 0:
            raise ConfigError(f"must be 0 or more, got {self.max_inflight_bytes}", option="max_inflight_bytes")
        if not 0 <= self.max_inflight_messages <= 65535:
            raise ConfigError(f"must be 0-65535, got {self.max_inflight_messages}", option="max_inflight_messages")
        if self.max_packet_size != 0 and not 20 <= self.max_packet_size <= MAX_PACKET_SIZE_LIMIT:
            raise ConfigError(f"must be 0 (no limit) or 20-{MAX_PACKET_SIZE_LIMIT}, got {self.max_packet_size}",
                              option="max_packet_size")
        if not 0 <= self.message_size_limit <= MAX_PAYLOAD:
            raise ConfigError(f"must be 0-{MAX_PAYLOAD}, got {self.message_size_limit}", option="message_size_limit")
        if not 10 <= self.max_keepalive <= 65535:
            raise ConfigError(f"must be 10-65535, got {self.max_keepalive}", option="max_keepalive")
        if self.connect_timeout <= 0:
            raise ConfigError("must be more than 0", option="connect_timeout")
        _nonempty(self.auto_id_prefix, "auto_id_prefix")
        if len(self.auto_id_prefix.encode("utf-8", "surrogatepass")) > 65535 - _ASSIGNED_ID_SUFFIX:
            raise ConfigError("too long: an assigned client id must fit 65535 bytes", option="auto_id_prefix")
        if "\0" in self.clientid_prefixes:
            raise ConfigError("must not contain NUL characters", option="clientid_prefixes")
        if self.persistent_client_expiration is not None and self.persistent_client_expiration <= 0:
            raise ConfigError("must be more than 0 seconds", option="persistent_client_expiration")
        if not 0 <= self.sys_interval <= 65535:
            raise ConfigError(f"must be 0-65535, got {self.sys_interval:g}", option="sys_interval")
        _nonempty(self.pid_file, "pid_file")
        _nonempty(self.user, "user")
        for dest in self.log_dest:
            if dest not in LOG_DESTS:
                raise ConfigError(f"unknown destination {dest!r}; one of {', '.join(LOG_DESTS)}", option="log_dest")
        _nonempty(self.log_file, "log_file")
        if ("file" in self.log_dest) != (self.log_file is not None):
            if self.log_file is None:
                raise ConfigError("destination \"file\" needs a file name (log_file)", option="log_dest")
            raise ConfigError("a log file is set but log_dest does not include \"file\"", option="log_file")
        for kind in self.log_type:
            if kind not in LOG_TYPES:
                raise ConfigError(f"unknown type {kind!r}; one of {', '.join(LOG_TYPES)}, all, none",
                                  option="log_type")
        _nonempty(self.log_timestamp_format, "log_timestamp_format")
        if self.log_facility is not None and not 0 <= self.log_facility <= 7:
            raise ConfigError(f"must be 0-7 (local0-local7), got {self.log_facility}", option="log_facility")
        _nonempty(self.persistence_location, "persistence_location")
        _nonempty(self.persistence_file, "persistence_file")
        if self.durability not in DURABILITY_LEVELS:
            raise ConfigError(f"must be one of {', '.join(DURABILITY_LEVELS)}, got {self.durability!r}",
                              option="durability")
        if self.autosave_interval <= 0:
            raise ConfigError("must be more than 0", option="autosave_interval")
        if not 0 <= self.commit_window_ms <= MAX_COMMIT_WINDOW_MS:
            raise ConfigError(f"must be 0-{MAX_COMMIT_WINDOW_MS} (milliseconds), got {self.commit_window_ms}",
                              option="commit_window_ms")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ConfigError(f"must be one of {', '.join(SCHEDULING_POLICIES)}, got {self.scheduling_policy!r}",
                              option="scheduling_policy")
        _nonempty(self.password_file, "password_file")
        _nonempty(self.acl_file, "acl_file")
        for i, listener in enumerate(self.listeners):
            fields = listener.security_fields()
            if fields and not self.per_listener_settings:
                raise ConfigError("a listener's own security settings need per_listener_settings true",
                                  option=f"listener[{i}].{fields[0]}")
        if self.per_listener_settings:
            for name in ("allow_anonymous", "password_file", "acl_file"):
                if getattr(self, name) is not None:
                    raise ConfigError("with per_listener_settings true it is set per listener", option=name)
        clash = listener_clash(self.listeners)
        if clash is not None:
            later, earlier = self.listeners[clash[0]], self.listeners[clash[1]]
            raise ConfigError(f"{later.describe()} duplicates the {earlier.describe()}", option="listener")

    def database_path(self) -> str:
        """Where the SQLite database lives."""
        return os.path.join(self.persistence_location or default_data_dir(), self.persistence_file)


def _check_devices(serial: Tuple[SerialPort, ...], gpio: Tuple[GpioDevice, ...]) -> None:
    """Two ports on one device, or with one name (their $SYS topics and client ids would mix), or two
    GPIO devices on one pin cannot work."""
    for kind, values in (("port", [p.port for p in serial]), ("name", [p.label for p in serial]),
                         ("client_id", [p.client for p in serial])):
        for i, value in enumerate(values):
            if value in values[:i]:
                raise ConfigError(f"two [[serial]] tables have {kind} {value!r}", option=f"serial[{i}]")
    pins = [str(d.pin) for d in gpio]
    for i, pin in enumerate(pins):
        if pin in pins[:i]:
            raise ConfigError(f"two [[gpio]] tables use pin {pin}", option=f"gpio[{i}]")


def listener_clash(listeners: List[Listener]) -> Optional[Tuple[int, int]]:
    """(index, index of an earlier listener) of the first listener that cannot bind beside an earlier
    one, or None. Same port and address clash; so do all addresses and one address on the same port
    (the second bind fails with EADDRINUSE). Port 0 (a free port each time) never clashes."""
    for i, listener in enumerate(listeners):
        key = listener.bind_key()
        if key[0] == "tcp" and key[1] == 0:
            continue
        for j in range(i):
            other = listeners[j]
            if other.bind_key() == key:
                return i, j
            if (key[0] == "tcp" and other.unix_socket is None and other.port == listener.port
                    and (other.address is None) != (listener.address is None)):
                return i, j
    return None


def default_data_dir() -> str:
    """$XDG_DATA_HOME/edgebroker when XDG_DATA_HOME is set; else /var/lib/edgebroker for root (the
    service); else ~/.local/share/edgebroker."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return os.path.join(xdg, "edgebroker")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/edgebroker"
    return os.path.join(os.path.expanduser("~"), ".local", "share", "edgebroker")
