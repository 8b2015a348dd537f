"""The typed configuration of a bridge to another broker: Mosquitto's `connection NAME` block.

One `BridgeConfig` per `connection` block (mosquitto.conf) or `[[bridge]]` table (TOML); `Config.bridges`
holds them in file order. Option names and defaults are Mosquitto 2.0's (mosquitto.conf(5), "Bridges"),
except the store-and-forward queue, which is edgebroker's own (`bridge_max_queued_messages`...): Mosquitto
keeps a bridge's queue in memory under the global max_queued_messages. Values are checked on construction,
so a bad one never reaches the loop; the file reader adds file and line to the error.

A `BridgeTopic` is one `topic PATTERN [in|out|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]` line, with
Mosquitto's rules: a pattern of `""` (None here) means "the prefix is the whole topic" and needs both
prefixes; a prefix may not hold wildcards; `local_topic` (what is subscribed locally for `out`) is
local_prefix + pattern and `remote_topic` (subscribed on the remote for `in`) is remote_prefix + pattern.
Matching and remapping live with the bridge (edgebroker/bridge.py), which may use the topic tree's matcher.
"""
from __future__ import annotations

import _socket

from .errors import ConfigError
from .record import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Tuple

__all__ = ["BridgeConfig", "BridgeTopic", "DIRECTIONS", "START_TYPES", "PROTOCOL_VERSIONS", "QUEUE_DROP",
           "TLS_VERSIONS"]

DIRECTIONS = ("out", "in", "both")
START_TYPES = ("automatic", "lazy", "once")
#: bridge_protocol_version values and the MQTT protocol level each one speaks.
PROTOCOL_VERSIONS = {"mqttv311": 4, "mqttv31": 3}
#: Which message a full bridge queue gives up: the oldest waiting (default, as EMQX's disk queue) or
#: the new one (Mosquitto's behaviour when a client's queue is full).
QUEUE_DROP = ("oldest", "newest")
TLS_VERSIONS = ("tlsv1.2", "tlsv1.3")
#: Default quotas of the on-disk queue: a busy gateway (50 sensors, one reading each per 10 s, ~100 bytes)
#: queues about 430,000 messages a day, so 1,000,000 messages hold two days of it; 256 MiB of topics and
#: payloads (the file is about twice that) is 3 % of an 8 GB SD card.
DEFAULT_MAX_QUEUED_MESSAGES = 1_000_000
DEFAULT_MAX_QUEUED_BYTES = 256 * 1024 * 1024


def _bad(option: str, message: str) -> ConfigError:
    return ConfigError(message, option=option)


def _no_wildcards(text: str) -> bool:
    return "+" not in text and "#" not in text and "\0" not in text


@record
class BridgeTopic:
    """One `topic` line. pattern None is Mosquitto's `""`; a prefix None means no prefix."""
    pattern: Optional[str]
    direction: str = "out"
    qos: int = 0
    local_prefix: Optional[str] = None
    remote_prefix: Optional[str] = None

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise _bad("topic", f"invalid direction {self.direction!r}: one of out, in, both")
        if self.qos not in (0, 1, 2):
            raise _bad("topic", f"invalid QoS {self.qos!r}: 0, 1 or 2")
        for what, prefix in (("local", self.local_prefix), ("remote", self.remote_prefix)):
            if prefix is not None and (not prefix or not _no_wildcards(prefix)):
                raise _bad("topic", f"invalid {what} prefix {prefix!r}: a prefix is a topic name without wildcards")
        if self.pattern is None and (self.local_prefix is None or self.remote_prefix is None):
            raise _bad("topic", 'a pattern of "" needs both a local and a remote prefix (Mosquitto: invalid '
                                'bridge remapping)')
        if self.pattern is not None and not self.pattern:
            raise _bad("topic", "empty pattern")

    @property
    def local_topic(self) -> str:
        """The filter this line matches on the local broker (local_prefix + pattern)."""
        return (self.local_prefix or "") + (self.pattern or "")

    @property
    def remote_topic(self) -> str:
        """The filter this line matches on the remote broker (remote_prefix + pattern)."""
        return (self.remote_prefix or "") + (self.pattern or "")

    @property
    def remapped(self) -> bool:
        return self.local_prefix is not None or self.remote_prefix is not None


@record
class BridgeConfig:
    # ---- the connection -------------------------------------------------------------------------
    #: The name after `connection`; names the bridge in logs and $SYS.
    name: str
    #: (host, port) pairs, from `address`/`addresses host[:port] ...` (port default 1883).
    addresses: Tuple[Tuple[str, int], ...] = ()
    #: The `topic` lines, in file order (the first matching one remaps a message).
    topics: Tuple[BridgeTopic, ...] = ()
    #: Several addresses: false (default) = the first is the primary and the others fallbacks, taken in
    #: order after a failure and left for the primary at the next reconnect; true = go round them.
    round_robin: bool = False
    #: bridge_protocol_version: "mqttv311" (default) or "mqttv31".
    protocol_version: str = "mqttv311"
    #: cleansession of the remote session (Mosquitto default false: the remote keeps our session).
    cleansession: bool = False
    #: Clean session of the local side; None = same as cleansession (Mosquitto). edgebroker's local side
    #: is an in-process client whose queue is the bridge's own on-disk queue, so it only affects whether
    #: that queue is kept across restarts: false keeps it.
    local_cleansession: Optional[bool] = None
    #: Seconds between PINGREQs when idle; Mosquitto default 60, minimum 5.
    keepalive_interval: int = 60
    #: restart_timeout BASE [CAP]: seconds before a reconnect. With CAP, decorrelated jittered backoff from
    #: BASE up to CAP (Mosquitto 2.0 default "5 30"); without it, a constant wait.
    restart_timeout: float = 5.0
    restart_timeout_cap: Optional[float] = 30.0
    #: automatic (default): connect at start and after failures; lazy: connect when `threshold` messages
    #: wait, disconnect after `idle_timeout` seconds without traffic; once: connect at start, never retry.
    start_type: str = "automatic"
    threshold: int = 10
    idle_timeout: int = 60
    #: Publish the link state (1/0, retained) locally and on the remote, with a will of 0 on the remote.
    notifications: bool = True
    #: Default `$SYS/broker/connection/<remote_clientid>/state`, as Mosquitto.
    notification_topic: Optional[str] = None
    notifications_local_only: bool = False
    #: Send protocol level | 0x80 so that the remote knows a bridge (fallback to plain on CONNACK 1).
    try_private: bool = True
    #: Client id on the remote; None = "<hostname>.<name>" (Mosquitto). `clientid` is an old alias.
    remote_clientid: Optional[str] = None
    #: Client id of the local side; None = "local.<remote_clientid>".
    local_clientid: Optional[str] = None
    remote_username: Optional[str] = None
    remote_password: Optional[str] = None
    #: Username of the local side (for ACLs); its password is not checked (an in-process client).
    local_username: Optional[str] = None
    local_password: Optional[str] = None
    #: Unsubscribe on the remote from `out`-only topics at connect (Mosquitto default true), so a topic
    #: changed from in/both to out stops arriving.
    attempt_unsubscribe: bool = True
    #: Forward the retain flag of outgoing messages (default true); false clears it (AWS IoT, issue #1312).
    outgoing_retain: bool = True
    #: Largest packet the remote may send us, in bytes; 0 = no limit.
    max_packet_size: int = 0

    # ---- TLS to the remote ----------------------------------------------------------------------
    cafile: Optional[str] = None
    capath: Optional[str] = None
    certfile: Optional[str] = None
    keyfile: Optional[str] = None
    #: Skip the check that the remote's certificate names the host we connect to (not the chain).
    insecure: bool = False
    tls_version: Optional[str] = None
    #: ALPN protocol to offer, e.g. "x-amzn-mqtt-ca" for AWS IoT on port 443.
    alpn: Optional[str] = None

    # ---- store and forward (edgebroker's own options) -------------------------------------------
    #: Messages waiting on disk for the remote at most (bridge_max_queued_messages); 0 = no limit.
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    #: Bytes of topics and payloads waiting at most (bridge_max_queued_bytes); 0 = no limit.
    max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES
    #: Which message a full queue drops (bridge_queue_drop): "oldest" (default) or "newest".
    queue_drop: str = "oldest"
    #: Queue QoS 0 messages for the remote too (bridge_queue_qos0_messages, default true: at the edge a
    #: sensor's QoS 0 reading still matters). Mosquitto drops them while the bridge is down.
    queue_qos0_messages: bool = True
    #: QoS 1/2 messages sent to the remote and not yet acknowledged, at most (bridge_max_inflight_messages,
    #: default 20 as Mosquitto's max_inflight_messages).
    max_inflight_messages: int = 20

    def __post_init__(self) -> None:
        if not self.name or any(c.isspace() for c in self.name) or "/" in self.name or not _no_wildcards(self.name):
            raise _bad("connection", f"invalid bridge name {self.name!r}: one word without /, + or #")
        if not self.addresses:
            raise _bad("address", f"bridge {self.name}: no remote address (address HOST[:PORT])")
        for host, port in self.addresses:
            if not host or not 1 <= port <= 65535:
                raise _bad("address", f"invalid address {host}:{port}")
        if not self.topics:
            raise _bad("topic", f"bridge {self.name}: no topics defined (Mosquitto requires at least one)")
        if self.protocol_version not in PROTOCOL_VERSIONS:
            raise _bad("bridge_protocol_version", f"unsupported {self.protocol_version!r}: mqttv311 or mqttv31 "
                                                  "(MQTT 5 bridges are not supported)")
        if not 5 <= self.keepalive_interval <= 65535:
            raise _bad("keepalive_interval", f"must be 5-65535 seconds, got {self.keepalive_interval}")
        if self.restart_timeout < 1:
            raise _bad("restart_timeout", "must be at least 1 second")
        if self.restart_timeout_cap is not None and self.restart_timeout_cap < self.restart_timeout:
            raise _bad("restart_timeout", "the backoff cap is lower than the base")
        if self.start_type not in START_TYPES:
            raise _bad("start_type", f"must be one of {', '.join(START_TYPES)}, got {self.start_type!r}")
        if self.threshold < 1:
            raise _bad("threshold", "must be at least 1")
        if self.idle_timeout < 1:
            raise _bad("idle_timeout", "must be at least 1 second")
        for option, value in (("remote_clientid", self.remote_clientid), ("local_clientid", self.local_clientid),
                              ("notification_topic", self.notification_topic)):
            if value is not None and (not value or "\0" in value):
                raise _bad(option, "must be a non-empty string without NUL characters")
        if self.notification_topic is not None and not _no_wildcards(self.notification_topic):
            raise _bad("notification_topic", "a topic name may not hold wildcards")
        if self.remote_password is not None and self.remote_username is None:
            raise _bad("remote_password", "needs remote_username (MQTT sends no password without a username)")
        if not 0 <= self.max_packet_size <= 268435460:
            raise _bad("bridge_max_packet_size", f"must be 0-268435460, got {self.max_packet_size}")
        if self.tls_version is not None and self.tls_version not in TLS_VERSIONS:
            raise _bad("bridge_tls_version", f"must be one of {', '.join(TLS_VERSIONS)}, got {self.tls_version!r}")
        if (self.certfile is None) != (self.keyfile is None):
            raise _bad("bridge_certfile", "bridge_certfile and bridge_keyfile go together")
        for option in ("max_queued_messages", "max_queued_bytes"):
            if getattr(self, option) < 0:
                raise _bad("bridge_" + option, "must be 0 (no limit) or more")
        if self.queue_drop not in QUEUE_DROP:
            raise _bad("bridge_queue_drop", f"must be oldest or newest, got {self.queue_drop!r}")
        if not 1 <= self.max_inflight_messages <= 65535:
            raise _bad("bridge_max_inflight_messages", f"must be 1-65535, got {self.max_inflight_messages}")

    @property
    def tls(self) -> bool:
        """TLS is on when any CA is given (Mosquitto's rule: bridge_cafile or bridge_capath)."""
        return self.cafile is not None or self.capath is not None

    @property
    def protocol_level(self) -> int:
        return PROTOCOL_VERSIONS[self.protocol_version]

    @property
    def remote_id(self) -> str:
        if self.remote_clientid is not None:
            return self.remote_clientid
        return f"{_socket.gethostname()}.{self.name}"

    @property
    def local_id(self) -> str:
        return self.local_clientid if self.local_clientid is not None else f"local.{self.remote_id}"

    @property
    def state_topic(self) -> str:
        return self.notification_topic or f"$SYS/broker/connection/{self.remote_id}/state"

    @property
    def local_clean(self) -> bool:
        return self.cleansession if self.local_cleansession is None else self.local_cleansession
