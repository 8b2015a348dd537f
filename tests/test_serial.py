"""Serial ports in the broker's loop, end to end: a real pseudo-terminal opened by pyserial behind a
by-id-like symlink, the broker (in a thread of this process), and mosquitto_sub / mosquitto_pub.

The test holds the pty's master side and plays the board (tests/serialdevice.py). A subscriber is known
to be subscribed when it prints the port's retained status ("online"), which the broker publishes when
it opens the port.
"""
from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading

import pytest

from edgebroker import record
from edgebroker.configfile import load_config
from edgebroker.devices import SerialPort
from edgebroker.errors import ConfigError
from edgebroker.server import Server
from edgebroker.topics import filter_matches
from firmware_bridge import ports as P
from firmware_bridge.firmware import frames as F
from serialdevice import PtyDevice, count_frames, frames_in
from test_mosquitto_clients import TIMEOUT, hp, procs, pub  # noqa: F401 (procs is a fixture)
from util import wait_for

PREFIX = "sensors/uart0/"
NAME = "usb-Test_Board-if00-port0"


@pytest.fixture
def device(tmp_path):
    d = PtyDevice(tmp_path / "by-id", NAME)
    yield d
    d.close()


def start(make_broker, device, **options):
    broker_options = {k: options.pop(k) for k in ("sys_interval", "persistence", "persistence_location")
                      if k in options}
    options.setdefault("topic_prefix", PREFIX)
    return make_broker(serial=(SerialPort(port=device.path, **options),), **broker_options)


def subscribe(procs, broker, *topics):
    """mosquitto_sub -v on `topics` plus the port's status; returns once it printed "online"."""
    argv = ["mosquitto_sub", *hp(broker), "-v", "-t", PREFIX + "status"]
    for topic in topics:
        argv += ["-t", topic]
    sub = procs(*argv)
    # The retained status comes once per matching filter.
    for _ in range(1 + sum(filter_matches(t, PREFIX + "status") for t in topics)):
        assert sub.next_line() == f"{PREFIX}status online\n".encode()
    return sub


def service_of(broker):
    (service,) = [s for s in broker.server._services if repr(s) == "firmware_bridge"]
    return service


def port_of(broker):
    return next(iter(service_of(broker).ports.values()))


# ---- lines -----------------------------------------------------------------------------------------

def test_the_readme_contract_a_line_becomes_a_publish(make_broker, device, procs):
    broker = start(make_broker, device, baudrate=115200, format="line")
    sub = subscribe(procs, broker, PREFIX + "#")
    device.write(b"temp 21.5\n")
    assert sub.next_line() == b"sensors/uart0/temp 21.5\n"
    device.write(b"humidity 48\r\n")  # CRLF
    assert sub.next_line() == b"sensors/uart0/humidity 48\n"
    device.write(b"room/1/temp -3.25 C\n")  # a payload with spaces, a topic with levels
    assert sub.next_line() == b"sensors/uart0/room/1/temp -3.25 C\n"


@pytest.mark.parametrize("fmt, line, expected", [
    ("kv", b"t=21.5 h=48\n", [b"sensors/uart0/t 21.5\n", b"sensors/uart0/h 48\n"]),
    ("json", b'{"t": 21.5, "state": "on", "ok": true}\n',
     [b"sensors/uart0/t 21.5\n", b"sensors/uart0/state on\n", b"sensors/uart0/ok true\n"]),
    ("json-object", b'{"t": 21.5}\n', [b'sensors/uart0 {"t": 21.5}\n']),
])
def test_line_formats(make_broker, device, procs, fmt, line, expected):
    broker = start(make_broker, device, format=fmt)
    sub = subscribe(procs, broker, PREFIX + "#", "sensors/uart0")
    device.write(line)
    assert [sub.next_line() for _ in expected] == expected


def test_qos_and_retain_options(make_broker, device, procs):
    broker = start(make_broker, device, qos=1, retain=True)
    sub = subscribe(procs, broker, PREFIX + "temp")
    device.write(b"temp 20\n")
    assert sub.next_line() == b"sensors/uart0/temp 20\n"
    # Retained: a later subscriber gets it.
    r = subprocess.run(["mosquitto_sub", *hp(broker), "-q", "1", "-v", "-C", "1", "-W", "10", "-t", PREFIX + "temp"],
                       capture_output=True, timeout=TIMEOUT + 5)
    assert r.stdout == b"sensors/uart0/temp 20\n"


def test_bad_input_is_counted_in_sys_and_the_port_goes_on(make_broker, device, procs):
    broker = start(make_broker, device, max_length=32, sys_interval=0.1)
    sub = subscribe(procs, broker, PREFIX + "#")
    sys_sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", f"$SYS/broker/serial/{NAME}/+")
    device.write(b"no-payload\n"            # garbage: a line needs TOPIC PAYLOAD
                 + b"x" * 100 + b"\n"       # overlong
                 + b"a/+/b 1\n"             # wildcard in a topic
                 + b"\xff\xfe 1\n"          # not UTF-8
                 + b"$SYS/broker/x 1\n"     # the broker's own topics
                 + b"temp 22\n")
    assert sub.next_line() == b"sensors/uart0/temp 22\n"
    values = {}
    wanted = {"garbage": b"1", "overlong": b"1", "bad_topic": b"3", "published": b"1", "lines": b"5"}

    def counted():
        while not sys_sub.lines.empty():
            topic, _, value = sys_sub.next_line().rstrip(b"\n").partition(b" ")
            values[topic.decode().rsplit("/", 1)[1]] = value
        return all(values.get(k) == v for k, v in wanted.items())
    # lines: the five that were not overlong; published: the one good reading
    try:
        wait_for(counted)
    except AssertionError:
        raise AssertionError(f"serial counters {wanted} in $SYS, got {values}") from None
    assert values["state"] == b"online"


def test_a_flooding_board_does_not_starve_network_clients(make_broker, device, procs):
    broker = start(make_broker, device)
    sub = subscribe(procs, broker, "other/topic")
    stop = threading.Event()
    flood_lines = b"flood 1\n" * 2048

    def flood():
        while not stop.is_set():
            try:
                device.write(flood_lines)
            except OSError:
                return

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        wait_for(lambda: port_of(broker).counters["lines"] > 20000, what="the flood to be read")
        for i in range(5):
            pub(broker, "-t", "other/topic", "-m", f"m{i}")
            assert sub.next_line() == f"other/topic m{i}\n".encode()
    finally:
        stop.set()
        flooder.join(TIMEOUT)


# ---- frames ----------------------------------------------------------------------------------------

def test_frames_qos1_acked_over_the_wire_and_resend_not_published_twice(make_broker, device, procs):
    broker = start(make_broker, device, format="frame")
    sub = subscribe(procs, broker, PREFIX + "#")
    frame = F.encode_publish("temp", b"21.5", qos=1, msg_id=7)
    device.write(b"\x00" + frame)
    assert sub.next_line() == b"sensors/uart0/temp 21.5\n"
    ack = F.encode_ack(7)
    device.wait_received(lambda got: ack in got)
    # The board did not hear the ACK and sends the same frame again: acknowledged, not published.
    device.take()
    device.write(frame)
    device.wait_received(lambda got: ack in got)
    device.write(F.encode_publish("temp", b"21.6"))  # QoS 0: no ACK
    assert sub.next_line() == b"sensors/uart0/temp 21.6\n"
    counters = port_of(broker).counters
    assert counters["frames"] == 3 and counters["published"] == 2


def test_qos1_frame_is_durable_before_its_ack_leaves(make_broker, device, tmp_path):
    broker = start(make_broker, device, format="frame", persistence=True, persistence_location=str(tmp_path))
    wait_for(lambda: port_of(broker).online)
    device.write(F.encode_publish("setpoint", b"19", qos=1, retain=True, msg_id=1))
    device.wait_received(lambda got: F.encode_ack(1) in got)
    # The ACK left after the commit that stored the retained message: it is in the file now.
    db = sqlite3.connect(f"file:{tmp_path / 'edgebroker.db'}?mode=ro", uri=True)
    try:
        rows = dict(db.execute("SELECT topic, payload FROM retained"))
    finally:
        db.close()
    assert rows[PREFIX + "setpoint"] == b"19"


def test_bad_frames_counted_ping_and_subscribe(make_broker, device, procs):
    broker = start(make_broker, device, format="frame")
    wait_for(lambda: port_of(broker).online)
    body = bytearray(F.encode_body(F.PUBLISH, 0, "t", b"1"))
    body[-1] ^= 0xFF
    device.write(F.cobs_encode(bytes(body)) + b"\x00"           # bad CRC
                 + b"\x13\x37\x00"                              # garbage
                 + F.encode_publish("a/#", b"1", qos=1, msg_id=4)  # wildcard: refused
                 + F.encode_ping(5)
                 + F.encode_subscribe("cmd/#", 6, qos=1))
    device.wait_received(lambda got: count_frames(got) == 2)
    events = F.FrameDecoder().feed(device.take())
    assert events == [F.Frame(F.ACK, 5, "", b"\x00"), F.Frame(F.ACK, 6, "", b"\x01")]
    counters = port_of(broker).counters
    assert (counters["bad_crc"], counters["garbage"], counters["bad_topic"]) == (1, 1, 1)
    # The board's subscription: relative to the prefix.
    pub(broker, "-t", PREFIX + "cmd/fan", "-m", "50", "-q", "1")
    device.wait_received(lambda got: count_frames(got) == 1)
    (frame,) = F.FrameDecoder().feed(device.take())
    assert (frame.kind, frame.topic, frame.payload, frame.qos) == (F.PUBLISH, "cmd/fan", b"50", 1)


# ---- downlink --------------------------------------------------------------------------------------

def test_commands_reach_the_board_as_lines(make_broker, device):
    broker = start(make_broker, device, command_topics=(PREFIX + "cmd/#", "site/all/#"))
    wait_for(lambda: port_of(broker).online)
    pub(broker, "-t", PREFIX + "cmd/led", "-m", "on")
    pub(broker, "-t", "site/all/reboot", "-m", "now")
    pub(broker, "-t", PREFIX + "cmd/text", "-m", "two\nlines")  # cannot be one line: dropped, counted
    pub(broker, "-t", PREFIX + "cmd/led", "-m", "off")
    device.wait_received(lambda got: got.endswith(b"cmd/led off\n"))
    assert device.take() == b"cmd/led on\nsite/all/reboot now\ncmd/led off\n"
    assert port_of(broker).counters["unsendable"] == 1


def test_qos1_command_frames_are_resent_until_acked(make_broker, device):
    broker = start(make_broker, device, format="frame", command_topics=(PREFIX + "cmd/#",), command_qos=1,
                   ack_timeout=0.05)
    wait_for(lambda: port_of(broker).online)
    pub(broker, "-t", PREFIX + "cmd/valve", "-m", "open", "-q", "1")
    device.wait_received(lambda got: count_frames(got) >= 2)  # sent, then resent: the board did not ACK
    sent = frames_in(device.take())
    first = F.decode(sent[0])
    assert (first.topic, first.payload, first.qos) == ("cmd/valve", b"open", 1)
    assert all(f == sent[0] for f in sent)
    device.write(F.encode_ack(first.msg_id))
    wait_for(lambda: not port_of(broker)._pending, what="the ACK to be taken")
    resent = port_of(broker).counters["resent"]
    assert 1 <= resent <= P.MAX_SENDS - 1


# ---- unplug, replug, missing devices -----------------------------------------------------------------

def test_unplug_and_replug_by_the_same_path(make_broker, device, procs):
    broker = start(make_broker, device, reopen_delay=0.05, reopen_delay_max=0.2)
    sub = subscribe(procs, broker, PREFIX + "#")
    device.write(b"temp 1\n")
    assert sub.next_line() == b"sensors/uart0/temp 1\n"
    device.unplug()
    assert sub.next_line() == b"sensors/uart0/status offline\n"
    # While unplugged, the broker keeps serving (and keeps trying the path).
    pub(broker, "-t", PREFIX + "other", "-m", "still here")
    assert sub.next_line() == b"sensors/uart0/other still here\n"
    device.replug()
    assert sub.next_line() == b"sensors/uart0/status online\n"
    device.write(b"temp 2\n")
    assert sub.next_line() == b"sensors/uart0/temp 2\n"
    counters = port_of(broker).counters
    assert (counters["lost"], counters["opened"]) == (1, 2)


def test_missing_port_is_an_error_at_start_naming_file_and_line(tmp_path):
    conf = tmp_path / "edgebroker.toml"
    conf.write_text(f'persistence = false\n\n[[listener]]\nport = 0\naddress = "127.0.0.1"\n\n'
                    f'[[serial]]\nport = "{tmp_path}/no-such-tty"\n')
    config = load_config(str(conf)).config
    with pytest.raises(ConfigError) as info:
        Server(config)
    message = str(info.value)
    assert f"{conf}:7:" in message and "no-such-tty" in message and "No such file" in message
    # The command line says it and exits 1.
    r = subprocess.run([sys.executable, "-m", "edgebroker", "-c", str(conf)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 1 and f"{conf}:7:" in r.stderr, r.stderr


def test_missing_port_with_retry_starts_offline_and_comes_online(make_broker, tmp_path, procs):
    device = PtyDevice(tmp_path / "by-id", NAME)
    device.close()  # not plugged in yet
    broker = make_broker(serial=(SerialPort(port=device.path, topic_prefix=PREFIX, on_missing="retry",
                                            reopen_delay=0.05, reopen_delay_max=0.1),))
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", PREFIX + "#")
    assert sub.next_line() == b"sensors/uart0/status offline\n"
    device.replug()
    try:
        assert sub.next_line() == b"sensors/uart0/status online\n"
        device.write(b"temp 5\n")
        assert sub.next_line() == b"sensors/uart0/temp 5\n"
    finally:
        device.close()


def test_stop_says_offline(make_broker, device, procs):
    broker = start(make_broker, device)
    wait_for(lambda: port_of(broker).online)
    broker.stop()
    assert broker.server.broker.retained[PREFIX + "status"].payload == b"offline"


def test_a_broker_without_serial_never_loads_firmware_bridge():
    code = ("import sys\nfrom edgebroker.config import Config, Listener\nfrom edgebroker.server import Server\n"
            "s = Server(Config(listeners=[Listener(port=0, address='127.0.0.1')], persistence=False))\n"
            "s.close()\nprint(sorted(m for m in ('firmware_bridge', 'serial', 'gpiozero') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == "[]", r.stderr


# ---- configuration ---------------------------------------------------------------------------------

def _load(tmp_path, text):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    return conf, load_config(str(conf))


def test_serial_tables_are_read(tmp_path):
    _, loaded = _load(tmp_path, '[[serial]]\nport = "/dev/ttyUSB0"\nformat = "frame"\ntopic_prefix = "s/u0/"\n'
                                'command_topics = ["s/u0/cmd/#"]\nqos = 1\non_missing = "retry"\n\n'
                                '[[serial]]\nport = "/dev/serial0"\n')
    first, second = loaded.config.serial
    assert (first.format, first.prefix, first.command_topics, first.qos, first.on_missing) == (
        "frame", "s/u0/", ("s/u0/cmd/#",), 1, "retry")
    assert (second.label, second.prefix, second.client, second.status) == (
        "serial0", "serial/serial0/", "serial-serial0", "serial/serial0/status")


@pytest.mark.parametrize("table, line, message", [
    ('port = "/dev/x"\nformat = "yaml"\n', 3, "format: must be one of line, kv, json, json-object, frame"),
    ('port = "/dev/x"\nbaudrat = 9600\n', 3, "baudrat: unknown option (did you mean baudrate?)"),
    ('port = "/dev/x"\nbaudrate = "fast"\n', 3, "baudrate: expected an integer"),
    ('port = "/dev/x"\ntopic_prefix = "a/+/"\n', 3, "topic_prefix: must not contain wildcards"),
    ('port = "/dev/x"\ncommand_topics = ["a/#/b"]\n', 3, "command_topics: 'a/#/b': # must be a whole level"),
    ('port = "/dev/x"\nqos = 3\n', 3, "qos: must be 0, 1 or 2"),
    ('port = "/dev/x"\nmax_length = 4\n', 3, "max_length: must be 8-65536"),
    ('port = "/dev/x"\non_missing = "ignore"\n', 3, "on_missing: must be one of error, retry"),
    ('baudrate = 9600\n', 1, "serial: [[serial]] needs port"),
    ('port = "/dev/x"\n\n[[serial]]\nport = "/dev/x"\n', 4, "two [[serial]] tables have port '/dev/x'"),
])
def test_serial_config_errors_name_file_line_and_option(tmp_path, table, line, message):
    conf = tmp_path / "c.toml"
    conf.write_text("[[serial]]\n" + table)
    with pytest.raises(ConfigError) as info:
        load_config(str(conf))
    assert str(info.value).startswith(f"{conf}:{line}: "), str(info.value)
    assert message in str(info.value)


def test_reload_keeps_unchanged_ports_and_adds_new_ones(make_broker, device, tmp_path, procs):
    broker = start(make_broker, device)
    first = port_of(broker)
    second_device = PtyDevice(tmp_path / "by-id", "usb-Second-port0")
    try:
        config = broker.server.config
        added = SerialPort(port=second_device.path, topic_prefix="sensors/uart1/")
        new = record.replace(config, serial=config.serial + (added,))
        broker.server.reloader = lambda: new
        sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "sensors/uart1/#")
        broker.server.request_reload()
        assert sub.next_line() == b"sensors/uart1/status online\n"
        assert port_of(broker) is first
        second_device.write(b"temp 3\n")
        assert sub.next_line() == b"sensors/uart1/temp 3\n"
    finally:
        second_device.close()


def test_port_without_topic_prefix_uses_serial_name(make_broker, device, procs):
    broker = make_broker(serial=(SerialPort(port=device.path, name="uart9"),))
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "serial/uart9/#")
    assert sub.next_line() == b"serial/uart9/status online\n"
    device.write(b"t 1\n")
    assert sub.next_line() == b"serial/uart9/t 1\n"



def test_the_acl_file_applies_to_a_port_by_its_username(make_broker, tmp_path, procs):
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n\nuser uart0\ntopic write sensors/uart0/#\n")
    first = PtyDevice(tmp_path / "by-id", "usb-First-port0")
    second = PtyDevice(tmp_path / "by-id", "usb-Second-port0")
    try:
        broker = make_broker(allow_anonymous=True, acl_file=str(acl), serial=(
            SerialPort(port=first.path, topic_prefix=PREFIX, username="uart0"),
            SerialPort(port=second.path, topic_prefix="sensors/uart1/")))  # anonymous: may not write
        sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "sensors/#")
        assert sub.next_line() == b"sensors/uart0/status online\n"  # uart1's status was denied too
        ports = list(service_of(broker).ports.values())
        second.write(b"temp 2\n")
        wait_for(lambda: ports[1].counters["lines"] == 1)
        first.write(b"temp 1\n")
        assert sub.next_line() == b"sensors/uart0/temp 1\n"
    finally:
        first.close()
        second.close()
