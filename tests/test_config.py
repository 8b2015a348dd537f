"""Configuration: the typed schema's validators, the TOML and mosquitto.conf readers, and the CLI's -c and
--check-config.

Theory of operation: each test writes a small file into tmp_path and loads it with
`edgebroker.configfile.load_config`; an error must be a ConfigError whose file, line and option are the
ones the test names (`located`). The user's seed (tests/data/seed_mosquitto.conf, a mosquitto.conf with
Chinese comments) is loaded as users migrate it, and every option it mentions, commented out or not, is
checked to be implemented, warned about, or refused as "not supported yet". CLI tests run the broker as
`python -m edgebroker` (subprocess) or call `cli.broker.main` in-process; waits have deadlines, no sleeps.
"""
from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

import pytest

from edgebroker import record
from edgebroker.cli import broker as cli
from edgebroker.config import DEFAULT_LOG_TYPES, LOG_TYPES, Config, Listener
from edgebroker.configfile import MOSQUITTO_DEFAULTS, LoadedConfig, load_config, parse_duration
from edgebroker.errors import ConfigError

try:
    from util import wait_for
except ImportError:
    from tests.util import wait_for  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
SEED = Path(__file__).resolve().parent / "data" / "seed_mosquitto.conf"
EXAMPLE = REPO / "edgebroker.toml"
TIMEOUT = 10.0
BROKER = [sys.executable, "-m", "edgebroker"]


# ---- helpers ----------------------------------------------------------------------------------------

def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(tmp_path: Path, text: str, name: str = "test.conf") -> LoadedConfig:
    return load_config(write(tmp_path, name, text))


def load_error(tmp_path: Path, text: str, name: str = "test.conf") -> ConfigError:
    path = write(tmp_path, name, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value


def located(exc: ConfigError, file: str, line: Optional[int], option: Optional[str], *words: str) -> None:
    """The error names file, line and option, in its attributes and in its message, and says `words`."""
    assert (exc.file, exc.line, exc.option) == (file, line, option), str(exc)
    prefix = f"{file}:{line}: " if line is not None else f"{file}: "
    if option:
        prefix += f"{option}: "
    assert str(exc).startswith(prefix), str(exc)
    for word in words:
        assert word in str(exc), str(exc)


def error_at(tmp_path: Path, text: str, line: Optional[int], option: Optional[str], *words: str,
             name: str = "test.conf") -> ConfigError:
    exc = load_error(tmp_path, text, name)
    located(exc, str(tmp_path / name), line, option, *words)
    return exc


def mosq(**values) -> Config:
    """What a mosquitto.conf with these values means: Mosquitto's defaults, then the values."""
    return Config(**{**MOSQUITTO_DEFAULTS, **values})


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(BROKER + list(args), cwd=str(REPO), env=env(), capture_output=True, text=True,
                          timeout=TIMEOUT)


# ---- the schema's validators: each one fires -----------------------------------------------------------

@pytest.mark.parametrize("kwargs, option, words", [
    ({"max_inflight_messages": -1}, "max_inflight_messages", "0-65535"),
    ({"max_inflight_messages": 65536}, "max_inflight_messages", "0-65535"),
    ({"max_queued_messages": -1}, "max_queued_messages", "0 or more"),
    ({"max_queued_bytes": -1}, "max_queued_bytes", "0 or more"),
    ({"max_packet_size": 19}, "max_packet_size", "20-"),
    ({"max_packet_size": -1}, "max_packet_size", "20-"),
    ({"max_packet_size": 268435461}, "max_packet_size", "268435460"),
    ({"message_size_limit": -1}, "message_size_limit", "0-268435455"),
    ({"message_size_limit": 268435456}, "message_size_limit", "0-268435455"),
    ({"max_keepalive": 9}, "max_keepalive", "10-65535"),
    ({"max_keepalive": 65536}, "max_keepalive", "10-65535"),
    ({"connect_timeout": 0}, "connect_timeout", "more than 0"),
    ({"auto_id_prefix": ""}, "auto_id_prefix", "non-empty"),
    ({"auto_id_prefix": "a\0b"}, "auto_id_prefix", "NUL"),
    ({"auto_id_prefix": "x" * 65500}, "auto_id_prefix", "too long"),
    ({"clientid_prefixes": "a\0"}, "clientid_prefixes", "NUL"),
    ({"persistent_client_expiration": 0}, "persistent_client_expiration", "more than 0"),
    ({"sys_interval": -1}, "sys_interval", "0-65535"),
    ({"sys_interval": 65536}, "sys_interval", "0-65535"),
    ({"pid_file": ""}, "pid_file", "non-empty"),
    ({"user": ""}, "user", "non-empty"),
    ({"log_dest": ("stderr", "carrier-pigeon")}, "log_dest", "unknown destination"),
    ({"log_dest": ("file",)}, "log_dest", "needs a file name"),
    ({"log_file": "/tmp/x.log"}, "log_file", "does not include \"file\""),
    ({"log_dest": ("file",), "log_file": ""}, "log_file", "non-empty"),
    ({"log_type": ("error", "chatter")}, "log_type", "unknown type"),
    ({"log_timestamp_format": ""}, "log_timestamp_format", "non-empty"),
    ({"persistence_location": ""}, "persistence_location", "non-empty"),
    ({"persistence_file": ""}, "persistence_file", "non-empty"),
    ({"durability": "eventually"}, "durability", "sync, crash, periodic"),
    ({"scheduling_policy": "fifo"}, "scheduling_policy", "auto, other, batch"),
    ({"autosave_interval": 0}, "autosave_interval", "more than 0"),
    ({"listeners": [Listener(1883), Listener(1883)]}, "listener", "duplicates"),
    ({"listeners": [Listener(1883, "::1"), Listener(1883, "0:0:0:0:0:0:0:1")]}, "listener", "duplicates"),
    ({"listeners": [Listener(1883, "127.0.0.1"), Listener(1883)]}, "listener", "duplicates"),
    ({"listeners": [Listener(0, unix_socket="/s"), Listener(0, unix_socket="/s")]}, "listener", "duplicates"),
])
def test_config_validator_fires(kwargs, option, words):
    with pytest.raises(ConfigError) as info:
        Config(**kwargs)
    assert info.value.option == option
    assert words in str(info.value)


@pytest.mark.parametrize("kwargs, option, words", [
    ({"port": -1}, "port", "out of range"),
    ({"port": 65536}, "port", "out of range"),
    ({"max_connections": 0}, "max_connections", "-1 (unlimited) or at least 1"),
    ({"max_connections": -2}, "max_connections", "-1 (unlimited) or at least 1"),
    ({"address": ""}, "address", "non-empty"),
    ({"unix_socket": ""}, "unix_socket", "non-empty"),
    ({"port": 1883, "unix_socket": "/run/s"}, "unix_socket", "port 0 and no address"),
    ({"port": 0, "address": "::1", "unix_socket": "/run/s"}, "unix_socket", "port 0 and no address"),
])
def test_listener_validator_fires(kwargs, option, words):
    with pytest.raises(ConfigError) as info:
        Listener(**kwargs)
    assert info.value.option == option
    assert words in str(info.value)


def test_boundary_values_are_accepted():
    Config(max_inflight_messages=65535, max_packet_size=20, message_size_limit=268435455, max_keepalive=10,
           sys_interval=0, listeners=[Listener(1883, "127.0.0.1"), Listener(1883, "::1"), Listener(0), Listener(0),
                                      Listener(1884, max_connections=1), Listener(0, unix_socket="/run/s")])
    Config(max_packet_size=268435460, sys_interval=65535, log_dest=(), log_type=())


def test_defaults_are_mosquittos_except_where_documented():
    c = Config()
    assert (c.max_inflight_messages, c.max_queued_messages, c.max_queued_bytes, c.max_packet_size,
            c.message_size_limit, c.max_keepalive) == (20, 1000, 0, 0, 0, 65535)
    assert (c.sys_interval, c.autosave_interval, c.autosave_on_changes, c.queue_qos0_messages) == (10, 1800, False, False)
    assert (c.allow_zero_length_clientid, c.auto_id_prefix, c.clientid_prefixes) == (True, "auto-", "")
    assert (c.retain_available, c.upgrade_outgoing_qos, c.persistent_client_expiration) == (True, False, None)
    assert (c.log_dest, c.log_type, c.connection_messages, c.log_timestamp) == (("stderr",), DEFAULT_LOG_TYPES, True, True)
    assert c.listeners == [] and c.pid_file is None and c.log_timestamp_format is None
    # The documented differences: persistence on, our own file name, no user switch, TCP_NODELAY on.
    assert (c.persistence, c.persistence_file, c.user, c.set_tcp_nodelay) == (True, "edgebroker.db", None, True)


# ---- mosquitto.conf: every implemented option ------------------------------------------------------------

@pytest.mark.parametrize("line, expected", [
    ("sys_interval 30", {"sys_interval": 30.0}),
    ("sys_interval 0", {"sys_interval": 0.0}),
    ("max_inflight_messages 10", {"max_inflight_messages": 10}),
    ("max_inflight_messages -1", {"max_inflight_messages": 0}),  # Mosquitto: negative = 0 = unlimited
    ("max_queued_messages 100", {"max_queued_messages": 100}),
    ("max_queued_messages -5", {"max_queued_messages": 0}),
    ("max_queued_bytes 65536", {"max_queued_bytes": 65536}),
    ("max_queued_bytes -1", {"max_queued_bytes": 0}),
    ("queue_qos0_messages true", {"queue_qos0_messages": True}),
    ("max_packet_size 1024", {"max_packet_size": 1024}),
    ("message_size_limit 4096", {"message_size_limit": 4096}),
    ("max_keepalive 300", {"max_keepalive": 300}),
    ("retain_available false", {"retain_available": False}),
    ("upgrade_outgoing_qos true", {"upgrade_outgoing_qos": True}),
    ("persistent_client_expiration 2d", {"persistent_client_expiration": 2 * 86400.0}),
    ("set_tcp_nodelay false", {"set_tcp_nodelay": False}),
    ("allow_zero_length_clientid false", {"allow_zero_length_clientid": False}),
    ("auto_id_prefix gw-", {"auto_id_prefix": "gw-"}),
    ("clientid_prefixes sensor-", {"clientid_prefixes": "sensor-"}),
    ("pid_file /var/run/mosquitto.pid", {"pid_file": "/var/run/mosquitto.pid"}),
    ("user mosquitto", {"user": "mosquitto"}),
    ("persistence true", {"persistence": True}),
    ("retained_persistence true", {"persistence": True}),  # Mosquitto's old spelling
    ("persistence_file broker.db", {"persistence_file": "broker.db"}),
    ("persistence_location /var/lib/mosquitto/", {"persistence_location": "/var/lib/mosquitto/"}),
    ("persistence_location /mnt/my data", {"persistence_location": "/mnt/my data"}),  # rest of the line
    ("autosave_interval 1800", {"autosave_interval": 1800.0}),
    ("autosave_on_changes false", {"autosave_on_changes": False}),
    ("connection_messages false", {"connection_messages": False}),
    ("log_timestamp false", {"log_timestamp": False}),
    ("log_timestamp_format %Y-%m-%dT%H:%M:%S", {"log_timestamp_format": "%Y-%m-%dT%H:%M:%S"}),
    ("durability sync", {"durability": "sync"}),  # edgebroker's own options are read from .conf too
    ("connect_timeout 2.5", {"connect_timeout": 2.5}),
    ("allow_anonymous true", {"allow_anonymous": True}),
    ("allow_anonymous false", {"allow_anonymous": False}),
    ("per_listener_settings false", {}),
    ("password_file /etc/mosquitto/pwfile", {"password_file": "/etc/mosquitto/pwfile"}),
    ("acl_file /etc/mosquitto/aclfile", {"acl_file": "/etc/mosquitto/aclfile"}),
    ("protocol mqtt", {}),
    ("max_qos 2", {}),
    ("memory_limit 0", {}),
    ("max_inflight_bytes 0", {}),
    ("check_retain_source false", {}),
    ("use_username_as_clientid false", {}),
])
def test_mosquitto_option_maps_into_config(tmp_path, line, expected):
    loaded = load(tmp_path, line + "\n")
    assert loaded.config == mosq(**expected)
    assert loaded.syntax == "mosquitto"
    option = line.split()[0]
    if expected:
        field = next(iter(expected))
        assert loaded.origins[field] == (str(tmp_path / "test.conf"), 1, option)


def test_mosquitto_file_without_persistence_line_gets_mosquittos_default(tmp_path):
    assert load(tmp_path, "sys_interval 10\n").config.persistence is False
    assert load(tmp_path, "sys_interval = 10\n", "test.toml").config.persistence is True
    assert Config().persistence is True


def test_comments_blank_lines_indentation_crlf_and_bom(tmp_path):
    text = "\ufeff# comment\r\n\r\n   # indented comment\r\n\tsys_interval 5\r\n  # 中文注释\r\nmax_keepalive 60 # trailing comment\r\n"
    loaded = load(tmp_path, text)
    assert (loaded.config.sys_interval, loaded.config.max_keepalive) == (5, 60)
    assert loaded.origins["sys_interval"].line == 4
    assert loaded.warnings == ()


def test_later_line_wins(tmp_path):
    loaded = load(tmp_path, "sys_interval 5\nsys_interval 7\n")
    assert loaded.config.sys_interval == 7 and loaded.origins["sys_interval"].line == 2


# ---- mosquitto.conf: listeners ------------------------------------------------------------------------

def test_listeners_ipv4_ipv6_all_addresses_and_per_listener_max_connections(tmp_path):
    text = ("listener 1883\n"
            "max_connections 10\n"
            "listener 8883 192.168.1.10\n"
            "listener 1884 ::1\n"
            "max_connections -1\n"
            "listener 1885 127.0.0.1\n"
            "max_connections 0\n"          # Mosquitto: 0 = unlimited
            "allow_anonymous true\n")
    loaded = load(tmp_path, text)
    assert loaded.config.listeners == [
        Listener(1883, None, 10), Listener(8883, "192.168.1.10"), Listener(1884, "::1"), Listener(1885, "127.0.0.1")]
    assert [loaded.origins[f"listener[{i}]"].line for i in range(4)] == [1, 3, 4, 6]
    assert loaded.origins["listener[0].max_connections"].line == 2
    assert loaded.warnings == ()


def test_port_and_bind_address_make_the_default_listener(tmp_path):
    loaded = load(tmp_path, "bind_address 127.0.0.1\nport 1884\nmax_connections 5\nlistener 1885\nallow_anonymous true\n")
    assert loaded.config.listeners == [Listener(1884, "127.0.0.1", 5), Listener(1885)]
    assert [str(w) for w in loaded.warnings] == [
        f"{tmp_path / 'test.conf'}:1: bind_address: deprecated since Mosquitto 2.0; `listener PORT [ADDRESS]` says the same",
        f"{tmp_path / 'test.conf'}:2: port: deprecated since Mosquitto 2.0; `listener PORT [ADDRESS]` says the same"]


def test_port_twice_warns_and_the_last_wins(tmp_path):
    loaded = load(tmp_path, "port 1884\nport 1885\nallow_anonymous true\n")
    assert loaded.config.listeners == [Listener(1885)]
    assert any(w.line == 2 and "more than once" in w.message for w in loaded.warnings)


def test_max_connections_before_any_listener_creates_the_default_listener_with_a_warning(tmp_path):
    # Mosquitto 2.0.11 does this too: `max_connections 5` alone listens on 0.0.0.0:1883 and [::]:1883.
    loaded = load(tmp_path, "max_connections 5\nallow_anonymous true\n")
    assert loaded.config.listeners == [Listener(1883, None, 5)]
    (warning,) = loaded.warnings
    assert (warning.line, warning.option) == (1, "max_connections") and "all addresses" in warning.message
    assert load(tmp_path, "max_connections -1\n").config.listeners == []  # the default value: nothing created


def test_no_listener_means_local_only_default(tmp_path):
    assert load(tmp_path, "sys_interval 10\n").config.listeners == []


def test_listener_block_ends_at_end_of_file(tmp_path):
    """max_connections at the top of an included file is the default listener's (Mosquitto reads each file
    from the default listener), not the limit of the main file's last `listener`."""
    inc = tmp_path / "conf.d"
    write(inc, "a.conf", "max_connections 7\n")
    loaded = load(tmp_path, f"listener 1884 127.0.0.1\ninclude_dir {inc}\nallow_anonymous true\n")
    assert loaded.config.listeners == [Listener(1883, None, 7), Listener(1884, "127.0.0.1", -1)]


def test_unix_socket_listener_is_read(tmp_path):
    loaded = load(tmp_path, "listener 0 /run/edgebroker.sock\nallow_anonymous true\n")
    assert loaded.config.listeners == [Listener(0, None, -1, "/run/edgebroker.sock")]


def test_listener_trailing_comment_is_allowed_as_in_mosquitto(tmp_path):
    assert load(tmp_path, "listener 1883 #public\nallow_anonymous true\n").config.listeners == [Listener(1883)]


@pytest.mark.parametrize("text, line, option, words", [
    ("listener\n", 1, "listener", "missing value"),
    ("listener abc\n", 1, "listener", "expected a port number"),
    ("listener 65536\n", 1, "listener", "out of range"),
    ("listener 0\n", 1, "listener", "Unix socket path"),
    ("listener 1883 ::1 extra\n", 1, "listener", "unexpected 'extra'"),
    ("port 0\n", 1, "port", "out of range"),
    ("port 70000\n", 1, "port", "out of range"),
    ("port x\n", 1, "port", "whole number"),
    ("bind_address\n", 1, "bind_address", "missing value"),
    ("listener 1883\nmax_connections many\n", 2, "max_connections", "whole number"),
    ("listener 1883\nlistener 1883\n", 2, "listener", "duplicates the listener on port 1883, all addresses at"),
    ("listener 1883 ::1\nlistener 1883 0:0::1\n", 2, "listener", "duplicates"),
    ("listener 1883\nlistener 1883 127.0.0.1\n", 2, "listener", "duplicates"),
    ("listener 1883 127.0.0.1\nlistener 1883\n", 2, "listener", "duplicates"),
    ("port 1883\nlistener 1883\n", 2, "listener", "duplicates"),
    ("listener 0 /s\nlistener 0 /s\n", 2, "listener", "duplicates"),
])
def test_listener_errors(tmp_path, text, line, option, words):
    error_at(tmp_path, text, line, option, words)


def test_different_ports_and_distinct_addresses_do_not_clash(tmp_path):
    text = "listener 1883 127.0.0.1\nlistener 1883 ::1\nlistener 1884\nlistener 8883 10.0.0.1\nallow_anonymous true\n"
    assert len(load(tmp_path, text).config.listeners) == 4


# ---- mosquitto.conf: logging ---------------------------------------------------------------------------

@pytest.mark.parametrize("lines, dest, log_file", [
    (["log_dest stdout"], ("stdout",), None),
    (["log_dest none"], (), None),
    (["log_dest stdout", "log_dest syslog"], ("stdout", "syslog"), None),
    (["log_dest stdout", "log_dest stdout"], ("stdout",), None),
    (["log_dest stdout", "log_dest none"], (), None),
    (["log_dest none", "log_dest stderr"], ("stderr",), None),
    (["log_dest file /var/log/mosquitto/mosquitto.log"], ("file",), "/var/log/mosquitto/mosquitto.log"),
    (["log_dest file /var/log/my logs/x.log", "log_dest stderr"], ("file", "stderr"), "/var/log/my logs/x.log"),
    (["log_dest file /tmp/x.log", "log_dest none"], (), None),
    (["log_dest topic"], ("topic",), None),
])
def test_log_dest_first_line_replaces_default_then_adds_none_clears(tmp_path, lines, dest, log_file):
    config = load(tmp_path, "\n".join(lines) + "\n").config
    assert (config.log_dest, config.log_file) == (dest, log_file)


@pytest.mark.parametrize("lines, types", [
    (["log_type error"], ("error",)),
    (["log_type error", "log_type warning", "log_type notice", "log_type information"], DEFAULT_LOG_TYPES),
    (["log_type all"], LOG_TYPES),
    (["log_type none"], ()),
    (["log_type all", "log_type none", "log_type debug"], ("debug",)),
    (["log_type subscribe", "log_type unsubscribe", "log_type subscribe"], ("subscribe", "unsubscribe")),
])
def test_log_type_first_line_replaces_default_then_adds(tmp_path, lines, types):
    assert load(tmp_path, "\n".join(lines) + "\n").config.log_type == types


@pytest.mark.parametrize("text, line, option, words", [
    ("log_dest\n", 1, "log_dest", "missing value"),
    ("log_dest carrier-pigeon\n", 1, "log_dest", "expected one of stdout"),
    ("log_dest file\n", 1, "log_dest", "missing file name"),
    ("log_dest file /a.log\nlog_dest file /b.log\n", 2, "log_dest", "a second log file"),
    ("log_dest stdout stderr\n", 1, "log_dest", "expected one value"),
    ("log_dest dlt\n", 1, "log_dest", "not supported"),
    ("log_type\n", 1, "log_type", "missing value"),
    ("log_type chatter\n", 1, "log_type", "expected one of error"),
    ("log_type websockets\n", 1, "log_type", "not supported yet"),
    ("log_timestamp_format\n", 1, "log_timestamp_format", "missing value"),
])
def test_log_errors(tmp_path, text, line, option, words):
    error_at(tmp_path, text, line, option, words)


# ---- durations ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("1h", 3600), ("2d", 172800), ("1w", 604800), ("1m", 30 * 86400), ("1y", 365 * 86400), ("36h", 129600)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "10s", "0d", "-1d", "d", "1.5h", "1 h", "", "1H"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_persistent_client_expiration_errors(tmp_path):
    error_at(tmp_path, "persistent_client_expiration 10\n", 1, "persistent_client_expiration", "expected a duration")
    error_at(tmp_path, "persistent_client_expiration 0d\n", 1, "persistent_client_expiration", "expected a duration")
    error_at(tmp_path, "persistent_client_expiration\n", 1, "persistent_client_expiration", "missing value")


# ---- warnings -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("option", ["retry_interval", "store_clean_interval"])
def test_obsolete_options_are_accepted_with_a_warning(tmp_path, option):
    loaded = load(tmp_path, f"sys_interval 10\n{option} 20\n")
    assert loaded.config == mosq()
    (warning,) = loaded.warnings
    assert (warning.file, warning.line, warning.option) == (str(tmp_path / "test.conf"), 2, option)
    assert "obsolete" in warning.message and "ignored" in warning.message
    assert str(warning).startswith(f"{tmp_path / 'test.conf'}:2: {option}: obsolete")


def test_obsolete_options_warn_in_toml_too(tmp_path):
    loaded = load(tmp_path, "retry_interval = 20\n", "test.toml")
    assert [(w.line, w.option) for w in loaded.warnings] == [(1, "retry_interval")]


def test_listeners_without_allow_anonymous_leave_it_unset_for_mosquitto_2_semantics(tmp_path):
    # Not a warning any more: the broker refuses anonymous clients then, and says so at start-up.
    loaded = load(tmp_path, "listener 1883\n")
    assert loaded.warnings == () and loaded.config.allow_anonymous is None
    assert load(tmp_path, "listener 1883\nallow_anonymous true\n").config.allow_anonymous is True


def test_autosave_without_periodic_durability_warns(tmp_path):
    loaded = load(tmp_path, "autosave_interval 60\nautosave_on_changes true\n")
    assert [(w.line, w.option) for w in loaded.warnings] == [(1, "autosave_interval"), (2, "autosave_on_changes")]
    assert all("durability periodic" in w.message for w in loaded.warnings)
    assert load(tmp_path, "durability periodic\nautosave_interval 60\n").warnings == ()
    assert load(tmp_path, "autosave_interval 1800\n").warnings == ()  # the default says nothing new


def test_mosquitto_persistence_file_name_warns(tmp_path):
    loaded = load(tmp_path, "persistence_file mosquitto.db\n")
    assert [(w.line, w.option) for w in loaded.warnings] == [(1, "persistence_file")]
    assert "SQLite" in loaded.warnings[0].message


def test_trailing_comment_in_a_string_value_warns(tmp_path):
    loaded = load(tmp_path, "pid_file /run/x.pid # where systemd looks\n")
    assert loaded.config.pid_file == "/run/x.pid # where systemd looks"  # as Mosquitto reads it
    assert [(w.line, w.option) for w in loaded.warnings] == [(1, "pid_file")]


# ---- not supported yet ---------------------------------------------------------------------------------

TLS = ["psk_hint hint", "dhparamfile /x", "ciphers_tls1.3 TLS_AES_128_GCM_SHA256", "tls_engine pkcs11",
       "tls_keyform engine"]
AUTH = ["psk_file /etc/mosquitto/psk",
        "auth_plugin /usr/lib/x.so", "plugin /usr/lib/x.so", "auth_opt_db mysql", "plugin_opt_host x"]
BRIDGE = ["bridge_bind_address 10.0.0.1", "bridge_ciphers HIGH", "bridge_identity gw", "bridge_psk 1234",
          "bridge_require_ocsp true", "bridge_max_topic_alias 10", "bridge_receive_maximum 10",
          "bridge_session_expiry_interval 60", "bridge_tcp_keepalive 10 10 3"]


@pytest.mark.parametrize("line, planned", [(t, "TLS is planned") for t in TLS]
                         + [(a, "authentication is planned") for a in AUTH]
                         )
def test_planned_features_are_refused_as_not_supported_yet(tmp_path, line, planned):
    option = line.split()[0]
    error_at(tmp_path, f"sys_interval 10\n{line}\n", 2, option, "not supported yet", f"({planned}")


@pytest.mark.parametrize("line", BRIDGE)
def test_unimplemented_bridge_options_are_refused(tmp_path, line):
    text = f"connection cloud\naddress 127.0.0.1\ntopic # out\n{line}\n"
    error_at(tmp_path, text, 4, line.split()[0], "not supported yet", "bridge option is not implemented")


@pytest.mark.parametrize("line", ["protocol websockets", "max_qos 1", "memory_limit 1000000",
                                  "check_retain_source true", "mount_point gw/",
                                  "bind_interface eth0", "http_dir /www",
                                  "use_username_as_clientid true"])
def test_other_mosquitto_features_are_refused_as_not_supported_yet(tmp_path, line):
    error_at(tmp_path, f"listener 1883\n{line}\n", 2, line.split()[0], "not supported yet")


def test_accepted_default_values_are_still_type_checked(tmp_path):
    error_at(tmp_path, "allow_anonymous yes\n", 1, "allow_anonymous", "expected true or false")
    error_at(tmp_path, "max_qos two\n", 1, "max_qos", "whole number")


# ---- mosquitto.conf: errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("text, line, option, words", [
    ("persistance true\n", 1, "persistance", "unknown option (did you mean persistence?)"),
    ("sys_interval 10\nfrobnicate 1\n", 2, "frobnicate", "unknown option"),
    ("persistence yes\n", 1, "persistence", "expected true or false, got 'yes'"),
    ("persistence True\n", 1, "persistence", "expected true or false"),
    ("persistence\n", 1, "persistence", "missing value"),
    ("max_inflight_messages ten\n", 1, "max_inflight_messages", "expected a whole number"),
    ("max_inflight_messages 1.5\n", 1, "max_inflight_messages", "expected a whole number"),
    ("max_inflight_messages 70000\n", 1, "max_inflight_messages", "0-65535"),
    ("max_keepalive 5\n", 1, "max_keepalive", "10-65535"),
    ("max_packet_size 10\n", 1, "max_packet_size", "20-"),
    ("message_size_limit 300000000\n", 1, "message_size_limit", "0-268435455"),
    ("sys_interval -1\n", 1, "sys_interval", "0-65535"),
    ("sys_interval 70000\n", 1, "sys_interval", "0-65535"),
    ("sys_interval soon\n", 1, "sys_interval", "number of seconds"),
    ("sys_interval 10 20\n", 1, "sys_interval", "expected one value, got '10 20'"),
    ("autosave_interval 0\n", 1, "autosave_interval", "not supported"),
    ("durability eventually\n", 1, "durability", "sync, crash, periodic"),
    ("scheduling_policy realtime\n", 1, "scheduling_policy", "auto, other, batch"),
    ("connect_timeout 0\n", 1, "connect_timeout", "more than 0"),
    ("auto_id_prefix\n", 1, "auto_id_prefix", "missing value"),
    ("pid_file\n", 1, "pid_file", "missing value"),
    ("user\n", 1, "user", "missing value"),
    ("port = 1883\n", 1, "port", "TOML syntax"),
    ("[[listener]]\n", 1, "[[listener]]", "TOML syntax"),
    ("log_file /x.log\n", 1, "log_file", "unknown option"),
])
def test_mosquitto_errors_name_file_line_and_option(tmp_path, text, line, option, words):
    error_at(tmp_path, text, line, option, words)


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "missing.conf"))
    located(info.value, str(tmp_path / "missing.conf"), None, None, "cannot read", "No such file")
    # Mosquitto reads a Latin-1 byte in a comment: so do we (values stay UTF-8).
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"sys_interval 10\n# caf\xe9 du matin\n  #\xb0C\nauto_id_prefix th\xc3\xa9-\n")
    loaded = load_config(str(path))
    assert loaded.config.sys_interval == 10 and loaded.config.auto_id_prefix == "th\u00e9-"
    path.write_bytes(b"sys_interval 10\n# caf\xe9\nauto_id_prefix caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    located(info.value, str(path), 3, None, "not valid UTF-8 (byte 0xe9)")
    path = tmp_path / "latin1.toml"  # TOML is UTF-8 throughout, comments included
    path.write_bytes(b"sys_interval = 10\n# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    located(info.value, str(path), 2, None, "not valid UTF-8")


# ---- syntax detection -----------------------------------------------------------------------------------

def test_syntax_by_extension_and_by_content(tmp_path):
    assert load(tmp_path, "sys_interval 5\n", "a.conf").syntax == "mosquitto"
    assert load(tmp_path, "sys_interval = 5\n", "a.toml").syntax == "toml"
    assert load(tmp_path, "sys_interval = 5\n", "broker.cfg").syntax == "toml"
    loaded = load(tmp_path, "# mosquitto style\nsys_interval 5\nlistener 1883 ::1\n", "mosquitto")
    assert loaded.syntax == "mosquitto" and loaded.config.sys_interval == 5 and loaded.config.persistence is False
    # Neither: the TOML error, with its line.
    error_at(tmp_path, "sys_interval = 5\nthis is = not [ toml\n", 2, None, "not valid TOML", name="broker.cfg")
    # A .toml file is TOML even when it looks like mosquitto.conf.
    error_at(tmp_path, "sys_interval 5\n", 1, None, "not valid TOML", name="b.toml")


# ---- TOML -----------------------------------------------------------------------------------------------

TOML_ALL = """\
set_tcp_nodelay = false
max_inflight_messages = 10
max_queued_messages = 100
max_queued_bytes = 65536
queue_qos0_messages = true
max_packet_size = 2048
message_size_limit = 1024
max_keepalive = 120
connect_timeout = 2.5
allow_zero_length_clientid = false
auto_id_prefix = "gw-"
clientid_prefixes = "sensor-"
persistent_client_expiration = "1w"
retain_available = false
upgrade_outgoing_qos = true
sys_interval = 0
pid_file = "/run/edgebroker.pid"
user = "edgebroker"
log_dest = ["stdout", "file", "syslog"]
log_file = "/var/log/edgebroker.log"
log_type = ["all"]
connection_messages = false
log_timestamp = false
log_timestamp_format = "%H:%M"
persistence = false
persistence_location = "/data"
persistence_file = "b.db"
durability = "periodic"
autosave_interval = 60
autosave_on_changes = true
allow_anonymous = true

[[listener]]
port = 1883

[[listener]]
port = 8883
address = "::1"
max_connections = 50

[[listener]]
unix_socket = "/run/edgebroker.sock"
"""


def test_toml_every_option(tmp_path):
    loaded = load(tmp_path, TOML_ALL, "all.toml")
    assert loaded.config == Config(
        listeners=[Listener(1883), Listener(8883, "::1", 50), Listener(0, unix_socket="/run/edgebroker.sock")],
        set_tcp_nodelay=False, max_inflight_messages=10, max_queued_messages=100, max_queued_bytes=65536,
        queue_qos0_messages=True, max_packet_size=2048, message_size_limit=1024, max_keepalive=120,
        connect_timeout=2.5, allow_zero_length_clientid=False, auto_id_prefix="gw-", clientid_prefixes="sensor-",
        persistent_client_expiration=604800.0, retain_available=False, upgrade_outgoing_qos=True, sys_interval=0,
        pid_file="/run/edgebroker.pid", user="edgebroker", log_dest=("stdout", "file", "syslog"),
        log_file="/var/log/edgebroker.log", log_type=LOG_TYPES, connection_messages=False, log_timestamp=False,
        log_timestamp_format="%H:%M", persistence=False, persistence_location="/data", persistence_file="b.db",
        durability="periodic", autosave_interval=60.0, autosave_on_changes=True, allow_anonymous=True)
    assert loaded.syntax == "toml" and loaded.warnings == ()
    path = str(tmp_path / "all.toml")
    assert loaded.origins["max_keepalive"] == (path, 8, "max_keepalive")
    assert loaded.origins["listener[1]"] == (path, 36, "listener")
    assert loaded.origins["listener[1].max_connections"] == (path, 39, "max_connections")


def test_toml_seconds_for_persistent_client_expiration(tmp_path):
    assert load(tmp_path, "persistent_client_expiration = 90\n", "t.toml").config.persistent_client_expiration == 90


def test_toml_listener_defaults_to_port_1883_all_addresses(tmp_path):
    assert load(tmp_path, "[[listener]]\n", "t.toml").config.listeners == [Listener()]


def test_toml_log_dest_and_log_type_accept_a_single_string(tmp_path):
    config = load(tmp_path, 'log_dest = "none"\nlog_type = "debug"\n', "t.toml").config
    assert (config.log_dest, config.log_type) == ((), ("debug",))


@pytest.mark.parametrize("text, line, option, words", [
    ("persistance = true\n", 1, "persistance", "unknown option (did you mean persistence?)"),
    ("sys_interval = 10\nmax_keepalive = 5\n", 2, "max_keepalive", "10-65535"),
    ("sys_interval = \"10\"\n", 1, "sys_interval", "expected a number of seconds, got '10' (a string)"),
    ("max_inflight_messages = 1.5\n", 1, "max_inflight_messages", "expected an integer"),
    ("max_inflight_messages = true\n", 1, "max_inflight_messages", "expected an integer, got True (a boolean)"),
    ("persistence = 1\n", 1, "persistence", "expected true or false"),
    ("persistence_file = 1\n", 1, "persistence_file", "expected a string"),
    ("durability = \"eventually\"\n", 1, "durability", "expected one of sync, crash, periodic"),
    ("max_inflight_messages = 20\nscheduling_policy = \"fast\"\n", 2, "scheduling_policy",
     "expected one of auto, other, batch"),
    ("persistent_client_expiration = \"10\"\n", 1, "persistent_client_expiration", "duration"),
    ("persistent_client_expiration = 0\n", 1, "persistent_client_expiration", "more than 0"),
    ("persistent_client_expiration = true\n", 1, "persistent_client_expiration", "duration"),
    ("port = 1883\n", 1, "port", "[[listener]]"),
    ("bind_address = \"::1\"\n", 1, "bind_address", "[[listener]]"),
    ("max_connections = 5\n", 1, "max_connections", "[[listener]]"),
    ("[listener]\nport = 1883\n", 1, "listener", "[[listener]] tables"),
    ("[[listener]]\nport = 1883\npersistence = false\n", 3, "persistence", "global option"),
    ("[[listener]]\nport = 1883\nbind_addres = \"::1\"\n", 3, "bind_addres", "unknown option"),
    ("[[listener]]\nport = 70000\n", 2, "port", "out of range"),
    ("[[listener]]\nport = \"1883\"\n", 2, "port", "expected an integer"),
    ("[[listener]]\nport = 1883\nmax_connections = 0\n", 3, "max_connections", "-1 (unlimited) or at least 1"),
    ("[[listener]]\nport = 1883\n[[listener]]\nport = 1883\n", 3, "listener", "duplicates the listener on port 1883"),
    ("[[listener]]\nport = 1883\nunix_socket = \"/s\"\n", 3, "unix_socket", "port 0 and no address"),
    ("[[listener]]\nport = 1883\ncafile = \"/ca\"\n", 3, "cafile", "needs certfile and keyfile"),
    ("[[listener]]\nport = 1883\ncertfile = \"/c\"\n", 3, "certfile", "certfile and keyfile go together"),
    ("[[listener]]\nport = 1883\nrequire_certificate = 1\n", 3, "require_certificate", "expected true or false"),
    ("cafile = \"/ca\"\n", 1, "cafile", "[[listener]]"),
    ("[[listener]]\nport = 1883\npsk_hint = \"gw\"\n", 3, "psk_hint", "not supported yet (TLS is planned)"),
    ("password_file = 5\n", 1, "password_file", "expected a string"),
    ("per_listener_settings = true\npassword_file = \"/p\"\n", 2, "password_file", "set per listener"),
    ("[[listener]]\nport = 1883\nacl_file = \"/a\"\n", 3, "acl_file", "need per_listener_settings true"),
    ("connection = \"cloud\"\n", 1, "connection", "belongs in a [[bridge]] table"),
    ("allow_anonymous = \"true\"\n", 1, "allow_anonymous", "expected true or false"),
    ("log_dest = [\"stderr\", \"file\"]\n", 1, "log_dest", "needs a file name"),
    ("log_file = \"/x.log\"\n", 1, "log_file", "does not include \"file\""),
    ("log_dest = [\"file /x.log\"]\n", 1, "log_dest", "the file name goes in log_file"),
    ("log_dest = []\n", 1, "log_dest", "a string or an array of strings"),
    ("log_type = [\"chatter\"]\n", 1, "log_type", "expected error"),
    ("log_type = [1]\n", 1, "log_type", "array of strings"),
    ("include_dir = 5\n", 1, "include_dir", "a string or an array of strings"),
    ("sys_interval = 5\nsys_interval = 6\n", 2, None, "not valid TOML"),
    ("x = [\n", 1, None, "not valid TOML"),
])
def test_toml_errors_name_file_line_and_option(tmp_path, text, line, option, words):
    error_at(tmp_path, text, line, option, words, name="t.toml")


def test_toml_line_is_found_for_quoted_keys_and_inline_values(tmp_path):
    error_at(tmp_path, "# first\n\n\"max_keepalive\" = 5\n", 3, "max_keepalive", "10-65535", name="t.toml")


# ---- include_dir ----------------------------------------------------------------------------------------

def test_include_dir_reads_conf_files_in_mosquitto_order_and_later_wins(tmp_path):
    inc = tmp_path / "conf.d"
    write(inc, "b.conf", "sys_interval 2\nlistener 1884\n")
    write(inc, "a.conf", "sys_interval 1\nlistener 1883\n")
    write(inc, "B.conf", "sys_interval 99\nmax_keepalive 99\n")  # capitals sort first, as in Mosquitto
    write(inc, "c.conf.disabled", "this is not read\n")
    write(inc, "notes.txt", "nor this\n")
    (inc / "d.conf").mkdir()  # a directory is skipped
    main = write(tmp_path, "main.conf", f"sys_interval 50\ninclude_dir {inc}\nallow_anonymous true\n")
    loaded = load_config(main)
    assert loaded.files == (main, str(inc / "B.conf"), str(inc / "a.conf"), str(inc / "b.conf"))
    assert loaded.config.sys_interval == 2 and loaded.config.max_keepalive == 99
    assert loaded.config.listeners == [Listener(1883), Listener(1884)]
    assert loaded.origins["sys_interval"] == (str(inc / "b.conf"), 1, "sys_interval")


def test_include_dir_is_read_where_it_stands(tmp_path):
    inc = tmp_path / "conf.d"
    write(inc, "a.conf", "sys_interval 1\n")
    main = write(tmp_path, "main.conf", f"include_dir {inc}\nsys_interval 50\n")
    assert load_config(main).config.sys_interval == 50


def test_include_dir_relative_to_the_including_file(tmp_path):
    write(tmp_path / "etc" / "conf.d", "a.conf", "sys_interval 3\n")
    main = write(tmp_path / "etc", "main.conf", "include_dir conf.d\n")
    assert load_config(main).config.sys_interval == 3


def test_include_dir_errors_name_the_included_file(tmp_path):
    inc = tmp_path / "conf.d"
    write(inc, "a.conf", "sys_interval 1\n")
    write(inc, "b.conf", "# comment\nmax_keepalive 1\n")
    main = write(tmp_path, "main.conf", f"include_dir {inc}\n")
    with pytest.raises(ConfigError) as info:
        load_config(main)
    located(info.value, str(inc / "b.conf"), 2, "max_keepalive", "10-65535")


def test_include_dir_warnings_name_the_included_file(tmp_path):
    inc = tmp_path / "conf.d"
    write(inc, "a.conf", "retry_interval 20\n")
    loaded = load_config(write(tmp_path, "main.conf", f"include_dir {inc}\n"))
    assert [(w.file, w.line) for w in loaded.warnings] == [(str(inc / "a.conf"), 1)]


@pytest.mark.parametrize("included", ["include_dir /tmp\n", "sys_interval 1\ninclude_dir /tmp\n"])
def test_include_dir_only_in_the_main_file(tmp_path, included):
    inc = tmp_path / "conf.d"
    write(inc, "a.conf", included)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "main.conf", f"include_dir {inc}\n"))
    located(info.value, str(inc / "a.conf"), included.count("\n"), "include_dir", "only allowed in the main")


def test_include_dir_missing_directory(tmp_path):
    error_at(tmp_path, "sys_interval 1\ninclude_dir /nonexistent/conf.d\n", 2, "include_dir", "cannot read directory")
    error_at(tmp_path, "include_dir\n", 1, "include_dir", "missing value")


def test_include_dir_must_not_contain_the_main_file(tmp_path):
    error_at(tmp_path, f"include_dir {tmp_path}\n", 1, "include_dir", "contains the main configuration file")


def test_include_dir_toml_reads_toml_files_after_the_main_file(tmp_path):
    inc = tmp_path / "conf.d"
    write(inc, "10-limits.toml", "sys_interval = 1\n[[listener]]\nport = 1884\n")
    write(inc, "20-log.toml", "sys_interval = 2\nlog_dest = \"stdout\"\n")
    write(inc, "30-old.conf", "this is not read\n")
    main = write(tmp_path, "main.toml", f"include_dir = \"{inc}\"\nsys_interval = 50\nlog_dest = [\"stderr\", \"syslog\"]\n"
                                        "[[listener]]\nport = 1883\n")
    loaded = load_config(main)
    assert loaded.config.sys_interval == 2
    assert loaded.config.log_dest == ("stdout",)  # an array replaces the earlier file's
    assert loaded.config.listeners == [Listener(1883), Listener(1884)]
    assert loaded.files == (main, str(inc / "10-limits.toml"), str(inc / "20-log.toml"))
    assert loaded.config.persistence is True  # TOML: edgebroker's defaults


def test_include_dir_toml_accepts_a_list_and_errors_in_included_files(tmp_path):
    write(tmp_path / "a", "x.toml", "sys_interval = 1\n")
    write(tmp_path / "b", "y.toml", "# c\nmax_keepalive = 1\n")
    main = write(tmp_path, "main.toml", "include_dir = [\"a\", \"b\"]\n")
    with pytest.raises(ConfigError) as info:
        load_config(main)
    located(info.value, str(tmp_path / "b" / "y.toml"), 2, "max_keepalive", "10-65535")
    write(tmp_path / "c", "z.toml", "include_dir = \"../a\"\n")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "main2.toml", "include_dir = \"c\"\n"))
    located(info.value, str(tmp_path / "c" / "z.toml"), 1, "include_dir", "only allowed in the main")


# ---- the user's seed: a mosquitto.conf as found in a Chinese installation guide -------------------------

def seed_copy(tmp_path: Path) -> Path:
    """The seed with its include_dir pointed at an empty directory under tmp_path (the rest verbatim)."""
    inc = tmp_path / "conf.d"
    inc.mkdir()
    text = SEED.read_text(encoding="utf-8")
    assert "include_dir /etc/mosquitto/conf.d" in text
    path = tmp_path / "mosquitto.conf"
    path.write_text(text.replace("include_dir /etc/mosquitto/conf.d", f"include_dir {inc}"), encoding="utf-8")
    return path


def test_seed_mosquitto_conf_loads(tmp_path):
    path = seed_copy(tmp_path)
    loaded = load_config(str(path))
    # Its active lines: persistence true, log_dest none, include_dir (empty here); the rest is comments,
    # many of them indented and in Chinese. Everything else takes Mosquitto's defaults.
    assert loaded.config == Config(persistence=True, log_dest=())
    assert loaded.syntax == "mosquitto" and loaded.warnings == ()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert loaded.origins["persistence"] == (str(path), lines.index("persistence true") + 1, "persistence")
    assert loaded.origins["log_dest"] == (str(path), lines.index("log_dest none") + 1, "log_dest")


def test_seed_with_its_include_dir_files(tmp_path):
    path = seed_copy(tmp_path)
    write(tmp_path / "conf.d", "local.conf", "listener 1883\nallow_anonymous true\nlog_dest stdout\n")
    loaded = load_config(str(path))
    assert loaded.config == Config(persistence=True, log_dest=("stdout",), listeners=[Listener(1883)],
                                   allow_anonymous=True)


# Every option the seed mentions, active or commented out, and what edgebroker does with it. A sample
# value stands in where the seed gives none.
SEED_SAMPLES = {
    "persistent_client_expiration": "1d", "bind_address": "127.0.0.1", "cafile": "/etc/ca.crt", "capath": "/etc/ca",
    "certfile": "/etc/s.crt", "keyfile": "/etc/s.key", "psk_hint": "gw", "ciphers": "HIGH", "clientid_prefixes": "gw-",
    "password_file": "/etc/pw", "psk_file": "/etc/psk", "acl_file": "/etc/acl", "clientid": "gw1",
    "notification_topic": "state", "username": "u", "password": "p", "bridge_cafile": "/ca", "bridge_capath": "/ca",
    "bridge_certfile": "/c", "bridge_keyfile": "/k",
}
SEED_IMPLEMENTED = {"sys_interval", "pid_file", "user", "max_inflight_messages", "max_queued_messages",
                    "persistent_client_expiration", "bind_address", "port", "max_connections", "autosave_interval",
                    "autosave_on_changes", "persistence", "persistence_file", "persistence_location", "log_dest",
                    "log_type", "connection_messages", "log_timestamp", "clientid_prefixes", "allow_anonymous",
                    "include_dir", "password_file", "acl_file"}
SEED_OBSOLETE = {"retry_interval", "store_clean_interval"}
#: Listener TLS options: implemented, tested on a TLS listener (tests/test_tls_config.py reads their files).
SEED_TLS = {"cafile", "capath", "certfile", "keyfile", "require_certificate", "use_identity_as_username", "ciphers"}
SEED_NOT_YET = {
    "TLS is planned": {"psk_hint"},
    "authentication is planned": {"psk_file"},
}
#: Bridge options: implemented, tested inside a `connection` block.
SEED_BRIDGE = {"connection", "address", "topic", "clientid", "cleansession", "notifications", "notification_topic",
               "keepalive_interval", "start_type", "restart_timeout", "idle_timeout", "username", "password",
               "bridge_cafile", "bridge_capath", "bridge_certfile", "bridge_keyfile"}
# Read into the schema, but the server does not act on them yet: the CLI refuses them (see below).
SEED_NEEDS_SERVER = {"persistent_client_expiration", "clientid_prefixes"}


def seed_option_lines() -> List[tuple]:
    """(option, value) of every `option value` or `#option value` line of the seed."""
    found = []
    for raw in SEED.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(r"\s*#?([a-z_]+)(?:\s+(.*))?", raw)
        if m and not raw.strip().startswith("# "):
            found.append((m.group(1), (m.group(2) or "").strip()))
    return found


def test_seed_option_table_is_complete():
    options = {option for option, _ in seed_option_lines()}
    classified = SEED_IMPLEMENTED | SEED_OBSOLETE | SEED_BRIDGE | SEED_TLS | set().union(*SEED_NOT_YET.values())
    assert options == classified, (options - classified, classified - options)


@pytest.mark.parametrize("option, value", [ov for ov in seed_option_lines() if ov[0] != "include_dir"],
                         ids=lambda v: v if isinstance(v, str) and v else None)
def test_every_seed_option_is_implemented_warned_or_refused(tmp_path, option, value):
    value = value or SEED_SAMPLES.get(option, "")
    if option in ("connection", "address", "topic"):
        value = {"connection": "cloud", "address": "broker.example.com:1883", "topic": "sensors/# out 1"}[option]
    text = f"sys_interval 10\n{option} {value}\n"
    if option in SEED_BRIDGE:
        if option in ("bridge_certfile", "bridge_keyfile"):  # they go together
            value += "\nbridge_certfile /c" if option == "bridge_keyfile" else "\nbridge_keyfile /k"
        if option in ("remote_password", "password"):
            value += "\nusername u"
        block = {"connection": "cloud", "address": "127.0.0.1", "topic": "# out"}
        block.pop(option, None)
        head = "".join(f"{k} {v}\n" for k, v in block.items())
        text = (f"{head}{option} {value}\n" if option != "connection"
                else f"sys_interval 10\n{option} {value}\naddress 127.0.0.1\ntopic # out\n")
        path = write(tmp_path, "m.conf", text)
        loaded = load_config(path)
        assert len(loaded.config.bridges) == 1
        return
    if option in SEED_TLS:
        # Without certfile and keyfile on the same listener, a TLS option is an error at its line.
        if value == "false":  # the default: allowed anywhere
            loaded = load_config(write(tmp_path, "m.conf", f"listener 8883\n{option} {value}\n"))
            assert loaded.origins[f"listener[0].{option}"].line == 2
        elif option not in ("certfile", "keyfile"):
            with pytest.raises(ConfigError) as info:
                load_config(write(tmp_path, "m.conf", f"listener 8883\n{option} {value}\n"))
            located(info.value, str(tmp_path / "m.conf"), 2, option, "needs certfile and keyfile")
        return
    path = write(tmp_path, "m.conf", text)
    planned = [why for why, names in SEED_NOT_YET.items() if option in names]
    if planned:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        located(info.value, path, 2, option, "not supported yet", planned[0])
        return
    loaded = load_config(path)
    if option in SEED_OBSOLETE:
        assert [w.option for w in loaded.warnings] == [option]
    else:
        assert option in SEED_IMPLEMENTED
        if (option, value) == ("max_connections", "-1"):
            assert loaded.config == mosq()  # Mosquitto's default: no default listener is created
            return
        key = {"bind_address": "listener[0].address", "port": "listener[0].port", "max_connections":
               "listener[0].max_connections"}.get(option, option)
        assert loaded.origins[key].line == 2, loaded.origins


# ---- the example edgebroker.toml ------------------------------------------------------------------------

def test_example_toml_states_the_defaults():
    loaded = load_config(str(EXAMPLE))
    assert loaded.config == Config()
    assert loaded.warnings == ()


def test_example_toml_mentions_every_option():
    text = EXAMPLE.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"^#? ?([a-z0-9_]+) = ", text, re.M))
    mentioned |= set(re.findall(r"^# \[\[([a-z]+)\]\]", text, re.M))  # [[serial]], [[gpio]] tables
    fields = {f.name for f in record.fields(Config)} - {"listeners", "verbose", "bridges"}
    assert fields <= mentioned, fields - mentioned
    assert {"port", "address", "max_connections", "include_dir", "log_file", "allow_anonymous"} <= mentioned
    assert {"connection", "topic", "restart_timeout", "bridge_max_queued_messages"} <= mentioned


def test_example_toml_commented_values_are_valid(tmp_path):
    """Uncommenting the optional settings (pid_file, a listener...) gives a file that loads."""
    text = EXAMPLE.read_text(encoding="utf-8")
    text = re.sub(r"^# ((?:include_dir|persistent_client_expiration|pid_file|user|persistence_location|"
                  r"log_timestamp_format) = .*)$", r"\1", text, flags=re.M)
    text = text.replace("# [[listener]]\n# port = 1883 ", "[[listener]]\nport = 1883 ")
    text = re.sub(r"^# (address = \"192.*|max_connections = -1 .*)$", r"\1", text, flags=re.M)
    text = text.replace('include_dir = "/etc/edgebroker/conf.d"', 'include_dir = "conf.d"')
    (tmp_path / "conf.d").mkdir()
    config = load_config(write(tmp_path, "e.toml", text)).config
    assert config.listeners == [Listener(1883, "192.168.1.10", -1)]
    assert config.persistent_client_expiration == 2 * 604800 and config.pid_file == "/run/edgebroker.pid"
    bridge = text[text.index("# [[bridge]]"):].replace("\n# ", "\n")[2:]
    config = load_config(write(tmp_path, "b.toml", bridge)).config
    assert config.bridges[0].addresses == (("broker.example.com", 8883),)
    assert [t.local_topic for t in config.bridges[0].topics] == ["sensors/#", "gw1/cmd/#"]


# ---- the CLI ------------------------------------------------------------------------------------------

def test_check_config_ok_exits_0(tmp_path):
    path = write(tmp_path, "ok.toml", "sys_interval = 5\n[[listener]]\nport = 1883\n")
    r = run_cli("--check-config", "-c", path)
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{path}: OK\n", "")


def test_check_config_seed_exits_0(tmp_path):
    path = seed_copy(tmp_path)
    r = run_cli("-t", "-c", str(path))
    assert (r.returncode, r.stdout.strip()) == (0, f"{path}: OK"), r.stderr


def test_check_config_error_exits_1_naming_file_line_option(tmp_path):
    path = write(tmp_path, "bad.conf", "sys_interval 10\n\nmax_keepalive 5\n")
    r = run_cli("--check-config", "-c", path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"Error: {path}:3: max_keepalive: must be 10-65535, got 5\n"


def test_check_config_prints_warnings_and_exits_0(tmp_path):
    path = write(tmp_path, "old.conf", "retry_interval 20\n")
    r = run_cli("--check-config", "-c", path)
    assert r.returncode == 0 and r.stdout == f"{path}: OK\n"
    assert r.stderr.startswith(f"Warning: {path}:1: retry_interval: obsolete")


def test_check_config_without_c_is_a_usage_error():
    r = run_cli("--check-config")
    assert r.returncode == 2 and "--check-config needs -c FILE" in r.stderr


def test_missing_file_exits_1(tmp_path):
    r = run_cli("-c", str(tmp_path / "nope.conf"))
    assert r.returncode == 1 and r.stderr.startswith(f"Error: {tmp_path / 'nope.conf'}: cannot read")


def test_bad_file_exits_1_before_binding(tmp_path):
    path = write(tmp_path, "bad.toml", "[[listener]]\nport = 1883\naddress = \"127.0.0.1\"\ncafile = \"/ca\"\n")
    r = run_cli("-c", path)
    assert r.returncode == 1
    assert r.stderr == f"Error: {path}:4: cafile: is a TLS option: it needs certfile and keyfile on the same listener\n"
    assert "Opening" not in r.stdout + r.stderr


@pytest.mark.parametrize("text", [
    "listener 0 /tmp/edgebroker-test.sock\n", "message_size_limit 1000\n", "persistent_client_expiration 1d\n",
    "clientid_prefixes gw-\n", "connection_messages false\n", "set_tcp_nodelay false\n", "log_dest topic\n",
    "user root\n",
])
def test_cli_accepts_options_the_server_honours(tmp_path, capsys, text):
    path = write(tmp_path, "t.conf", text)
    assert cli.main(["--check-config", "-c", path]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("euid, user, code", [(0, "no-such-user-x", 1), (0, "nobody", 0), (0, "root", 0),
                                               (1000, "no-such-user-x", 0)])
def test_cli_user_must_exist_only_when_it_would_switch(tmp_path, capsys, monkeypatch, euid, user, code):
    """Mosquitto switches to `user` only when started as root: then the user must exist, and
    --check-config says so at the option's line."""
    monkeypatch.setattr(os, "geteuid", lambda: euid)
    path = write(tmp_path, "t.conf", f"user {user}\n")
    assert cli.main(["--check-config", "-c", path]) == code
    if code:
        assert capsys.readouterr().err.startswith(f"Error: {path}:1: user: no such user 'no-such-user-x'")


class Broker:
    """`python -m edgebroker ...` with stdout and stderr merged and read line by line by a thread."""

    def __init__(self, args: List[str]) -> None:
        self.p = subprocess.Popen(BROKER + args, cwd=str(REPO), env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.seen: List[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def expect(self, pattern: str) -> "re.Match[str]":
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"/{pattern}/ not seen; output:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"exited before /{pattern}/; output:\n" + "\n".join(self.seen))
            self.seen.append(line)
            m = re.search(pattern, line)
            if m:
                return m

    def rest(self) -> str:
        """After exit: the output not read yet, up to EOF."""
        out = []
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            if line is None:
                return "\n".join(out)
            out.append(line)

    def stop(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(TIMEOUT)
        finally:
            if self.p.poll() is None:
                self.p.kill()


def test_cli_runs_a_toml_file_ignores_p_and_writes_the_pid_file(tmp_path):
    pid_file = tmp_path / "edgebroker.pid"
    path = write(tmp_path, "run.toml", f"persistence = false\nlog_dest = \"stdout\"\npid_file = \"{pid_file}\"\n"
                                       "log_timestamp_format = \"<%Y>\"\n"
                                       "log_type = [\"error\", \"warning\", \"notice\", \"information\"]\n"
                                       "[[listener]]\nport = 0\naddress = \"127.0.0.1\"\n")
    broker = Broker(["-c", path, "-p", "1884"])
    try:
        broker.expect(rf"^<\d{{4}}>: Config loaded from {re.escape(path)}\.$")
        broker.expect(r"Warning: -p 1884 ignored: .* defines listeners")
        port = int(broker.expect(r"^<\d{4}>: Opening ipv4 listen socket on port (\d+)\.$").group(1))
        assert port != 1884
        wait_for(lambda: pid_file.exists() and pid_file.read_text() == f"{broker.p.pid}\n", TIMEOUT, what="pid file")
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT):
            broker.expect(r"New connection from 127\.0\.0\.1")
    finally:
        code = broker.stop()
    assert code == 0
    assert not pid_file.exists()
    assert not any("Received" in line or "Sending" in line for line in broker.seen)  # no debug: log_type


def test_cli_runs_a_mosquitto_conf_with_a_unix_socket_listener(tmp_path):
    sock_path = str(tmp_path / "mqtt.sock")
    path = write(tmp_path, "run.conf", f"# migrated\n  persistence false\nlog_dest stdout\nlistener 0 {sock_path}\n"
                                       "allow_anonymous true\n")
    broker = Broker(["-c", path])
    try:
        broker.expect(rf"Opening unix listen socket on path {re.escape(sock_path)}\.")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(TIMEOUT)
            s.connect(sock_path)
            broker.expect(r"New connection from unix socket")
    finally:
        code = broker.stop()
    assert code == 0


def test_cli_log_dest_file_and_none(tmp_path):
    """log_dest file: the log goes to the file (here without timestamps), nothing to the terminal."""
    log_path = tmp_path / "b.log"
    path = write(tmp_path, "run.conf", f"persistence false\nlog_dest file {log_path}\nlog_timestamp false\n")
    broker = Broker(["-c", path, "-p", "0"])
    try:
        wait_for(lambda: log_path.exists() and "Opening ipv4 listen socket" in log_path.read_text(), TIMEOUT,
                 what="the log file")
    finally:
        code = broker.stop()
    assert code == 0
    assert broker.rest() == ""
    text = log_path.read_text(encoding="utf-8")
    assert text.startswith("edgebroker version ") and "Starting in local only mode" in text
    assert text.rstrip("\n").endswith("terminating")
