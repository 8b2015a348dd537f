"""Bridges in a configuration file: mosquitto.conf's `connection NAME` blocks and TOML's [[bridge]]
tables, read into bridgeconfig's BridgeConfig with every error naming file, line and option.

configfile.py hands this module the lines of a `connection` block (`_m_bridge_option`) and the
[[bridge]] array (`_t_bridges`), keeps the drafts in its builder, and builds them last (`_build_bridges`),
so that a BridgeConfig's own checks are located at the line that set the option they name.
"""
from __future__ import annotations

from .codec import valid_topic_filter
from .configread import (
    _BOOL, _ENUM, _INT, _STR, Origin, _bare, _error, _m_bool, _m_int, _m_string, _m_token, _t_strings,
    _t_value, _TomlLines, _unknown, whole_number,
)
from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Protocol, Tuple

    from .bridgeconfig import BridgeConfig, BridgeTopic

#: Mosquitto bridge options edgebroker does not implement (any other bridge_* is refused the same way).
_BRIDGE = ("bridge_bind_address", "bridge_ciphers", "bridge_ciphers_tls1.3", "bridge_identity", "bridge_psk",
           "bridge_require_ocsp", "bridge_max_topic_alias", "bridge_receive_maximum",
           "bridge_session_expiry_interval", "bridge_tcp_keepalive", "bridge_tcp_user_timeout")
#: Why an option of _BRIDGE (or any other bridge_*) is refused.
_BRIDGE_NOT_YET = "this bridge option is not implemented; see docs/bridge.md"


if TYPE_CHECKING:
    class _BridgeBuilder(Protocol):
        """What this module needs of configfile's builder: its list of bridge drafts and its warnings."""
        bridges: List["_BridgeDraft"]

        def warn(self, origin: Origin, message: str) -> None: ...

#: Bridge options by their Mosquitto name: (BridgeConfig field, kind). address, topic, restart_timeout and
#: the enums are read by their own code below.
_BRIDGE_OPTIONS: Dict[str, Tuple[str, str]] = {
    "address": ("addresses", "address"), "addresses": ("addresses", "address"), "topic": ("topics", "topic"),
    "restart_timeout": ("restart_timeout", "restart"), "round_robin": ("round_robin", _BOOL),
    "bridge_protocol_version": ("protocol_version", _ENUM), "cleansession": ("cleansession", _BOOL),
    "local_cleansession": ("local_cleansession", _BOOL), "keepalive_interval": ("keepalive_interval", _INT),
    "start_type": ("start_type", _ENUM), "threshold": ("threshold", _INT), "idle_timeout": ("idle_timeout", _INT),
    "notifications": ("notifications", _BOOL), "notification_topic": ("notification_topic", _STR),
    "notifications_local_only": ("notifications_local_only", _BOOL), "try_private": ("try_private", _BOOL),
    "remote_clientid": ("remote_clientid", _STR), "clientid": ("remote_clientid", _STR),
    "local_clientid": ("local_clientid", _STR), "remote_username": ("remote_username", _STR),
    "username": ("remote_username", _STR), "remote_password": ("remote_password", _STR),
    "password": ("remote_password", _STR), "local_username": ("local_username", _STR),
    "local_password": ("local_password", _STR), "bridge_attempt_unsubscribe": ("attempt_unsubscribe", _BOOL),
    "bridge_outgoing_retain": ("outgoing_retain", _BOOL), "bridge_max_packet_size": ("max_packet_size", _INT),
    "bridge_cafile": ("cafile", _STR), "bridge_capath": ("capath", _STR), "bridge_certfile": ("certfile", _STR),
    "bridge_keyfile": ("keyfile", _STR), "bridge_insecure": ("insecure", _BOOL),
    "bridge_tls_version": ("tls_version", _ENUM), "bridge_alpn": ("alpn", _STR),
    "bridge_max_queued_messages": ("max_queued_messages", _INT),
    "bridge_max_queued_bytes": ("max_queued_bytes", _INT), "bridge_queue_drop": ("queue_drop", _ENUM),
    "bridge_queue_qos0_messages": ("queue_qos0_messages", _BOOL),
    "bridge_max_inflight_messages": ("max_inflight_messages", _INT),
}


def _bridge_enums() -> Dict[str, Tuple[str, ...]]:
    """The values of the bridge options that are enums. bridgeconfig (its BridgeConfig's generated
    __init__ of 38 parameters is about 0.1 MiB of resident memory) is imported only by a file that has a
    bridge (bench/README.md, "Issue 19")."""
    from .bridgeconfig import PROTOCOL_VERSIONS, QUEUE_DROP, START_TYPES, TLS_VERSIONS
    return {"bridge_protocol_version": tuple(PROTOCOL_VERSIONS), "start_type": START_TYPES,
            "bridge_queue_drop": QUEUE_DROP, "bridge_tls_version": TLS_VERSIONS}


#: BridgeConfig field -> the option name errors use (the file's spelling wins when it set the field).
_BRIDGE_FIELD_OPTION = {field: option for option, (field, _) in reversed(list(_BRIDGE_OPTIONS.items()))}


class _BridgeDraft:
    """A bridge being read: its fields, where each was set, its topic lines."""
    __slots__ = ("origin", "fields", "field_origins", "topics")

    def __init__(self, origin: Origin, name: str) -> None:
        self.origin = origin
        self.fields: Dict[str, Any] = {"name": name}
        self.field_origins: Dict[str, Origin] = {}
        self.topics: List[BridgeTopic] = []

    def set(self, field: str, value: Any, origin: Origin, builder: _BridgeBuilder) -> None:
        if field in self.field_origins and field not in ("topics",):
            where = self.field_origins[field]
            if field == "addresses":
                raise _error(origin, f"a second address line for bridge {self.fields['name']} (the first is at "
                                     f"{where.file}:{where.line}; list every address on one line)")
            builder.warn(origin, f"given twice for bridge {self.fields['name']} (also at {where.file}:{where.line}); "
                                 "the last one is used")
        self.fields[field] = value
        self.field_origins[field] = origin


def _parse_addresses(origin: Origin, tokens: List[str]) -> Tuple[Tuple[str, int], ...]:
    """`host[:port] ...` as Mosquitto reads it: the port after the last colon (an IPv6 address needs one)."""
    out = []
    for token in tokens:
        host, port = token, 1883
        if ":" in token:
            host, _, text = token.rpartition(":")
            if not text.isdecimal() or not 1 <= int(text) <= 65535:
                raise _error(origin, f"invalid port in {token!r} (1-65535)")
            port = int(text)
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not host:
            raise _error(origin, f"no host in {token!r}")
        out.append((host, port))
    if not out:
        raise _error(origin, "missing value: address HOST[:PORT] [HOST[:PORT] ...]")
    return tuple(out)


def _parse_topic(origin: Origin, rest: str) -> BridgeTopic:
    """`topic PATTERN [out|in|both [QOS [LOCAL_PREFIX [REMOTE_PREFIX]]]]`; `""` is an empty pattern or
    prefix; from the QoS on, a token starting with # ends the line (Mosquitto's reading)."""
    tokens = rest.split()
    if not tokens:
        raise _error(origin, "missing value: topic PATTERN [out|in|both [QOS [LOCAL_PREFIX REMOTE_PREFIX]]]")
    for i in range(2, len(tokens)):
        if tokens[i].startswith("#"):
            del tokens[i:]
            break
    if len(tokens) > 5:
        raise _error(origin, f"unexpected {' '.join(tokens[5:])!r} after the remote prefix")
    pattern: Optional[str] = None if tokens[0] == '""' else tokens[0]
    direction = tokens[1].lower() if len(tokens) > 1 else "out"
    if direction not in ("out", "in", "both"):
        raise _error(origin, f"invalid bridge topic direction {tokens[1]!r}: out, in or both")
    qos = 0
    if len(tokens) > 2:
        if tokens[2] not in ("0", "1", "2"):
            raise _error(origin, f"invalid bridge QoS level {tokens[2]!r}: 0, 1 or 2")
        qos = int(tokens[2])
    prefixes = [None if t == '""' else t for t in tokens[3:5]] + [None, None]
    if pattern is not None and not valid_topic_filter(pattern):
        raise _error(origin, f"invalid pattern {pattern!r}: not a topic filter")
    from .bridgeconfig import BridgeTopic
    try:
        topic = BridgeTopic(pattern, direction, qos, prefixes[0], prefixes[1])
    except ConfigError as exc:
        raise _error(origin, _bare(exc)) from None
    for side, full in (("local", topic.local_topic), ("remote", topic.remote_topic)):
        if not valid_topic_filter(full):
            raise _error(origin, f"invalid {side} prefix and pattern combination {full!r}")
    return topic


def _parse_restart(origin: Origin, tokens: List[Any]) -> Tuple[float, Optional[float]]:
    """restart_timeout BASE [CAP]: Mosquitto takes a value below 1 as 1 second."""
    if not 1 <= len(tokens) <= 2 or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in tokens):
        raise _error(origin, "expected restart_timeout BASE [CAP], whole seconds")
    base = max(1.0, float(tokens[0]))
    cap = float(tokens[1]) if len(tokens) == 2 else None
    if cap is not None and cap < base:
        raise _error(origin, "the backoff cap is lower than the base")
    return base, cap


def _m_bridge_option(draft: _BridgeDraft, name: str, origin: Origin, rest: str, builder: _BridgeBuilder) -> None:
    field, kind = _BRIDGE_OPTIONS[name]
    if kind == "address":
        tokens = rest.split()
        for i, t in enumerate(tokens):
            if t.startswith("#"):
                del tokens[i:]
                break
        draft.set(field, _parse_addresses(origin, tokens), origin, builder)
    elif kind == "topic":
        draft.topics.append(_parse_topic(origin, rest))
        draft.field_origins.setdefault("topics", origin)
    elif kind == "restart":
        tokens = rest.split("#", 1)[0].split()
        if not all(whole_number(t) for t in tokens):
            raise _error(origin, f"expected restart_timeout BASE [CAP], whole seconds; got {rest!r}")
        base, cap = _parse_restart(origin, [int(t) for t in tokens])
        draft.set("restart_timeout", base, origin, builder)
        draft.set("restart_timeout_cap", cap, origin, builder)
    elif kind == _ENUM:
        token = _m_token(origin, rest)
        values = _bridge_enums()[name]
        if token not in values:
            raise _error(origin, f"expected one of {', '.join(values)}, got {token!r}")
        draft.set(field, token, origin, builder)
    elif kind == _INT:
        value = _m_int(origin, rest)
        if name == "bridge_max_packet_size" and value < 0:
            value = 0  # Mosquitto: negative means no limit
        draft.set(field, value, origin, builder)
    elif kind == _BOOL:
        draft.set(field, _m_bool(origin, rest), origin, builder)
    else:
        draft.set(field, _m_string(origin, rest, builder), origin, builder)


def _t_bridges(path: str, value: Any, origin: Origin, lines: _TomlLines, builder: _BridgeBuilder) -> None:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _error(origin, "must be [[bridge]] tables (an array of tables)")
    for index, table in enumerate(value):
        header = lines.header("bridge", index)
        where = Origin(path, header if header is not None else origin.line, "bridge")
        name = table.get("connection")
        if type(name) is not str:
            raise _error(where, "a [[bridge]] table needs connection = \"NAME\"")
        draft = _BridgeDraft(where, name)
        for key, item in table.items():
            line = lines.in_table("bridge", index, key)
            at = Origin(path, line if line is not None else where.line, key)
            if key == "connection":
                continue
            if key not in _BRIDGE_OPTIONS:
                if key in _BRIDGE or key.startswith("bridge_"):
                    raise _error(at, f"{key} is not supported yet ({_BRIDGE_NOT_YET})")
                raise _unknown(at, list(_BRIDGE_OPTIONS) + ["connection"])
            field, kind = _BRIDGE_OPTIONS[key]
            if kind == "address":
                draft.set(field, _parse_addresses(at, _t_strings(at, item)), at, builder)
            elif kind == "topic":
                for text in _t_strings(at, item):
                    draft.topics.append(_parse_topic(at, text))
                draft.field_origins.setdefault("topics", at)
            elif kind == "restart":
                base, cap = _parse_restart(at, item if isinstance(item, list) else [item])
                draft.set("restart_timeout", base, at, builder)
                draft.set("restart_timeout_cap", cap, at, builder)
            elif kind == _ENUM:
                text = _t_value(_STR, at, item)
                values = _bridge_enums()[key]
                if text not in values:
                    raise _error(at, f"expected one of {', '.join(values)}, got {text!r}")
                draft.set(field, text, at, builder)
            else:
                draft.set(field, _t_value(kind, at, item), at, builder)
        builder.bridges.append(draft)


def _build_bridges(drafts: List[_BridgeDraft], origins: Dict[str, Origin]) -> Tuple[BridgeConfig, ...]:
    bridges: List[BridgeConfig] = []
    if drafts:
        from .bridgeconfig import BridgeConfig
    for i, draft in enumerate(drafts):
        origins[f"bridge[{i}]"] = draft.origin
        try:
            bridge = BridgeConfig(topics=tuple(draft.topics), **draft.fields)
        except ConfigError as exc:
            field = next((f for f, o in _BRIDGE_FIELD_OPTION.items() if o == exc.option), exc.option or "")
            at = draft.field_origins.get(field)
            if at is None:  # a missing option, or a default that clashes: located at the block's start
                at = draft.origin
                raise ConfigError(_bare(exc), at.file, at.line, at.option) from None
            raise ConfigError(_bare(exc), at.file, at.line, exc.option or at.option) from None
        for earlier, other in zip(drafts, bridges):
            if other.name == bridge.name:
                raise _error(draft.origin, f"a second bridge named {bridge.name!r}; the first is at "
                                           f"{earlier.origin.file}:{earlier.origin.line}")
            if other.local_id == bridge.local_id:
                raise _error(draft.field_origins.get("local_clientid", draft.origin),
                             f"bridge local_clientid {bridge.local_id!r} is not unique (also the bridge at "
                             f"{earlier.origin.file}:{earlier.origin.line}); set local_clientid for one of them")
        bridges.append(bridge)
    return tuple(bridges)
