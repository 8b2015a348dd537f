"""GPIO pins of the gateway through gpiozero, hosted in a broker's loop.

Inputs (Button, MotionSensor, DigitalInputDevice) publish their state, retained, on their topic ("1"
active, "0" inactive) and each change as an event on TOPIC/event ("pressed"/"released",
"motion"/"no_motion", "active"/"inactive"). Outputs (LED, OutputDevice, PWMOutputDevice) follow their
command topic ("1"/"on"/"true", "0"/"off"/"false", "toggle"; a PWM value 0.0-1.0) and publish the value
they took on their topic, retained.

Threads: gpiozero calls `when_activated`/`when_deactivated` from its own threads on a Pi (lgpio's or
RPi.GPIO's callback thread), so those callbacks do nothing but put (device, state) in a
queue.SimpleQueue and call `host.wake()`, which writes a byte to the loop's socketpair; the loop then
runs `_drain` on its own thread, which publishes. The core is only ever touched by the loop's thread.
(gpiozero's MockFactory calls back synchronously in the thread that drives the pin; the tests drive it
from another thread to exercise the handoff.) gpiozero picks its pin factory itself (lgpio on a Pi 5;
GPIOZERO_PIN_FACTORY overrides it).
"""
import queue
from typing import Any, Callable, Dict, List, Optional

from .ports import DeviceError, Log

__all__ = ["Gpio", "CLIENT_ID"]

#: The client id GPIO devices publish as.
CLIENT_ID = "gpio"

_EVENTS = {"Button": ("pressed", "released"), "MotionSensor": ("motion", "no_motion"),
           "DigitalInputDevice": ("active", "inactive")}
_ON = {b"1", b"on", b"true", b"ON", b"On", b"TRUE", b"True"}
_OFF = {b"0", b"off", b"false", b"OFF", b"Off", b"FALSE", b"False"}


class Gpio:
    """The `[[gpio]]` devices of one server. `devices` are edgebroker.devices GpioDevice values."""

    def __init__(self, devices: Any, host: Any, attach: Callable, detach: Callable, log: Log) -> None:
        self.devices = tuple(devices)
        self.host = host
        self.log = log
        self._detach = detach
        self._queue: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._objects: List[Any] = []          # gpiozero devices, to close
        self._outputs: Dict[str, Any] = {}     # command topic -> (settings, gpiozero device)
        self.client = attach(CLIENT_ID, self._on_message)
        self._handler_added = False

    def start(self, missing_is_error: bool) -> None:
        import gpiozero  # only when pins are configured

        self.host.add_wake_handler(self._drain)
        self._handler_added = True
        for settings in self.devices:
            try:
                device = self._make(gpiozero, settings)
            except (gpiozero.GPIOZeroError, ValueError, OSError, ImportError) as exc:
                where = f"{settings.where}: " if settings.where else ""
                message = f"{where}gpio pin {settings.pin} ({settings.device}): {exc or exc.__class__.__name__}"
                if missing_is_error:
                    raise DeviceError(message) from None
                self.log("error", f"Error: {message}; this device is left out.")
                continue
            self._objects.append(device)
            if settings.is_input:
                self._publish_state(settings, 1 if device.is_active else 0)
            else:
                self._outputs[settings.commands] = (settings, device)
                self.client.subscribe(settings.commands, min(settings.qos, 1))
                self._publish_state(settings, device.value)

    def _make(self, gpiozero: Any, settings: Any) -> Any:
        cls = getattr(gpiozero, settings.device)
        if settings.is_input:
            kwargs: Dict[str, Any] = {}
            if settings.pull_up is not None:
                kwargs["pull_up"] = settings.pull_up
            if settings.bounce_time is not None:
                kwargs["bounce_time"] = settings.bounce_time
            device = cls(settings.pin, **kwargs)
            # On gpiozero's thread: hand over, nothing more.
            device.when_activated = lambda s=settings: self._handover(s, 1)
            device.when_deactivated = lambda s=settings: self._handover(s, 0)
            return device
        value: Any = settings.initial_value
        if settings.device != "PWMOutputDevice":
            value = bool(value)
        return cls(settings.pin, active_high=settings.active_high, initial_value=value)

    def _handover(self, settings: Any, state: int) -> None:
        """Any thread: queue the change and wake the loop."""
        self._queue.put((settings, state))
        self.host.wake()

    def _drain(self, now: float) -> None:
        """The loop's thread: publish the changes gpiozero's threads queued."""
        while True:
            try:
                settings, state = self._queue.get_nowait()
            except queue.Empty:
                return
            self._publish_state(settings, state)
            event = _EVENTS[settings.device][0 if state else 1]
            self._publish(settings.topic + "/event", event.encode(), settings.qos, False)

    def _publish_state(self, settings: Any, value: Any) -> None:
        text = str(int(value)) if settings.device != "PWMOutputDevice" else "%g" % value
        self._publish(settings.topic, text.encode(), settings.qos, True)

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        try:
            self.client.publish(topic, payload, qos, retain)
        except ValueError as exc:
            self.log("warning", f"Warning: gpio: not published on {topic}: {exc}")

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        entry = self._outputs.get(topic)
        if entry is None:
            return
        settings, device = entry
        value = _command_value(settings.device, bytes(payload).strip(), device.value)
        if value is None:
            self.log("warning", f"Warning: gpio pin {settings.pin}: command {bytes(payload)[:40]!r} on {topic} "
                                "is not 1/on/true, 0/off/false, toggle" +
                                (" or 0.0-1.0" if settings.device == "PWMOutputDevice" else ""))
            return
        device.value = value
        self._publish_state(settings, device.value)

    def stop(self) -> None:
        if self._handler_added:
            self.host.remove_wake_handler(self._drain)
            self._handler_added = False
        for device in self._objects:
            try:
                device.close()
            except Exception:  # a pin that cannot be released must not stop the broker's exit
                pass
        self._objects = []
        self._outputs = {}
        self._detach(self.client)


def _command_value(kind: str, text: bytes, current: Any) -> Optional[Any]:
    if text in _ON:
        return 1.0 if kind == "PWMOutputDevice" else True
    if text in _OFF:
        return 0.0 if kind == "PWMOutputDevice" else False
    if text.lower() == b"toggle":
        if kind == "PWMOutputDevice":
            return 0.0 if current else 1.0
        return not current
    if kind == "PWMOutputDevice":
        try:
            value = float(text)
        except ValueError:
            return None
        return value if 0.0 <= value <= 1.0 else None
    return None
