"""Configuration files into the typed `Config`: TOML (native) and mosquitto.conf (translated).

Theory of operation: `load_config(path)` reads one file and the files its `include_dir` names, feeding
every option, with the file and line it came from, into one `_Builder`. Both syntaxes share the
option table below (Mosquitto's names), so an option means the same in either. At the end the builder
constructs `Listener`s and the `Config`, whose `__post_init__` holds every range check; a ConfigError it
raises names only the option, and the builder adds the file and line where that option was set.
Bridge blocks are read by configbridge.py, values of each kind by configread.py (split by concern).

The syntax is chosen by extension (`.conf` mosquitto, `.toml` TOML), else by content: TOML first, and a
file TOML cannot parse whose lines all look like `option value` is read as mosquitto.conf.

Defaults: a TOML file starts from edgebroker's defaults (`Config()`); a mosquitto.conf starts from
Mosquitto's where they differ in behaviour a migrating user relies on (`MOSQUITTO_DEFAULTS`:
persistence false), so the file means what it meant to Mosquitto.

Nothing is silently ignored: an unknown option, a bad or out-of-range value, an option in the wrong
place, duplicate listeners, and any Mosquitto feature not built yet (TLS, authentication, bridges...)
are ConfigErrors naming file, line and option. Options that are accepted but have no effect (obsolete
ones such as retry_interval) come back as warnings in `LoadedConfig.warnings`.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

from .config import (
    DEFAULT_PORT, DURABILITY_LEVELS, LISTENER_SECURITY, LOG_TYPES, SCHEDULING_POLICIES, Config, Listener,
    listener_clash,
)
from .errors import ConfigError, ConfigErrors
from .record import record
from .tomlread import toml
# The bridge blocks and the value readers live in modules of their own (split by concern); Origin and
# parse_duration are part of this module's API and stay importable from it.
from .configbridge import (
    _BRIDGE, _BRIDGE_NOT_YET, _BRIDGE_OPTIONS, _BridgeDraft, _build_bridges, _m_bridge_option, _t_bridges,
)
from .configread import (
    _BOOL, _DURATION, _ENUM, _FLOAT, _INT, _STR, Origin, _bare, _error, _m_bool, _m_int, _m_string, _m_token,
    _relocate, _t_describe, _t_strings, _t_value, _TomlLines, _unknown, decimal_number, parse_duration,
)

__all__ = ["load_config", "LoadedConfig", "ConfigWarning", "Origin", "parse_duration", "MOSQUITTO_DEFAULTS"]

#: Where a mosquitto.conf means something other than edgebroker's default. Only options whose default
#: changes what the broker keeps or does: Mosquitto does not persist unless told to.
MOSQUITTO_DEFAULTS: Dict[str, Any] = {"persistence": False}
_DEFAULTS = Config()


@record
class ConfigWarning:
    """An accepted option that does not do what the file may expect; str() reads like a ConfigError."""
    message: str
    file: str
    line: Optional[int] = None
    option: Optional[str] = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        return where + (f"{self.option}: " if self.option else "") + self.message


@record
class LoadedConfig:
    """What `load_config` returns: the Config, the warnings, and where each option came from."""
    config: Config
    #: In file order; the CLI logs them at start-up and --check-config prints them.
    warnings: Tuple[ConfigWarning, ...]
    #: Keys: Config field names ("max_connections" excepted: see listeners), "listener[i]" for
    #: config.listeners[i] and "listener[i].FIELD" for its fields, "log_dest:DEST" / "log_type:TYPE" for
    #: one item of those lists. Only options a file set are present.
    origins: Dict[str, Origin]
    #: "toml" or "mosquitto".
    syntax: str
    #: Every file read, the main one first, then included ones in reading order.
    files: Tuple[str, ...]

    def error(self, key: str, message: str) -> ConfigError:
        """A ConfigError located where `key` was set (see origins)."""
        origin = self.origins.get(key)
        if origin is None:
            return ConfigError(message, self.files[0], None, key.split(":")[0])
        return ConfigError(message, origin.file, origin.line, origin.option)


# ---- the option table ---------------------------------------------------------------------------

#: Config fields a file may set directly, by kind.
_SCALARS: Dict[str, str] = {
    "max_inflight_messages": _INT, "max_inflight_bytes": _INT, "max_queued_messages": _INT, "max_queued_bytes": _INT,
    "max_packet_size": _INT, "message_size_limit": _INT, "max_keepalive": _INT,
    "sys_interval": _FLOAT, "connect_timeout": _FLOAT, "autosave_interval": _FLOAT, "commit_window_ms": _INT,
    "queue_qos0_messages": _BOOL, "set_tcp_nodelay": _BOOL, "allow_zero_length_clientid": _BOOL,
    "retain_available": _BOOL, "upgrade_outgoing_qos": _BOOL, "connection_messages": _BOOL,
    "log_timestamp": _BOOL, "persistence": _BOOL, "autosave_on_changes": _BOOL,
    "auto_id_prefix": _STR, "clientid_prefixes": _STR, "pid_file": _STR, "user": _STR,
    "log_timestamp_format": _STR, "log_facility": _INT, "persistence_file": _STR, "persistence_location": _STR,
    "persistent_client_expiration": _DURATION, "durability": _ENUM, "scheduling_policy": _ENUM,
    "allow_anonymous": _BOOL, "per_listener_settings": _BOOL, "password_file": _STR, "acl_file": _STR,
}
_ENUMS: Dict[str, Tuple[str, ...]] = {"durability": DURABILITY_LEVELS, "scheduling_policy": SCHEDULING_POLICIES}
#: Mosquitto's other spellings.
_ALIASES = {"retained_persistence": "persistence", "maximum_qos": "max_qos"}
#: Mosquitto clamps these silently (a negative value means 0: no limit); a mosquitto.conf keeps that meaning.
_CLAMP_NEGATIVE_TO_0 = frozenset({"max_inflight_messages", "max_inflight_bytes", "max_queued_messages",
                                  "max_queued_bytes"})

#: Accepted and ignored, with a warning (Mosquitto 2.0 dropped them).
_OBSOLETE = {
    "retry_interval": "obsolete since Mosquitto 2.0 and ignored: unacknowledged QoS 1/2 messages are "
                      "resent when the client reconnects, as MQTT 3.1.1 requires",
    "store_clean_interval": "obsolete since Mosquitto 2.0 and ignored: nothing needs cleaning periodically",
    # Accepted with a warning too: what they control does not exist in edgebroker, so no value changes
    # what it does.
    "allow_duplicate_messages": "deprecated in Mosquitto 2.0 and ignored: a client whose subscriptions "
                                "overlap always gets one copy of a message [MQTT-3.3.5-1]",
    "max_topic_alias": "ignored: topic aliases are an MQTT 5 feature, and edgebroker speaks MQTT 3.1 and 3.1.1",
    "websockets_log_level": "ignored: edgebroker has no websockets listener (protocol websockets is refused)",
    "websockets_headers_size": "ignored: edgebroker has no websockets listener (protocol websockets is refused)",
}

_TLS = ("psk_hint", "ciphers_tls1.3", "dhparamfile", "tls_engine", "tls_engine_kpass_sha1", "tls_keyform")
_AUTH = ("psk_file", "auth_plugin", "plugin", "auth_plugin_deny_special_chars",
         "use_username_as_clientid")
_OTHER_NOT_YET = {
    "mount_point": "listener mount points", "bind_interface": "binding to an interface by name",
"http_dir": "websockets",
    "memory_limit": "a memory limit",
    "check_retain_source": "retained-message source checks", "max_qos": "a maximum QoS",
    "protocol": "protocols other than mqtt",
}
#: Known-unsupported options whose value says "what edgebroker already does": accepted.
_ACCEPTED_VALUES: Dict[str, Any] = {
    "protocol": "mqtt", "max_qos": 2,
    "memory_limit": 0, "check_retain_source": False,
    "use_username_as_clientid": False,
}


def _not_yet(option: str) -> Optional[str]:
    """The 'not supported yet' message for a Mosquitto option edgebroker does not implement, else None."""
    if option in _TLS:
        what = "TLS is planned"
    elif option in _AUTH or option.startswith(("auth_opt_", "plugin_opt_")):
        what = "authentication is planned"
    elif option in _BRIDGE or option.startswith("bridge_"):
        what = _BRIDGE_NOT_YET
    elif option in _OTHER_NOT_YET:
        reason = _OTHER_NOT_YET[option]
        accepted = _ACCEPTED_VALUES.get(option)
        hint = f"; only {_fmt(accepted)}, the behaviour edgebroker has, is accepted" if accepted is not None else ""
        return f"{option} is not supported yet ({reason}){hint}"
    else:
        return None
    return f"{option} is not supported yet ({what})"


def _fmt(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


#: A listener's TLS options (Listener fields, Mosquitto's names) and their kinds.
_TLS_FIELDS: Dict[str, str] = {
    "certfile": _STR, "keyfile": _STR, "cafile": _STR, "capath": _STR, "crlfile": _STR, "ciphers": _STR,
    "tls_version": _STR, "require_certificate": _BOOL, "use_identity_as_username": _BOOL,
    "use_subject_as_username": _BOOL,
}
#: socket_domain (ipv4 | ipv6) is a listener option read the same way, though it has nothing to do with TLS.
_TLS_FIELDS["socket_domain"] = _STR
_LISTENER_FIELDS = ("port", "address", "max_connections", "unix_socket") + tuple(_TLS_FIELDS)
#: TOML arrays of tables for firmware_bridge: table name -> (schema class, option kinds).
#: The devices' tables; their classes (edgebroker.devices) are imported by a file that has one.
_DEVICE_TABLES = ("serial", "gpio")
_KNOWN_GLOBAL = sorted(set(_SCALARS) | {"log_dest", "log_type", "log_file", "include_dir", "listener", "connection",
                                         "bridge"}
                       | set(_DEVICE_TABLES)
                       | set(_OBSOLETE) | {"port", "bind_address", "max_connections"} | set(_TLS_FIELDS))


# ---- the builder both syntaxes feed ---------------------------------------------------------------

class _ListenerDraft:
    """A listener being read: its Listener fields and where each was set."""
    __slots__ = ("fields", "origin", "field_origins")

    def __init__(self, origin: Optional[Origin]) -> None:
        self.fields: Dict[str, Any] = {}
        self.origin = origin  # the `listener` line or [[listener]] header
        self.field_origins: Dict[str, Origin] = {}


class _Builder:
    def __init__(self, syntax: str, main_file: str) -> None:
        self.syntax = syntax
        self.main_file = main_file
        self.values: Dict[str, Any] = {}
        self.origins: Dict[str, Origin] = {}
        self.warnings: List[ConfigWarning] = []
        self.files: List[str] = []
        self.listeners: List[_ListenerDraft] = []
        #: mosquitto.conf's default listener (`port`, `bind_address`, a max_connections before any
        #: `listener`): created only when one of those appears, as Mosquitto does.
        self.default_listener: Optional[_ListenerDraft] = None
        self.log_dest: Optional[List[str]] = None  # None until the first log_dest replaces the default
        self.log_type: Optional[List[str]] = None
        #: options refused (unknown or not supported), collected so that load_config reports them all
        self.refused: List[ConfigError] = []
        self.bridges: List[_BridgeDraft] = []
        #: mosquitto.conf with per_listener_settings true: security options before the first `listener`
        #: line, for Mosquitto's default listener (`port`) if there is one
        self.pre_listener: Dict[str, Tuple[Any, Origin]] = {}
        #: [[serial]] and [[gpio]] tables, built as they are read (edgebroker.devices).
        self.devices: Dict[str, List[Any]] = {"serial": [], "gpio": []}

    def set(self, name: str, value: Any, origin: Origin) -> None:
        self.values[name] = value
        self.origins[name] = origin

    def warn(self, origin: Origin, message: str) -> None:
        self.warnings.append(ConfigWarning(message, origin.file, origin.line, origin.option))

    def add_log_dest(self, dest: str, origin: Origin) -> None:
        """Mosquitto's rule: the first log_dest replaces the default, later ones add, `none` clears."""
        if self.log_dest is None or dest == "none":
            self.log_dest = []
        if dest != "none" and dest not in self.log_dest:
            self.log_dest.append(dest)
        self.origins["log_dest"] = origin
        self.origins[f"log_dest:{dest}"] = origin

    def add_log_type(self, kind: str, origin: Origin) -> None:
        """As log_dest: the first replaces the default, `none` clears, `all` is every type."""
        if self.log_type is None or kind in ("none", "all"):
            self.log_type = []
        kinds = LOG_TYPES if kind == "all" else () if kind == "none" else (kind,)
        for k in kinds:
            if k not in self.log_type:
                self.log_type.append(k)
        self.origins["log_type"] = origin
        self.origins[f"log_type:{kind}"] = origin

    def build(self) -> LoadedConfig:
        drafts = self.listeners
        default = self.default_listener
        for name, (value, origin) in self.pre_listener.items():
            if default is not None:
                default.fields[name] = value
                default.field_origins[name] = origin
            else:
                self.warn(origin, "with per_listener_settings true this applies to the listener it follows, and "
                                  "no listener comes before it (Mosquitto ignores it too); move it after a "
                                  "`listener` line")
        if default is not None:
            fo = default.field_origins
            default.origin = fo.get("port") or fo.get("address") or next(iter(fo.values()))
            if "port" not in fo and "address" not in fo and "max_connections" in fo:
                self.warn(fo["max_connections"], "configures Mosquitto's default listener, which therefore "
                          "listens on port 1883 on all addresses (Mosquitto 2.0 does the same); to limit the "
                          "connections of a `listener`, put max_connections after its line")
            drafts = [default] + drafts
        listeners: List[Listener] = []
        origins = dict(self.origins)
        for i, draft in enumerate(drafts):
            assert draft.origin is not None
            origins[f"listener[{i}]"] = draft.origin
            for name, origin in draft.field_origins.items():
                origins[f"listener[{i}].{name}"] = origin
            try:
                listeners.append(Listener(**draft.fields))
            except ConfigError as exc:
                raise _relocate(exc, draft.field_origins.get(exc.option or "", draft.origin)) from None
        for draft, listener in zip(drafts, listeners):
            _check_tls_files(draft, listener)
        clash = listener_clash(listeners)
        if clash is not None:
            later, earlier = clash
            where, origin = drafts[earlier].origin, drafts[later].origin
            assert where is not None and origin is not None
            raise _error(origin, f"{listeners[later].describe()} duplicates the {listeners[earlier].describe()} "
                                 f"at {where.file}:{where.line}")
        values = dict(MOSQUITTO_DEFAULTS) if self.syntax == "mosquitto" else {}
        values.update(self.values)
        if self.log_dest is not None:
            values["log_dest"] = tuple(self.log_dest)
            if self.syntax == "mosquitto" and "file" not in self.log_dest:
                values.pop("log_file", None)  # `log_dest file X` then `log_dest none`: no file
        if self.log_type is not None:
            values["log_type"] = tuple(self.log_type)
        bridges = _build_bridges(self.bridges, origins)
        for table, devices in self.devices.items():
            if devices:
                values[table] = tuple(devices)
        try:
            config = Config(listeners=listeners, bridges=bridges, **values)
        except ConfigError as exc:
            origin = origins.get(exc.option or "")
            if origin is None:
                raise ConfigError(_bare(exc), self.main_file, None, exc.option) from None
            raise _relocate(exc, origin) from None
        self._late_warnings(config, origins)
        return LoadedConfig(config, tuple(self.warnings), origins, self.syntax, tuple(self.files))

    def _late_warnings(self, config: Config, origins: Dict[str, Origin]) -> None:
        if config.durability != "periodic":
            for name in ("autosave_interval", "autosave_on_changes"):
                if name in origins and getattr(config, name) != getattr(_DEFAULTS, name):
                    self.warn(origins[name], f"has no effect with durability {config.durability} (every loop "
                                             "turn is committed); it applies to durability periodic")
        elif "commit_window_ms" in origins and config.commit_window_ms:
            self.warn(origins["commit_window_ms"], "has no effect with durability periodic (acknowledgements "
                                                   "never wait for its saves); it applies to crash and sync")


def _check_tls_files(draft: _ListenerDraft, listener: Listener) -> None:
    """Read a TLS listener's files as the broker will (so `edgebroker -t` finds an unreadable file, a key
    of another certificate, an expired certificate), locating an error at the option's line."""
    if not listener.tls:
        return
    from .tls import server_context  # ssl only for a configuration that uses it

    try:
        server_context(listener.certfile, listener.keyfile, listener.cafile, listener.capath,  # type: ignore[arg-type]
                       listener.require_certificate, listener.tls_version, listener.ciphers, listener.crlfile)
    except ConfigError as exc:
        origin = draft.field_origins.get(exc.option or "", draft.origin)
        assert origin is not None
        raise _relocate(exc, origin) from None


# ---- reading files --------------------------------------------------------------------------------

def load_config(path: str) -> LoadedConfig:
    """Read a TOML or mosquitto.conf file (and its include_dir files) into a Config.

    Returns a LoadedConfig: `.config`, `.warnings` (accepted options without effect, each naming file,
    line and option) and `.origins` (where each option was set, for later checks such as the CLI's).
    Raises ConfigError naming file, line and option for anything it cannot take as written.
    """
    text = _read_text(path)
    syntax = _detect_syntax(path, text)
    builder = _Builder(syntax, path)
    # Every option refused (unknown, or not supported) comes in one error, so that moving a Mosquitto
    # file over takes one edit, not one run per option; with them, the error that stopped the reading
    # or the building, if any.
    refused = builder.refused
    try:
        if syntax == "toml":
            _read_toml(path, text, builder, main=True)
        else:
            _read_mosquitto(path, text, builder, main=True)
        if not refused:
            return builder.build()
        builder.build()
    except ConfigError as exc:
        if not refused:
            raise
        refused.append(exc)
    raise refused[0] if len(refused) == 1 else ConfigErrors(refused)


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # A mosquitto.conf from an older system may carry Latin-1 (or any 8-bit) text in its comments, which
    # Mosquitto reads; values stay UTF-8 (topics, ids and paths are). So a whole-line comment that is
    # not UTF-8 is taken as Latin-1 (it is ignored anyway), anything else is an error. TOML is UTF-8
    # throughout, comments included.
    toml = path.lower().endswith(".toml")
    lines = data.split(b"\n")
    for number, raw in enumerate(lines):
        try:
            lines[number] = raw.decode("utf-8-sig" if number == 0 else "utf-8")  # type: ignore[call-overload]
        except UnicodeDecodeError as exc:
            if toml or not raw.lstrip().startswith(b"#"):
                raise ConfigError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x})", path, number + 1) from None
            lines[number] = raw.decode("latin-1")  # type: ignore[call-overload]
    return "\n".join(lines)  # type: ignore[arg-type]


def _detect_syntax(path: str, text: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext == ".conf":
        return "mosquitto"
    if ext == ".toml":
        return "toml"
    parser = toml()
    try:
        parser.loads(text)
        return "toml"
    except parser.TOMLDecodeError as exc:
        if _looks_like_mosquitto(text):
            return "mosquitto"
        raise _toml_error(path, exc, text) from None


def _looks_like_mosquitto(text: str) -> bool:
    import re  # only for a file that is not valid TOML
    mosquitto_line = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*(?:\s+(?!=)\S.*)?")
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    return bool(lines) and all(mosquitto_line.fullmatch(ln) for ln in lines)


def _include_files(directory: str, suffix: str, origin: Origin, builder: _Builder) -> List[str]:
    """The `*suffix` files of an include_dir, sorted as Mosquitto sorts them (by code point: capitals
    first). A relative directory is relative to the including file's directory."""
    full = os.path.join(os.path.dirname(os.path.abspath(origin.file)), directory)  # absolute wins
    try:
        names = sorted(os.listdir(full))
    except OSError as exc:
        raise _error(origin, f"cannot read directory {directory}: {exc.strerror or exc}") from None
    files = [os.path.join(full, name) for name in names if name.endswith(suffix)]
    files = [f for f in files if os.path.isfile(f)]
    main = os.path.abspath(builder.main_file)
    for f in files:
        if os.path.abspath(f) == main or _same_file(f, main):
            raise _error(origin, f"{directory} contains the main configuration file {builder.main_file}; "
                                 "it would be read twice (Mosquitto forbids this too)")
    return files


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ---- mosquitto.conf -------------------------------------------------------------------------------

def _read_mosquitto(path: str, text: str, builder: _Builder, main: bool) -> None:
    """Mosquitto's line syntax: `option value`, `#` comments. Leading whitespace is ignored (Mosquitto 1.x
    tolerated indented lines, 2.0 rejects an indented `#`; configs copied from web pages often have it)."""
    builder.files.append(path)
    current: Optional[_ListenerDraft] = None  # the block the last `listener` line of this file opened
    bridge: Optional[_BridgeDraft] = None  # the block the last `connection` line of this file opened
    for number, raw in enumerate(text.split("\n"), 1):  # not splitlines(): \f or \x1c do not end a line
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)  # `(\S+)\s*(.*)$`
        option, rest = parts[0], parts[1].strip() if len(parts) > 1 else ""
        origin = Origin(path, number, option)
        if rest.startswith("=") or option.startswith("["):
            raise _error(origin, "this is TOML syntax, but the file is read as mosquitto.conf (`option value` "
                                 "lines); name a TOML file *.toml")
        name = _ALIASES.get(option, option)
        if name == "include_dir":
            if not main:
                raise _error(origin, "only allowed in the main configuration file, as in Mosquitto")
            for included in _include_files(_m_string(origin, rest, builder), ".conf", origin, builder):
                _read_mosquitto(included, _read_text(included), builder, main=False)
        elif name == "listener":
            current = _m_listener(origin, rest, builder)
        elif name == "connection":
            bridge = _BridgeDraft(origin, _m_token(origin, rest))
            builder.bridges.append(bridge)
        elif name in _BRIDGE_OPTIONS:
            if bridge is None:
                raise _error(origin, "is a bridge option: it belongs after a `connection NAME` line")
            _m_bridge_option(bridge, name, origin, rest, builder)
        elif name in ("port", "bind_address"):
            _m_default_listener(name, origin, rest, builder)
        elif name == "max_connections":
            raw_value = _m_int(origin, rest)
            value = raw_value if raw_value > 0 else -1  # Mosquitto: negative and 0 both mean unlimited
            if current is not None:
                current.fields["max_connections"] = value
                current.field_origins["max_connections"] = origin
            elif raw_value >= 0 or builder.default_listener is not None:
                # Before any `listener` line it configures the default listener, and (unless -1) creates
                # it: Mosquitto 2.0 then listens on port 1883, all addresses.
                draft = _default_listener(builder)
                draft.fields["max_connections"] = value
                draft.field_origins["max_connections"] = origin
        elif name in _TLS_FIELDS:
            # After a `listener` line: that listener's; before any: the default listener's (Mosquitto).
            draft = current if current is not None else _default_listener(builder)
            kind = _TLS_FIELDS[name]
            if kind == _BOOL:
                draft.fields[name] = _m_bool(origin, rest)
            elif name in ("ciphers", "tls_version", "socket_domain"):
                draft.fields[name] = _m_token(origin, rest)
            else:
                draft.fields[name] = _m_string(origin, rest, builder)
            draft.field_origins[name] = origin
        elif name == "log_dest":
            _m_log_dest(origin, rest, builder)
        elif name == "log_type":
            kind = _m_token(origin, rest)
            if kind not in LOG_TYPES + ("all", "none"):
                if kind in ("websockets", "internal"):
                    raise _error(origin, f"log_type {kind} is not supported yet (edgebroker logs no such messages)")
                raise _error(origin, f"expected one of {', '.join(LOG_TYPES)}, all, none; got {kind!r}")
            builder.add_log_type(kind, origin)
        elif name in _OBSOLETE:
            builder.warn(origin, _OBSOLETE[name])
        elif name == "per_listener_settings":
            value = _m_bool(origin, rest)
            if value and (builder.pre_listener or any(n in builder.values for n in LISTENER_SECURITY)
                          or any(d.field_origins.keys() & set(LISTENER_SECURITY) for d in builder.listeners)):
                raise _error(origin, "must come before every other security option (Mosquitto's rule)")
            builder.set(name, value, origin)
        elif name in LISTENER_SECURITY and builder.values.get("per_listener_settings"):
            value = _m_scalar(name, origin, rest, builder)
            if current is not None:
                current.fields[name] = value
                current.field_origins[name] = origin
            else:
                builder.pre_listener[name] = (value, origin)
        elif name in _SCALARS:
            value = _m_scalar(name, origin, rest, builder)
            if name in _CLAMP_NEGATIVE_TO_0 and value < 0:
                value = 0
            if name == "autosave_interval" and value <= 0:
                raise _error(origin, "0 (save only at exit) is not supported: use durability periodic with "
                                     "an interval, or the default durability crash, which saves every change")
            if name == "persistence_file" and os.path.basename(value) == "mosquitto.db":
                builder.warn(origin, "edgebroker keeps an SQLite database and cannot read Mosquitto's file: "
                                     "with Mosquitto's file name it refuses to start if that file exists; "
                                     "choose another name (default edgebroker.db)")
            builder.set(name, value, origin)
        else:
            _m_unsupported(name, origin, rest, builder)


def _m_unsupported(name: str, origin: Origin, rest: str, builder: _Builder) -> None:
    message = _not_yet(name)
    if message is None:
        builder.refused.append(
            _unknown(origin, _KNOWN_GLOBAL + list(_OTHER_NOT_YET) + list(_TLS) + list(_AUTH) + list(_BRIDGE)))
        return
    if name in _ACCEPTED_VALUES:
        accepted = _ACCEPTED_VALUES[name]
        if isinstance(accepted, bool):
            value: Any = _m_bool(origin, rest)
        elif isinstance(accepted, int):
            value = _m_int(origin, rest)
        else:
            value = _m_token(origin, rest)
        if value == accepted:
            builder.origins[name] = origin
            return
    builder.refused.append(_error(origin, message))


def _m_scalar(name: str, origin: Origin, rest: str, builder: _Builder) -> Any:
    kind = _SCALARS[name]
    if kind == _INT:
        return _m_int(origin, rest)
    if kind == _FLOAT:
        token = _m_token(origin, rest)
        if not decimal_number(token):
            raise _error(origin, f"expected a number of seconds, got {token!r}")
        return float(token)
    if kind == _BOOL:
        return _m_bool(origin, rest)
    if kind == _DURATION:
        token = _m_token(origin, rest)
        try:
            return float(parse_duration(token))
        except ValueError:
            raise _error(origin, "expected a duration: a whole number and one of h d w m y (hour, day, week, "
                                 f"month, year), e.g. 2d; got {token!r}") from None
    if kind == _ENUM:
        token = _m_token(origin, rest)
        if token not in _ENUMS[name]:
            raise _error(origin, f"expected one of {', '.join(_ENUMS[name])}, got {token!r}")
        return token
    return _m_string(origin, rest, builder)


def _m_listener(origin: Origin, rest: str, builder: _Builder) -> _ListenerDraft:
    """`listener PORT [ADDRESS]`; `listener 0 PATH` is a Unix socket (Mosquitto 2.0). A `#` token ends
    the line, as in Mosquitto."""
    parts = rest.split()
    for i, part in enumerate(parts):
        if part.startswith("#"):
            del parts[i:]
            break
    if not parts:
        raise _error(origin, "missing value: listener PORT [ADDRESS]")
    if len(parts) > 2:
        raise _error(origin, f"unexpected {' '.join(parts[2:])!r}: listener PORT [ADDRESS]")
    if not parts[0].isdecimal():
        raise _error(origin, f"expected a port number, got {parts[0]!r}")
    port = int(parts[0])
    if port > 65535:
        raise _error(origin, f"port {port} out of range 1-65535")
    draft = _ListenerDraft(origin)
    if port == 0:
        if len(parts) < 2:
            raise _error(origin, "a listener with port 0 must give a Unix socket path (Mosquitto's rule)")
        draft.fields.update(port=0, unix_socket=parts[1])
    else:
        draft.fields.update(port=port, address=parts[1] if len(parts) > 1 else None)
    builder.listeners.append(draft)
    return draft


def _default_listener(builder: _Builder) -> _ListenerDraft:
    if builder.default_listener is None:
        builder.default_listener = _ListenerDraft(None)
        builder.default_listener.fields["port"] = DEFAULT_PORT
    return builder.default_listener


def _m_default_listener(name: str, origin: Origin, rest: str, builder: _Builder) -> None:
    """`port` and `bind_address`: Mosquitto's default listener (deprecated in 2.0, still read)."""
    draft = _default_listener(builder)
    if name == "port":
        port = _m_int(origin, rest)
        if not 1 <= port <= 65535:
            raise _error(origin, f"port {port} out of range 1-65535")
        if "port" in draft.field_origins:
            builder.warn(origin, "given more than once; the last one is used")
        draft.fields["port"] = port
        draft.field_origins["port"] = origin
    else:
        draft.fields["address"] = _m_token(origin, rest)
        draft.field_origins["address"] = origin
    builder.warn(origin, "deprecated since Mosquitto 2.0; `listener PORT [ADDRESS]` says the same")


def _m_log_dest(origin: Origin, rest: str, builder: _Builder) -> None:
    if not rest:
        raise _error(origin, "missing value")
    parts = rest.split(None, 1)
    dest = parts[0]
    if dest == "file":
        if len(parts) < 2:
            raise _error(origin, "missing file name: log_dest file PATH")
        if "log_file" in builder.values:
            where = builder.origins["log_file"]
            raise _error(origin, f"a second log file; the first is at {where.file}:{where.line} (one is allowed, "
                                 "as in Mosquitto)")
        builder.set("log_file", _m_string(origin, parts[1], builder), origin)
    elif dest in ("stdout", "stderr", "syslog", "topic", "none"):
        _m_token(origin, rest)  # nothing but a comment after it
    elif dest == "dlt":
        raise _error(origin, "log_dest dlt is not supported (no DLT daemon on a gateway)")
    else:
        raise _error(origin, f"expected one of stdout, stderr, syslog, topic, file PATH, none; got {dest!r}")
    builder.add_log_dest(dest, origin)


# ---- TOML ---------------------------------------------------------------------------------------

def _toml_error(path: str, exc: Exception, text: str) -> ConfigError:
    """tomllib/tomli put the position in the message: `(at line N, column M)` or `(at end of document)`."""
    import re  # only for a file that is not valid TOML
    message = str(exc)
    m = re.search(r"\s*\(at line (\d+), column \d+\)", message)
    line: Optional[int] = None
    if m:
        line = int(m.group(1))
    elif "(at end of document)" in message:
        m = re.search(r"\s*\(at end of document\)", message)
        line = max(1, len(text.splitlines()))
    if m:
        message = message[:m.start()] + message[m.end():]
    return ConfigError(f"not valid TOML: {message}", path, line)


def _read_toml(path: str, text: str, builder: _Builder, main: bool) -> None:
    builder.files.append(path)
    parser = toml()
    try:
        data = parser.loads(text)
    except parser.TOMLDecodeError as exc:
        raise _toml_error(path, exc, text) from None
    lines = _TomlLines(text)
    includes: List[Tuple[str, Origin]] = []
    for key, value in data.items():
        origin = Origin(path, lines.top(key), key)
        name = _ALIASES.get(key, key)
        if name == "listener":
            _t_listeners(path, value, origin, lines, builder)
        elif name == "bridge":
            _t_bridges(path, value, origin, lines, builder)
        elif name in _BRIDGE_OPTIONS or name == "connection":
            raise _error(origin, "is a bridge option: it belongs in a [[bridge]] table")
        elif name in _DEVICE_TABLES:
            _t_devices(path, name, value, origin, lines, builder)
        elif name == "include_dir":
            if not main:
                raise _error(origin, "only allowed in the main configuration file, as in Mosquitto")
            for directory in _t_strings(origin, value):
                includes.append((directory, origin))
        elif name in ("port", "bind_address", "address", "max_connections", "unix_socket") or name in _TLS_FIELDS:
            raise _error(origin, "belongs in a [[listener]] table (TOML has no default listener)")
        elif name == "log_dest":
            builder.log_dest = None  # in TOML an array is the whole value: it replaces an earlier file's
            for dest in _t_strings(origin, value):
                if dest in ("stdout", "stderr", "syslog", "topic", "file", "none"):
                    builder.add_log_dest(dest, origin)
                else:
                    raise _error(origin, f"expected stdout, stderr, syslog, topic, file or none; got {dest!r} "
                                         "(the file name goes in log_file)")
        elif name == "log_type":
            builder.log_type = None
            for kind in _t_strings(origin, value):
                if kind not in LOG_TYPES + ("all", "none"):
                    raise _error(origin, f"expected {', '.join(LOG_TYPES)}, all or none; got {kind!r}")
                builder.add_log_type(kind, origin)
        elif name == "log_file":
            builder.set("log_file", _t_value(_STR, origin, value), origin)
        elif name in _OBSOLETE:
            builder.warn(origin, _OBSOLETE[name])
        elif name in _SCALARS:
            builder.set(name, _t_value(_SCALARS[name], origin, value, _ENUMS.get(name, ())), origin)
        else:
            _t_unsupported(name, origin, value, builder)
    # A TOML file's keys have no order to honour across tables: included files are read after the whole
    # main file, so they override it (Mosquitto's advice, include_dir last, gives the same effect).
    for directory, origin in includes:
        for included in _include_files(directory, ".toml", origin, builder):
            _read_toml(included, _read_text(included), builder, main=False)


def _t_listeners(path: str, value: Any, origin: Origin, lines: _TomlLines, builder: _Builder) -> None:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _error(origin, "must be [[listener]] tables (an array of tables)")
    for index, table in enumerate(value):
        header = lines.header("listener", index)
        draft = _ListenerDraft(Origin(path, header if header is not None else origin.line, "listener"))
        for key, item in table.items():
            line = lines.in_table("listener", index, key)
            key_origin = Origin(path, line if line is not None else draft.origin.line, key)
            if key in _LISTENER_FIELDS:
                kind = _STR if key in ("address", "unix_socket") else _TLS_FIELDS.get(key, _INT)
                draft.fields[key] = _t_value(kind, key_origin, item)
                draft.field_origins[key] = key_origin
            elif key in LISTENER_SECURITY:
                draft.fields[key] = _t_value(_SCALARS[key], key_origin, item, _ENUMS.get(key, ()))
                draft.field_origins[key] = key_origin
            elif _not_yet(key) is not None:
                _t_unsupported(key, key_origin, item, builder)
            elif key in _SCALARS or key in _KNOWN_GLOBAL:
                raise _error(key_origin, "is a global option: put it before the first table, not in [[listener]]")
            else:
                builder.refused.append(_unknown(key_origin, list(_LISTENER_FIELDS + LISTENER_SECURITY)))
        if "unix_socket" in draft.fields:
            draft.fields.setdefault("port", 0)
        builder.listeners.append(draft)


def _t_devices(path: str, table: str, value: Any, origin: Origin, lines: _TomlLines, builder: _Builder) -> None:
    """[[serial]] / [[gpio]] tables into SerialPort / GpioDevice values; errors name the key's line."""
    from .devices import GPIO_FIELDS, SERIAL_FIELDS, GpioDevice, SerialPort
    schema, kinds = (SerialPort, SERIAL_FIELDS) if table == "serial" else (GpioDevice, GPIO_FIELDS)
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise _error(origin, f"must be [[{table}]] tables (an array of tables)")
    for index, items in enumerate(value):
        header = lines.header(table, index)
        table_origin = Origin(path, header if header is not None else origin.line, table)
        fields: Dict[str, Any] = {}
        key_origins: Dict[str, Origin] = {}
        for key, item in items.items():
            line = lines.in_table(table, index, key)
            key_origin = key_origins[key] = Origin(path, line if line is not None else table_origin.line, key)
            kind = kinds.get(key)
            if kind is None:
                raise _unknown(key_origin, sorted(kinds))
            if kind == "strs":
                fields[key] = tuple(_t_strings(key_origin, item)) if item != [] else ()
            elif kind == "pin":
                if type(item) not in (int, str):
                    raise _error(key_origin, f"expected a pin number or name, got {_t_describe(item)}")
                fields[key] = item
            else:
                fields[key] = _t_value({"int": _INT, "float": _FLOAT, "bool": _BOOL, "str": _STR}[kind],
                                       key_origin, item)
        required = [name for name in ("port",) if table == "serial"] or ["pin", "device", "topic"]
        for name in required:
            if name not in fields:
                raise _error(table_origin, f"[[{table}]] needs {name}")
        fields["where"] = f"{path}:{table_origin.line}" if table_origin.line is not None else path
        try:
            device = schema(**fields)
        except ConfigError as exc:
            raise _relocate(exc, key_origins.get(exc.option or "", table_origin)) from None
        builder.devices[table].append(device)
        builder.origins[f"{table}[{len(builder.devices[table]) - 1}]"] = table_origin


def _t_unsupported(name: str, origin: Origin, value: Any, builder: _Builder) -> None:
    message = _not_yet(name)
    if message is None:
        builder.refused.append(_unknown(origin, _KNOWN_GLOBAL))
        return
    accepted = _ACCEPTED_VALUES.get(name, None)
    if accepted is not None and type(value) is type(accepted) and value == accepted:
        builder.origins[name] = origin
        return
    builder.refused.append(_error(origin, message))
