"""The broker's typed configuration: one schema, Mosquitto's option names and defaults.

This is the in-memory schema only; reading TOML and mosquitto.conf files into it comes with the
configuration work. Values are validated on construction so a bad value never reaches the loop.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from .errors import ConfigError

__all__ = ["Config", "Listener", "DEFAULT_PORT", "DURABILITY_LEVELS", "default_data_dir"]

DEFAULT_PORT = 1883
DURABILITY_LEVELS = ("sync", "crash", "periodic")


@dataclass(frozen=True)
class Listener:
    """One listening socket. address None binds every address (Mosquitto's `listener PORT`)."""
    port: int = DEFAULT_PORT
    address: Optional[str] = None
    #: -1 = unlimited, as Mosquitto.
    max_connections: int = -1

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port} out of range 0-65535", option="port")


@dataclass(frozen=True)
class Config:
    #: Empty means the built-in default: loopback only (127.0.0.1 and ::1) on port 1883, as Mosquitto 2.0
    #: does when started without a configuration file.
    listeners: List[Listener] = field(default_factory=list)
    #: QoS 1/2 messages in flight to one client at a time; 0 = unlimited. Mosquitto default 20.
    max_inflight_messages: int = 20
    #: QoS 1/2 messages queued per client beyond the inflight window (and while offline); 0 = unlimited.
    #: Mosquitto default 1000: bounds the memory one slow or absent client can hold.
    max_queued_messages: int = 1000
    #: Payload bytes queued per client; 0 = no limit (Mosquitto default).
    max_queued_bytes: int = 0
    #: Queue QoS 0 messages for offline persistent clients too (Mosquitto default false).
    queue_qos0_messages: bool = False
    #: Largest packet accepted from a client, in bytes; 0 = the protocol's maximum (256 MiB).
    max_packet_size: int = 0
    #: Largest keepalive a client may ask for; a CONNECT above it is refused (CONNACK 2), as Mosquitto.
    max_keepalive: int = 65535
    #: Seconds a new connection has to send its CONNECT before it is closed (bounds idle sockets that
    #: never speak MQTT; Mosquitto uses a fixed 10 s for the same purpose).
    connect_timeout: float = 10.0
    #: Clean-session clients may send an empty client id and get one assigned [MQTT-3.1.3-6].
    allow_zero_length_clientid: bool = True
    #: Prefix of assigned client ids (Mosquitto's auto_id_prefix).
    auto_id_prefix: str = "auto-"
    #: Retained messages allowed; when false a PUBLISH with retain set closes the connection (Mosquitto).
    retain_available: bool = True
    #: Deliver at the subscription's QoS even when the publish was lower (Mosquitto's option; non-standard).
    upgrade_outgoing_qos: bool = False
    #: Seconds between $SYS updates; 0 disables the $SYS tree. Mosquitto default 10.
    sys_interval: float = 10.0
    #: Log every packet (mosquitto -v = log_type all).
    verbose: bool = False
    #: Keep retained messages and persistent sessions in SQLite so they survive a restart. On by default
    #: (unlike Mosquitto): a gateway must not lose acknowledged data on a power cut.
    persistence: bool = True
    #: Directory of the database; None = the default data directory (`default_data_dir()`).
    persistence_location: Optional[str] = None
    #: File name of the database inside persistence_location.
    persistence_file: str = "edgebroker.db"
    #: "sync": each turn's commit is fsynced (safe against power loss); "crash" (default): WAL with
    #: synchronous=NORMAL, safe against kill -9 and crashes, consistent after power loss; "periodic":
    #: written every autosave_interval seconds (Mosquitto's model: fewest writes, bounded loss window).
    durability: str = "crash"
    #: Seconds between saves with durability "periodic" (Mosquitto default 1800).
    autosave_interval: float = 1800.0
    #: With durability "periodic": save after autosave_interval *changes* instead of seconds (Mosquitto).
    autosave_on_changes: bool = False

    def __post_init__(self) -> None:
        for name in ("max_inflight_messages", "max_queued_messages", "max_queued_bytes", "max_packet_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"must be 0 or more, got {getattr(self, name)}", option=name)
        if not 0 <= self.max_keepalive <= 65535:
            raise ConfigError(f"must be 0-65535, got {self.max_keepalive}", option="max_keepalive")
        if self.connect_timeout <= 0:
            raise ConfigError("must be more than 0", option="connect_timeout")
        if self.sys_interval < 0:
            raise ConfigError("must be 0 or more", option="sys_interval")
        if self.durability not in DURABILITY_LEVELS:
            raise ConfigError(f"must be one of {', '.join(DURABILITY_LEVELS)}, got {self.durability!r}",
                              option="durability")
        if self.autosave_interval <= 0:
            raise ConfigError("must be more than 0", option="autosave_interval")

    def database_path(self) -> str:
        """Where the SQLite database lives."""
        return os.path.join(self.persistence_location or default_data_dir(), self.persistence_file)


def default_data_dir() -> str:
    """$XDG_DATA_HOME/edgebroker when XDG_DATA_HOME is set; else /var/lib/edgebroker for root (the
    service); else ~/.local/share/edgebroker."""
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg:
        return os.path.join(xdg, "edgebroker")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return "/var/lib/edgebroker"
    return os.path.join(os.path.expanduser("~"), ".local", "share", "edgebroker")
