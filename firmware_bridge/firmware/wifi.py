"""The Wi-Fi variant of the board code: publish straight to the broker with umqtt, no UART.

For boards with Wi-Fi (ESP32, Pico W). Needs MicroPython's MQTT client from micropython-lib
(`mpremote mip install umqtt.robust`, which brings umqtt.simple; umqtt.simple alone works too, without
reconnecting by itself), and node.py and frames.py beside it. Same topics as the serial node (node.py): the reading on PREFIX + "temp" at
QoS 1 every period, commands on PREFIX + "cmd/NAME" (1/on/true, 0/off/false; "cmd/period" in ms), the
actuator's state published back on PREFIX + NAME, and "online"/"offline" (the will) on PREFIX +
"status", retained.

Tested under MicroPython 1.27 (tests/test_firmware.py) with stand-ins for `network` and for umqtt's
MQTTClient, which no package registry the tests can install from carries: what is checked is this
file's logic, not umqtt against a broker.
"""
import time

import node  # the commands, shared with the serial node (node.py needs frames.py beside it)


def _client_class():
    try:
        from umqtt.robust import MQTTClient  # reconnects by itself
    except ImportError:
        from umqtt.simple import MQTTClient
    return MQTTClient


class WifiNode:
    def __init__(self, client, read_sensor, actuators=None, prefix="sensors/board1/", period_ms=5000, log=None):
        self.client = client
        self.read_sensor = read_sensor
        self.actuators = actuators or {}
        self.prefix = prefix
        self.period_ms = period_ms
        self.log = log or (lambda message: None)
        self.commands = 0
        self.published = 0
        self.next_reading = None

    def start(self):
        status = (self.prefix + "status").encode()
        self.client.set_last_will(status, b"offline", True, 1)
        self.client.set_callback(self._on_message)
        self.client.connect()
        self.client.publish(status, b"online", True, 1)
        self.client.subscribe((self.prefix + "cmd/#").encode(), 1)

    def step(self):
        self.client.check_msg()  # handles at most what has arrived; does not block
        now = time.ticks_ms()
        if self.next_reading is None or time.ticks_diff(now, self.next_reading) >= 0:
            self.next_reading = time.ticks_add(now, self.period_ms)
            self.client.publish((self.prefix + "temp").encode(), self.read_sensor(), False, 1)
            self.published += 1

    def _on_message(self, topic, payload):
        topic = topic.decode() if isinstance(topic, bytes) else topic
        payload = bytes(payload).strip()
        prefix = self.prefix + "cmd/"
        if not topic.startswith(prefix):
            return
        name = topic[len(prefix):]
        state = node.command(self, name, payload)
        if state is not None:
            self.client.publish((self.prefix + name).encode(), state, True, 0)

    def run(self, until=None, sleep_ms=50):
        self.start()
        while until is None or not until(self):
            self.step()
            time.sleep_ms(sleep_ms)


def connect_wifi(ssid, password, timeout_ms=20000):
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(ssid, password)
        start = time.ticks_ms()
        while not wlan.isconnected():
            if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
                raise OSError("Wi-Fi: not connected after %d ms" % timeout_ms)
            time.sleep_ms(100)
    return wlan


def main(ssid, password, broker, client_id="board1", prefix="sensors/board1/", until=None):
    """Entry point for a Wi-Fi board's main.py: `import wifi; wifi.main("ssid", "password", "192.168.1.10")`.
    Edit the pins for your board."""
    from machine import ADC, Pin

    connect_wifi(ssid, password)
    led = Pin(2, Pin.OUT)
    adc = ADC(Pin(26))

    def temperature():
        millivolts = adc.read_u16() * 3300 // 65535  # a TMP36, as in node.py
        tenths = millivolts - 500
        sign = "-" if tenths < 0 else ""
        tenths = abs(tenths)
        return ("%s%d.%d" % (sign, tenths // 10, tenths % 10)).encode()

    client = _client_class()(client_id, broker, keepalive=60)
    WifiNode(client, temperature, {"led": led}, prefix=prefix, log=print).run(until)
