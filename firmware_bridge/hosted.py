"""Serial ports and GPIO devices hosted in edgebroker's loop: the one entry point the server calls.

`start(server, levels)` is called by edgebroker's Server at start-up when its config has `[[serial]]`
or `[[gpio]]` tables (only then is firmware_bridge imported). It uses the server's hosting interface
(add_reader/add_writer, add_timer, add_flusher, wake/add_wake_handler, add_service), the core's local
clients (broker.attach_local) and the core's `sys_providers` for $SYS, and registers one service the
server stops at exit and reloads on SIGHUP. Nothing here imports edgebroker.
"""
from typing import Any, Dict

from .ports import DeviceError, Log, Port

__all__ = ["start", "Service", "DeviceError"]


class Service:
    """The serial ports (and GPIO devices) of one server."""

    def __init__(self, server: Any, log: Log) -> None:
        self.server = server
        self.log = log
        self.ports: Dict[Any, Port] = {}   # SerialPort settings -> Port
        self.gpio: Any = None

    def __repr__(self) -> str:
        return "firmware_bridge"

    def start(self, config: Any, now: float, missing_is_error: bool = True) -> None:
        broker = self.server.broker
        for settings in config.serial:
            port = Port(settings, self.server, broker.attach_local, broker.detach_local, self.log)
            self.ports[settings] = port
            try:
                port.start(now, missing_is_error and settings.on_missing == "error")
            except DeviceError:
                self.stop()
                raise
        if config.gpio:
            from .gpio import Gpio  # gpiozero: loaded only when pins are configured

            self.gpio = Gpio(config.gpio, self.server, broker.attach_local, broker.detach_local, self.log)
            try:
                self.gpio.start(missing_is_error)
            except DeviceError:
                self.stop()
                raise

    def timer(self, now: float) -> float:
        due = float("inf")
        for port in self.ports.values():
            when = port.timer(now)
            if when < due:
                due = when
        return due

    def flush(self, now: float) -> None:
        for port in self.ports.values():
            port.flush(now)

    def sys_values(self) -> Dict[str, str]:
        values: Dict[str, str] = {}
        for port in self.ports.values():
            values.update(port.sys_values())
        return values

    def stop(self) -> None:
        ports, self.ports = list(self.ports.values()), {}
        for port in ports:
            port.stop()
        if self.gpio is not None:
            self.gpio.stop()
            self.gpio = None

    def reload(self, config: Any) -> None:
        """Keep ports and devices whose settings did not change; restart the others. A device missing
        at reload is retried in the background (the broker is already running)."""
        import time

        now = time.monotonic()
        keep = {s: p for s, p in self.ports.items() if s in config.serial}
        for settings, port in self.ports.items():
            if settings not in keep:
                port.stop()
        self.ports = keep
        for settings in config.serial:
            if settings not in self.ports:
                port = Port(settings, self.server, self.server.broker.attach_local,
                            self.server.broker.detach_local, self.log)
                self.ports[settings] = port
                port.start(now, False)
        if self.gpio is None or tuple(config.gpio) != self.gpio.devices:
            if self.gpio is not None:
                self.gpio.stop()
                self.gpio = None
            if config.gpio:
                from .gpio import Gpio

                self.gpio = Gpio(config.gpio, self.server, self.server.broker.attach_local,
                                 self.server.broker.detach_local, self.log)
                self.gpio.start(False)


def start(server: Any, levels: Dict[str, Any]) -> Service:
    """Open the configured ports and devices and hook them into the server's loop. Raises DeviceError
    (naming file and line) for a device missing at start whose table says on_missing = "error"."""
    import time

    service = Service(server, Log(server.log, levels))
    service.start(server.config, time.monotonic())
    server.add_timer(service.timer)
    server.add_flusher(service.flush)
    server.broker.sys_providers.append(service.sys_values)
    server.add_service(service)
    return service

