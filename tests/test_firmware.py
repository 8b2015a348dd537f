"""The board code (firmware_bridge/firmware/node.py, main.py) under real MicroPython 1.27, end to end.

MicroPython's WebAssembly port runs under node with a stand-in `machine` module
(tests/micropython/machine.py): its UART writes to and reads from the master side of a real
pseudo-terminal; the broker (in a thread of this process) opens the slave side by a by-id-like symlink
with pyserial. So the board's bytes go: MicroPython -> pty -> broker's loop -> mosquitto_sub, and a
command published with mosquitto_pub comes back: broker -> pty -> MicroPython, which sets a Pin.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from edgebroker.devices import SerialPort
from micropython_runner import HERE, command, firmware_files, run, write_spec
from serialdevice import PtyDevice
from test_mosquitto_clients import hp, procs, pub  # noqa: F401 (procs is a fixture)

PREFIX = "sensors/board1/"

# Runs on the board: the real main() with the stand-in machine module, until it has obeyed two
# commands and had three readings acknowledged.
BOARD = """
import machine
machine.ADC.VALUES = [14200, 14200, 14520]   # TMP36: 21.5, 21.5, then 23.1 degrees
import node
node.main(until=lambda n: n.commands >= 2 and n.acked >= 3)
print("board done: commands %d" % 2)
"""


@pytest.fixture
def board_process(tmp_path):
    started = []

    def start(device: PtyDevice) -> subprocess.Popen:
        files = firmware_files("frames.py", "node.py", "main.py")
        files["/lib/machine.py"] = (HERE / "micropython" / "machine.py").read_bytes()
        spec = write_spec(BOARD, files, uart_fd=device.master)
        proc = subprocess.Popen(command(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(device.master,))
        started.append((proc, spec))
        return proc

    yield start
    for proc, spec in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        os.unlink(spec)


def test_micropython_board_through_a_pty_to_mosquitto_sub_and_back(make_broker, tmp_path, procs, board_process):
    device = PtyDevice(tmp_path / "by-id", "usb-MicroPython_Board-if00")
    try:
        # Three lines of TOML, and the frame format: the board subscribes to its commands itself.
        broker = make_broker(serial=(SerialPort(port=device.path, format="frame", topic_prefix=PREFIX),))
        sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", PREFIX + "#")
        assert sub.next_line() == f"{PREFIX}status online\n".encode()
        board = board_process(device)
        # The board's first reading, framed by MicroPython, through the pty and the broker.
        assert sub.next_line(timeout=60) == f"{PREFIX}temp 21.5\n".encode()
        # Commands back to the board: faster readings, then the LED.
        pub(broker, "-t", PREFIX + "cmd/period", "-m", "100", "-q", "1")
        assert sub.next_line() == f"{PREFIX}cmd/period 100\n".encode()
        pub(broker, "-t", PREFIX + "cmd/led", "-m", "on", "-q", "1")
        lines = [sub.next_line(timeout=60) for _ in range(3)]
        # The command itself (this subscriber sees it too), the board's answer, and more readings.
        assert f"{PREFIX}cmd/led on\n".encode() in lines
        assert f"{PREFIX}led on\n".encode() in lines
        out, err = board.communicate(timeout=60)
        assert board.returncode == 0, err.decode()
        text = out.decode()
        assert "subscribed" in text and "PIN 2 = 1" in text and "led 1" in text, text
        assert "board done" in text, text
        assert sub.next_line(timeout=60) in (f"{PREFIX}temp 21.5\n".encode(), f"{PREFIX}temp 23.1\n".encode())
    finally:
        device.close()


def test_board_resends_with_the_same_id_until_acked_then_gives_up():
    """Under MicroPython, with a UART that loses every ACK of the reading: the board sends the same
    frame (same message id) `tries` times, gives up, and still obeys and acknowledges a command."""
    program = """
import frames as F
import node

class Uart:
    def __init__(self):
        self.out = []
        self.inbox = b""
    def write(self, data):
        self.out.append(bytes(data))
        return len(data)
    def read(self, n=4096):
        data, self.inbox = self.inbox, b""
        return data or None

class Led:
    v = 0
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v

u = Uart()
led = Led()
n = node.Node(u, lambda: b"20.0", {"led": led}, ack_ms=0, tries=3, log=print)
n.start()
u.inbox = F.encode_ack(1, 1)
for _ in range(5):
    n.step()
readings = [f for f in u.out if F.decode(f).__class__ is F.Frame and F.decode(f).topic == "temp"]
print(len(readings), len(set(readings)), F.decode(readings[0]).msg_id, F.decode(readings[0]).qos)
u.out = []
u.inbox = F.encode_publish("cmd/led", b"on", 1, False, 9)
n.step()
print(led.v, [F.decode(f) for f in u.out])
"""
    out = run(program, firmware_files("frames.py", "node.py")).splitlines()
    assert out[0] == "subscribed"
    assert out[1] == "no ack for 2, giving up"
    assert out[2] == "3 1 2 1"  # three sends, all the same frame: id 2, QoS 1
    assert out[3] == "led 1"
    assert out[4] == ("1 [Frame(ack, msg_id=9, topic='', payload=b'\\x00', qos=0, retain=False), "
                      "Frame(publish, msg_id=0, topic='led', payload=b'on', qos=0, retain=False)]")


# Stand-ins for what the WebAssembly port lacks and no registry here carries: `network` and umqtt's
# MQTTClient (the recording kind: what the Wi-Fi code asks of them is what is checked).
_WIFI_STANDINS = {
    "/lib/network.py": b"""
STA_IF = 0
class WLAN:
    def __init__(self, interface):
        self.up = False
        self.joined = None
    def active(self, on):
        self.up = on
    def isconnected(self):
        return self.joined is not None
    def connect(self, ssid, password):
        print("wifi", ssid)
        self.joined = ssid
""",
    "/lib/umqtt/__init__.py": b"",
    "/lib/umqtt/simple.py": b"""
class MQTTClient:
    inbox = []
    def __init__(self, client_id, server, port=0, user=None, password=None, keepalive=0, ssl=False):
        print("client", client_id, server, keepalive)
    def set_last_will(self, topic, msg, retain=False, qos=0):
        print("will", topic, msg, retain, qos)
    def set_callback(self, f):
        self.cb = f
    def connect(self, clean_session=True):
        print("connect")
    def publish(self, topic, msg, retain=False, qos=0):
        print("publish", topic, msg, retain, qos)
    def subscribe(self, topic, qos=0):
        print("subscribe", topic, qos)
    def check_msg(self):
        if MQTTClient.inbox:
            self.cb(*MQTTClient.inbox.pop(0))
""",
}


def test_wifi_variant_under_micropython():
    files = firmware_files("wifi.py", "node.py", "frames.py")
    files.update(_WIFI_STANDINS)
    files["/lib/machine.py"] = (HERE / "micropython" / "machine.py").read_bytes()
    program = """
import machine
machine.ADC.VALUES = [14200]
from umqtt.simple import MQTTClient
MQTTClient.inbox = [(b"sensors/board1/cmd/period", b"10"), (b"sensors/board1/cmd/led", b"on"),
                    (b"other/topic", b"x"), (b"sensors/board1/cmd/led", b"dim")]
import wifi
wifi.main("greenhouse", "secret", "192.168.1.10", until=lambda n: n.commands >= 3 and n.published >= 3)
"""
    out = run(program, files).splitlines()
    assert out[:6] == [
        "wifi greenhouse",
        "client board1 192.168.1.10 60",
        "will b'sensors/board1/status' b'offline' True 1",
        "connect",
        "publish b'sensors/board1/status' b'online' True 1",
        "subscribe b'sensors/board1/cmd/#' 1",
    ]
    assert "PIN 2 = 1" in out and "led 1" in out
    assert "publish b'sensors/board1/led' b'on' True 0" in out
    assert "bad command b'dim'" in out
    assert out.count("publish b'sensors/board1/temp' b'21.5' False 1") >= 3
