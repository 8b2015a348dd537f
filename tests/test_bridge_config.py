"""Bridge configuration: Mosquitto's `connection` block and the TOML `[[bridge]]` table (edgebroker/bridgeconfig.py,
edgebroker/configfile.py). Every error names file, line and option."""
from __future__ import annotations

import pytest

from edgebroker.bridgeconfig import BridgeConfig, BridgeTopic
from edgebroker.config import Config
from edgebroker.errors import ConfigError

from test_config import error_at, load

HEAD = "connection cloud\naddress 127.0.0.1\n"


def bridge(tmp_path, text: str, name: str = "b.conf") -> BridgeConfig:
    config = load(tmp_path, text, name).config
    assert len(config.bridges) == 1
    return config.bridges[0]


def test_mosquitto_defaults(tmp_path):
    b = bridge(tmp_path, HEAD + "topic sensors/#\n")
    assert b.addresses == (("127.0.0.1", 1883),)
    assert b.topics == (BridgeTopic("sensors/#", "out", 0),)
    assert (b.cleansession, b.local_clean, b.keepalive_interval, b.try_private, b.notifications) == (False, False, 60, True, True)
    assert (b.restart_timeout, b.restart_timeout_cap, b.start_type, b.threshold, b.idle_timeout) == (5, 30, "automatic", 10, 60)
    assert (b.protocol_version, b.protocol_level, b.attempt_unsubscribe, b.outgoing_retain) == ("mqttv311", 4, True, True)
    assert b.remote_id.endswith(".cloud") and b.local_id == "local." + b.remote_id
    assert b.state_topic == f"$SYS/broker/connection/{b.remote_id}/state"
    # edgebroker's own: a queue on disk, QoS 0 included, oldest dropped when full.
    assert (b.queue_qos0_messages, b.queue_drop, b.max_queued_messages) == (True, "oldest", 1_000_000)


# Every topic line form: (line, pattern, direction, qos, local_topic, remote_topic)
@pytest.mark.parametrize("line, expected", [
    ("topic a/#", ("a/#", "out", 0, "a/#", "a/#")),
    ("topic a/# in", ("a/#", "in", 0, "a/#", "a/#")),
    ("topic a/# BOTH 2", ("a/#", "both", 2, "a/#", "a/#")),
    ("topic # out 1 gw/ cloud/gw/", ("#", "out", 1, "gw/#", "cloud/gw/#")),
    ("topic + in 1 \"\" remote/", ("+", "in", 1, "+", "remote/+")),
    ("topic x both 0 local/ \"\"", ("x", "both", 0, "local/x", "x")),
    ("topic \"\" out 1 local/state remote/state", (None, "out", 1, "local/state", "remote/state")),
    ("topic # out 1 gw/", ("#", "out", 1, "gw/#", "#")),  # remote prefix left out
    ("topic a/# out 1 # a comment", ("a/#", "out", 1, "a/#", "a/#")),
    ("topic a/# out # a comment", ("a/#", "out", 0, "a/#", "a/#")),
])
def test_topic_line_forms(tmp_path, line, expected):
    t = bridge(tmp_path, HEAD + line + "\n").topics[0]
    assert (t.pattern, t.direction, t.qos, t.local_topic, t.remote_topic) == expected


@pytest.mark.parametrize("line, words", [
    ("topic", "missing value"),
    ("topic a sideways", "invalid bridge topic direction"),
    ("topic a out 3", "invalid bridge QoS level"),
    ("topic a out one", "invalid bridge QoS level"),
    ("topic \"\" out 1", "needs both a local and a remote prefix"),
    ("topic \"\" out 1 local/", "needs both a local and a remote prefix"),
    ("topic a out 1 lo+cal/ r/", "invalid local prefix"),
    ("topic a out 1 l/ r/#", "invalid remote prefix"),
    ("topic # out 1 gw", "invalid local prefix and pattern combination 'gw#'"),
    ("topic a/#/b", "not a topic filter"),
    ("topic a out 1 l/ r/ extra", "unexpected 'extra'"),
])
def test_bad_topic_lines_are_located(tmp_path, line, words):
    error_at(tmp_path, HEAD + line + "\n", 3, "topic", words)


@pytest.mark.parametrize("text, line, option, words", [
    ("topic a\n", 1, "topic", "belongs after a `connection NAME` line"),
    ("remote_username u\n", 1, "remote_username", "belongs after a `connection NAME` line"),
    ("connection cloud\ntopic a\n", 1, "connection", "no remote address"),
    ("connection cloud\naddress h\n", 1, "connection", "no topics defined"),
    ("connection a/b\naddress h\ntopic a\n", 1, "connection", "invalid bridge name"),
    (HEAD + "address h2\ntopic a\n", 3, "address", "a second address line"),
    ("connection cloud\naddress h:0\ntopic a\n", 2, "address", "invalid port"),
    ("connection cloud\naddress h:x\ntopic a\n", 2, "address", "invalid port"),
    (HEAD + "topic a\nkeepalive_interval 4\n", 4, "keepalive_interval", "5-65535"),
    (HEAD + "topic a\nrestart_timeout 30 5\n", 4, "restart_timeout", "cap is lower than the base"),
    (HEAD + "topic a\nrestart_timeout soon\n", 4, "restart_timeout", "BASE [CAP]"),
    (HEAD + "topic a\nstart_type manual\n", 4, "start_type", "expected one of automatic, lazy, once"),
    (HEAD + "topic a\nbridge_protocol_version mqttv50\n", 4, "bridge_protocol_version", "mqttv311, mqttv31"),
    (HEAD + "topic a\nthreshold 0\n", 4, "threshold", "at least 1"),
    (HEAD + "topic a\nremote_password p\n", 4, "remote_password", "needs remote_username"),
    (HEAD + "topic a\nbridge_certfile /c\n", 4, "bridge_certfile", "go together"),
    (HEAD + "topic a\nbridge_tls_version tlsv1\n", 4, "bridge_tls_version", "tlsv1.2, tlsv1.3"),
    (HEAD + "topic a\nbridge_queue_drop random\n", 4, "bridge_queue_drop", "oldest, newest"),
    (HEAD + "topic a\nbridge_max_queued_messages -1\n", 4, "bridge_max_queued_messages", "0 (no limit) or more"),
    (HEAD + "topic a\nbridge_max_inflight_messages 0\n", 4, "bridge_max_inflight_messages", "1-65535"),
    (HEAD + "topic a\ntry_private maybe\n", 4, "try_private", "true or false"),
    (HEAD + "topic a\nnotification_topic a/#\n", 4, "notification_topic", "wildcards"),
    (HEAD + "topic a\n" + HEAD + "topic a\n", 4, "connection", "a second bridge named 'cloud'"),
    (HEAD + "topic a\nlocal_clientid x\nconnection c2\naddress h\ntopic a\nlocal_clientid x\n", 8, "local_clientid",
     "not unique"),
])
def test_bad_bridge_options_are_located(tmp_path, text, line, option, words):
    error_at(tmp_path, text, line, option, words)


def test_every_option_is_read(tmp_path):
    b = bridge(tmp_path, HEAD.replace("127.0.0.1", "[::1]:8883 cloud.example.com:1884") + """topic a
round_robin true
bridge_protocol_version mqttv31
cleansession true
local_cleansession false
keepalive_interval 30
restart_timeout 10
start_type lazy
threshold 5
idle_timeout 120
notifications false
notification_topic gw/state
notifications_local_only true
try_private false
clientid gw-remote
local_clientid gw-local
username u
password p
local_username bridge
local_password x
bridge_attempt_unsubscribe false
bridge_outgoing_retain false
bridge_max_packet_size -5
bridge_cafile /ca.pem
bridge_capath /etc/ssl/certs
bridge_certfile /c.pem
bridge_keyfile /k.pem
bridge_insecure true
bridge_tls_version tlsv1.3
bridge_alpn x-amzn-mqtt-ca
bridge_max_queued_messages 500
bridge_max_queued_bytes 100000
bridge_queue_drop newest
bridge_queue_qos0_messages false
bridge_max_inflight_messages 100
""")
    assert b == BridgeConfig(
        "cloud", (("::1", 8883), ("cloud.example.com", 1884)), (BridgeTopic("a"),), round_robin=True,
        protocol_version="mqttv31", cleansession=True, local_cleansession=False, keepalive_interval=30,
        restart_timeout=10, restart_timeout_cap=None, start_type="lazy", threshold=5, idle_timeout=120,
        notifications=False, notification_topic="gw/state", notifications_local_only=True, try_private=False,
        remote_clientid="gw-remote", local_clientid="gw-local", remote_username="u", remote_password="p",
        local_username="bridge", local_password="x", attempt_unsubscribe=False, outgoing_retain=False,
        max_packet_size=0, cafile="/ca.pem", capath="/etc/ssl/certs", certfile="/c.pem", keyfile="/k.pem",
        insecure=True, tls_version="tlsv1.3", alpn="x-amzn-mqtt-ca", max_queued_messages=500,
        max_queued_bytes=100000, queue_drop="newest", queue_qos0_messages=False, max_inflight_messages=100)
    assert b.protocol_level == 3 and b.tls and b.state_topic == "gw/state"


def test_restart_timeout_below_one_is_one_second(tmp_path):
    b = bridge(tmp_path, HEAD + "topic a\nrestart_timeout 0\n")
    assert (b.restart_timeout, b.restart_timeout_cap) == (1, None)


def test_toml_bridge_tables_mean_the_same(tmp_path):
    conf = bridge(tmp_path, HEAD + "topic a/# out 1\ntopic \"\" in 2 l/c r/c\nrestart_timeout 5 60\n"
                                   "remote_username u\nbridge_queue_drop newest\n")
    toml = bridge(tmp_path, """[[bridge]]
connection = "cloud"
address = "127.0.0.1"
topic = ["a/# out 1", '"" in 2 l/c r/c']
restart_timeout = [5, 60]
remote_username = "u"
bridge_queue_drop = "newest"
""", "b.toml")
    assert toml == conf


@pytest.mark.parametrize("text, line, option, words", [
    ('[[bridge]]\naddress = "h"\ntopic = "a"\n', 1, "bridge", 'needs connection = "NAME"'),
    ('[[bridge]]\nconnection = "c"\naddress = "h"\ntopic = "a"\nkeepalive_interval = "60"\n', 5,
     "keepalive_interval", "expected an integer"),
    ('[[bridge]]\nconnection = "c"\naddress = "h"\ntopic = "a"\nadress = "x"\n', 5, "adress", "unknown option"),
    ('[[bridge]]\nconnection = "c"\naddress = "h"\ntopic = "a sideways"\n', 4, "topic", "direction"),
    ('[[bridge]]\nconnection = "c"\naddress = "h"\ntopic = "a"\nbridge_psk = "12"\n', 5, "bridge_psk",
     "not supported yet"),
    ('[[bridge]]\nconnection = "c"\naddress = "h"\ntopic = "a"\nstart_type = "manual"\n', 5, "start_type",
     "automatic, lazy, once"),
    ('topic = "a"\n', 1, "topic", "belongs in a [[bridge]] table"),
    ('bridge = 1\n', 1, "bridge", "[[bridge]] tables"),
])
def test_toml_errors_are_located(tmp_path, text, line, option, words):
    error_at(tmp_path, text, line, option, words, name="b.toml")


@pytest.mark.parametrize("kwargs, option", [
    ({"addresses": ()}, "address"),
    ({"topics": ()}, "topic"),
    ({"keepalive_interval": 65536}, "keepalive_interval"),
    ({"max_packet_size": -1}, "bridge_max_packet_size"),
    ({"idle_timeout": 0}, "idle_timeout"),
    ({"remote_clientid": ""}, "remote_clientid"),
    ({"max_queued_bytes": -1}, "bridge_max_queued_bytes"),
])
def test_bridge_validators_fire(kwargs, option):
    args = dict(name="c", addresses=(("h", 1883),), topics=(BridgeTopic("a"),))
    args.update(kwargs)
    with pytest.raises(ConfigError) as info:
        BridgeConfig(**args)
    assert info.value.option == option


def test_topic_validators_fire():
    for kwargs in ({"direction": "up"}, {"qos": 3}, {"local_prefix": "a/+"}, {"local_prefix": ""}):
        with pytest.raises(ConfigError):
            BridgeTopic("a", **kwargs)


def test_config_refuses_duplicate_bridges():
    b = BridgeConfig("c", (("h", 1883),), (BridgeTopic("a"),))
    with pytest.raises(ConfigError) as info:
        Config(bridges=(b, b))
    assert info.value.option == "connection"
