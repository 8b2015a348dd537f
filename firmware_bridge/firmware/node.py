"""A sensor board's side of the serial link: read a sensor, frame it, write it to a UART, obey commands.

Runs on MicroPython (copy frames.py, node.py and main.py to the board: docs/firmware.md) and is tested
under MicroPython 1.27 against a running broker through a real pseudo-terminal
(tests/test_firmware.py). It needs a UART-like object (write(bytes), read() -> bytes or None), a
function returning the reading as bytes, and a dict of actuators: name -> object with value(v), such as
machine.Pin.

What it does, all in `Node.step()` called from a loop:
  - at start, a 0x00 (the broker drops whatever it held) and a SUBSCRIBE for "cmd/#" (relative to the
    port's topic_prefix), resent until the broker's ACK;
  - every `period_ms`, the reading as a QoS 1 PUBLISH on `topic`; an unacknowledged one is resent after
    `ack_ms` with the same message id (the broker publishes it once) and given up after `tries` sends;
  - a PUBLISH from the broker on "cmd/NAME": payload 1/on/true or 0/off/false sets actuator NAME, then
    its state is published on NAME; "cmd/period" sets period_ms. A QoS 1 command is acknowledged.
"""
import time

import frames as F

ON = (b"1", b"on", b"true")
OFF = (b"0", b"off", b"false")


class Node:
    def __init__(self, uart, read_sensor, actuators=None, topic="temp", period_ms=5000, ack_ms=1000, tries=5,
                 log=None):
        self.uart = uart
        self.read_sensor = read_sensor
        self.actuators = actuators or {}
        self.topic = topic
        self.period_ms = period_ms
        self.ack_ms = ack_ms
        self.tries = tries
        self.log = log or (lambda message: None)
        self.decoder = F.FrameDecoder(256)
        self.next_id = 0
        self.pending = None  # [msg_id, frame, sent_at, sends]
        self.subscribed = False
        self.commands = 0
        self.acked = 0
        self.next_reading = None

    def _id(self):
        self.next_id = self.next_id % 0xFFFF + 1
        return self.next_id

    def start(self):
        self.uart.write(b"\x00")
        msg_id = self._id()
        self._send(msg_id, F.encode_subscribe("cmd/#", msg_id, 1))

    def _send(self, msg_id, frame):
        """Send a frame that waits for an ACK (one at a time)."""
        self.pending = [msg_id, frame, time.ticks_ms(), 1]
        self.uart.write(frame)

    def publish(self, topic, payload, qos=0):
        if qos and self.pending is None:
            msg_id = self._id()
            self._send(msg_id, F.encode_publish(topic, payload, 1, False, msg_id))
            return True
        if qos:
            return False  # one message in flight at a time: the caller tries again later
        self.uart.write(F.encode_publish(topic, payload))
        return True

    def step(self):
        """One pass: read the UART, handle what came, resend or publish when due. Never blocks."""
        data = self.uart.read()
        if data:
            for event in self.decoder.feed(data):
                if isinstance(event, F.Frame):
                    self._on_frame(event)
                else:
                    self.log("bad input: " + event.reason)
        now = time.ticks_ms()
        pending = self.pending
        if pending is not None and time.ticks_diff(now, pending[2]) >= self.ack_ms:
            if pending[3] >= self.tries:
                self.log("no ack for %d, giving up" % pending[0])
                self.pending = None
            else:
                pending[2] = now
                pending[3] += 1
                self.uart.write(pending[1])
        if self.subscribed and self.pending is None:
            if self.next_reading is None or time.ticks_diff(now, self.next_reading) >= 0:
                self.next_reading = time.ticks_add(now, self.period_ms)
                self.publish(self.topic, self.read_sensor(), 1)

    def _on_frame(self, frame):
        if frame.kind == F.ACK:
            if self.pending is not None and frame.msg_id == self.pending[0]:
                self.pending = None
                if not self.subscribed:
                    self.subscribed = True
                    self.log("subscribed")
                else:
                    self.acked += 1
                    self.log("ack %d" % frame.msg_id)
        elif frame.kind == F.PUBLISH:
            if frame.qos:
                self.uart.write(F.encode_ack(frame.msg_id))
            self._command(frame.topic, bytes(frame.payload).strip())

    def _command(self, topic, payload):
        if not topic.startswith("cmd/"):
            return
        state = command(self, topic[4:], payload)
        if state is not None:
            self.publish(topic[4:], state)

    def run(self, until=None, sleep_ms=10):
        """Loop forever, or until `until(self)` is true."""
        self.start()
        while until is None or not until(self):
            self.step()
            time.sleep_ms(sleep_ms)


def command(target, name, payload):
    """Obey command NAME (shared with wifi.py): "period" sets target.period_ms; an actuator's name sets
    it from 1/on/true or 0/off/false. Returns the state to publish back (b"on"/b"off"), or None.
    `target` has period_ms, actuators, log and a `commands` count."""
    target.commands += 1
    if name == "period":
        try:
            target.period_ms = int(payload)
        except ValueError:
            target.log("bad period " + repr(payload))
        return None
    actuator = target.actuators.get(name)
    if actuator is None:
        target.log("no actuator " + name)
        return None
    if payload in ON:
        actuator.value(1)
    elif payload in OFF:
        actuator.value(0)
    else:
        target.log("bad command " + repr(payload))
        return None
    target.log("%s %d" % (name, actuator.value()))
    return b"on" if actuator.value() else b"off"


def main(until=None):
    """The board's entry point (main.py calls it). Edit the pins for your board. `until` (a test's
    stop condition) is as for Node.run."""
    from machine import ADC, UART, Pin

    uart = UART(1, baudrate=115200)
    led = Pin(2, Pin.OUT)
    adc = ADC(Pin(26))

    def temperature():
        # A TMP36 on the ADC: 10 mV per degree, 500 mV at 0 degrees, 3.3 V full scale.
        millivolts = adc.read_u16() * 3300 // 65535
        tenths = millivolts - 500
        sign = "-" if tenths < 0 else ""
        tenths = abs(tenths)
        return ("%s%d.%d" % (sign, tenths // 10, tenths % 10)).encode()

    Node(uart, temperature, {"led": led}, topic="temp", log=print).run(until)
