"""firmware_bridge without edgebroker: `python -m firmware_bridge` bridges a serial port (a real pty
behind a by-id-like symlink) to Debian's Mosquitto; mosquitto_sub / mosquitto_pub on the MQTT side."""
from __future__ import annotations

import subprocess
import sys

from firmware_bridge.firmware import frames as F
from serialdevice import PtyDevice
from test_mosquitto_clients import Proc, procs  # noqa: F401 (procs is a fixture)
from test_tools import mosquitto  # noqa: F401 (a fixture: a real Mosquitto on a loopback port)

PREFIX = "sensors/uart0/"


def test_standalone_bridge_against_mosquitto(mosquitto, procs, tmp_path):  # noqa: F811
    device = PtyDevice(tmp_path / "by-id")
    hp = mosquitto.hp()
    sub = procs("mosquitto_sub", *hp, "-v", "-t", PREFIX + "#")
    bridge = procs(sys.executable, "-m", "firmware_bridge", "--host", mosquitto.host, "--port", str(mosquitto.port),
                   "--serial", device.path, "--format", "frame", "--topic-prefix", PREFIX,
                   "--command-topic", PREFIX + "cmd/#", "--command-qos", "1")
    try:
        assert sub.next_line() == f"{PREFIX}status online\n".encode()
        device.write(F.encode_publish("temp", b"21.5", qos=1, msg_id=3))
        assert sub.next_line() == f"{PREFIX}temp 21.5\n".encode()
        device.wait_received(lambda got: F.encode_ack(3) in got)
        device.take()
        subprocess.run(["mosquitto_pub", *hp, "-t", PREFIX + "cmd/led", "-m", "on", "-q", "1"], check=True, timeout=10)
        assert sub.next_line() == f"{PREFIX}cmd/led on\n".encode()
        device.wait_received(lambda got: got.endswith(b"\x00"))
        (frame,) = F.FrameDecoder().feed(device.take())
        assert (frame.topic, frame.payload, frame.qos) == ("cmd/led", b"on", 1)
        device.write(F.encode_ack(frame.msg_id))
        bridge.p.terminate()
        assert sub.next_line() == f"{PREFIX}status offline\n".encode()
        assert bridge.p.wait(10) == 0
    finally:
        device.close()


def test_standalone_missing_port_is_an_error(mosquitto, tmp_path):  # noqa: F811
    r = subprocess.run([sys.executable, "-m", "firmware_bridge", "--host", mosquitto.host, "--port",
                        str(mosquitto.port), "--serial", str(tmp_path / "nothing")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and "cannot open" in r.stderr and "nothing" in r.stderr, r.stderr
