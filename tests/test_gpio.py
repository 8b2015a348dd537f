"""GPIO through gpiozero in the broker's loop, with gpiozero's MockFactory (GPIOZERO_PIN_FACTORY=mock):
the one mock of the suite, since no real pin exists here. MQTT side: mosquitto_sub / mosquitto_pub.

gpiozero's mock pins call back synchronously in the thread that drives them, which would hide a
threading bug (a callback touching the core directly would work here and break on a Pi). So the tests
drive the pins from a thread of their own, and check the publish still happens on the loop's thread,
through the queue and the wake-up socketpair.
"""
from __future__ import annotations

import threading

import pytest

from edgebroker.devices import GpioDevice
from edgebroker.errors import ConfigError
from edgebroker.configfile import load_config
from edgebroker.server import Server
from test_mosquitto_clients import hp, procs, pub  # noqa: F401 (procs is a fixture)
from util import wait_for


@pytest.fixture(autouse=True)
def mock_pins(monkeypatch):
    from gpiozero import Device

    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    monkeypatch.setenv("GPIOZERO_MOCK_PIN_CLASS", "mockpwmpin")  # PWMOutputDevice needs PWM-capable pins
    Device.pin_factory = None  # chosen anew from the environment by the first device
    yield
    if Device.pin_factory is not None:
        Device.pin_factory.close()
    Device.pin_factory = None


def pin(number):
    from gpiozero import Device

    return Device.pin_factory.pin(number)


def in_thread(fn):
    """Run fn on a new thread (as gpiozero's callback thread would be) and wait for it."""
    t = threading.Thread(target=fn, name="gpio-callback")
    t.start()
    t.join(10)


def gpio_of(broker):
    (service,) = [s for s in broker.server._services if repr(s) == "firmware_bridge"]
    return service.gpio


def test_button_state_retained_and_events_through_the_loop(make_broker, procs):
    broker = make_broker(gpio=(GpioDevice(pin=17, device="Button", topic="pi/button"),))
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "pi/button/#")  # also matches pi/button
    assert sub.next_line() == b"pi/button 0\n"  # retained state at start: released
    gpio = gpio_of(broker)
    threads = []
    original = gpio._publish

    def recording(*args):
        threads.append(threading.current_thread().name)
        original(*args)
    gpio._publish = recording
    in_thread(pin(17).drive_low)  # pressed (pull-up: low is active)
    assert sub.next_line() == b"pi/button 1\n"
    assert sub.next_line() == b"pi/button/event pressed\n"
    in_thread(pin(17).drive_high)
    assert sub.next_line() == b"pi/button 0\n"
    assert sub.next_line() == b"pi/button/event released\n"
    # Published on the loop's thread, never on the callback's.
    assert set(threads) == {"edgebroker"}
    # Retained: a later subscriber learns the state.
    late = procs("mosquitto_sub", *hp(broker), "-v", "-C", "1", "-t", "pi/button")
    assert late.next_line() == b"pi/button 0\n"


def test_many_callbacks_from_several_threads_arrive_in_order_per_pin(make_broker, procs):
    broker = make_broker(gpio=(GpioDevice(pin=5, device="Button", topic="pi/b"),
                               GpioDevice(pin=6, device="DigitalInputDevice", topic="pi/door")))
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "pi/b/#", "-t", "pi/door/#")
    # The retained states say the subscriber is in place.
    assert sorted(sub.next_line() for _ in range(2)) == [b"pi/b 0\n", b"pi/door 0\n"]

    def toggle(p, first, second, times):
        for _ in range(times):
            getattr(p, first)()
            getattr(p, second)()
    threads = [threading.Thread(target=toggle, args=(pin(5), "drive_low", "drive_high", 50)),
               threading.Thread(target=toggle, args=(pin(6), "drive_high", "drive_low", 50))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    lines = [sub.next_line() for _ in range(400)]  # each change: state and event
    button = [line for line in lines if line.startswith(b"pi/b/event")]
    door = [line for line in lines if line.startswith(b"pi/door/event")]
    assert lines.count(b"pi/b 1\n") == lines.count(b"pi/door 1\n") == 50
    assert button == [b"pi/b/event pressed\n", b"pi/b/event released\n"] * 50
    # DigitalInputDevice defaults to pull_up False: high is active.
    assert door == [b"pi/door/event active\n", b"pi/door/event inactive\n"] * 50


def test_motion_sensor_calls_back_from_gpiozeros_own_thread(make_broker, procs):
    # MotionSensor samples its pin in a thread of gpiozero's (a smoothed input), as a Pi's callbacks do.
    broker = make_broker(gpio=(GpioDevice(pin=4, device="MotionSensor", topic="pi/pir"),))
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "pi/pir/#")
    assert sub.next_line() == b"pi/pir 0\n"
    pin(4).drive_high()
    assert sub.next_line() == b"pi/pir 1\n"
    assert sub.next_line() == b"pi/pir/event motion\n"
    pin(4).drive_low()
    assert sub.next_line() == b"pi/pir 0\n"
    assert sub.next_line() == b"pi/pir/event no_motion\n"


@pytest.mark.parametrize("device, commands, values, states", [
    ("LED", ["on", "off", "toggle", "1"], [True, False, True, True], [b"1", b"0", b"1", b"1"]),
    ("OutputDevice", ["true", "0"], [True, False], [b"1", b"0"]),
    ("PWMOutputDevice", ["0.25", "1", "off"], [0.25, 1.0, 0.0], [b"0.25", b"1", b"0"]),
])
def test_outputs_follow_their_command_topic(make_broker, procs, device, commands, values, states):
    broker = make_broker(gpio=(GpioDevice(pin=18, device=device, topic="pi/out"),))
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "pi/out")
    assert sub.next_line() == b"pi/out 0\n"
    gpio = gpio_of(broker)
    (_, out) = gpio._outputs["pi/out/set"]
    for command, value, state in zip(commands, values, states):
        pub(broker, "-t", "pi/out/set", "-m", command)
        assert sub.next_line() == b"pi/out " + state + b"\n"
        assert out.value == value
    pub(broker, "-t", "pi/out/set", "-m", "sideways")  # refused, logged: nothing changes
    pub(broker, "-t", "pi/out/set", "-m", "0")
    assert sub.next_line() == b"pi/out 0\n"


def test_active_low_led_drives_the_pin_low(make_broker):
    broker = make_broker(gpio=(GpioDevice(pin=23, device="LED", topic="pi/led", active_high=False),))
    pub(broker, "-t", "pi/led/set", "-m", "on")
    wait_for(lambda: pin(23).state == 0, what="the pin to go low")
    assert gpio_of(broker)._outputs["pi/led/set"][1].value


def test_gpio_config_and_bad_pin_is_an_error_at_start(tmp_path):
    conf = tmp_path / "g.toml"
    conf.write_text('persistence = false\n\n[[listener]]\nport = 0\naddress = "127.0.0.1"\n\n'
                    '[[gpio]]\npin = 17\ndevice = "Button"\ntopic = "pi/b"\n\n'
                    '[[gpio]]\npin = "GPIO99"\ndevice = "LED"\ntopic = "pi/led"\n')
    config = load_config(str(conf)).config
    assert [d.pin for d in config.gpio] == [17, "GPIO99"]
    with pytest.raises(ConfigError) as info:
        Server(config)
    assert f"{conf}:12:" in str(info.value) and "GPIO99" in str(info.value)


@pytest.mark.parametrize("table, message", [
    ('pin = 17\ndevice = "Relay"\ntopic = "t"\n', "device: must be one of Button"),
    ('pin = 17\ndevice = "Button"\ntopic = "t/#"\n', "topic: must not contain wildcards"),
    ('pin = 17\ndevice = "Button"\ntopic = "t"\ncommand_topic = "t/set"\n', "takes no commands"),
    ('pin = 17\ndevice = "LED"\n', "[[gpio]] needs topic"),
    ('pin = true\ndevice = "LED"\ntopic = "t"\n', "pin: expected a pin number or name"),
])
def test_gpio_config_errors(tmp_path, table, message):
    conf = tmp_path / "g.toml"
    conf.write_text("[[gpio]]\n" + table)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        load_config(str(conf))
    assert str(info.value).startswith(f"{conf}:")
