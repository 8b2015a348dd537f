"""The schema of serial ports (`[[serial]]`) and GPIO devices (`[[gpio]]`): typed, validated values.

Part of the configuration (Config.serial, Config.gpio), in a module of its own so config.py stays
small. Values are checked on construction, like Config's: a ConfigError names the option, and the
file reader adds the file and line. `where` ("file:line" of the table) is not an option: the reader
sets it so a device that fails at start (a port that does not exist) is reported where it was
configured. firmware_bridge, which hosts them in the loop, reads these objects by attribute and never
imports edgebroker.
"""
from __future__ import annotations

import os

from .errors import ConfigError
from .record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Tuple, Union

__all__ = ["SerialPort", "GpioDevice", "SERIAL_FORMATS", "ON_MISSING", "GPIO_INPUTS", "GPIO_OUTPUTS",
           "SERIAL_FIELDS", "GPIO_FIELDS"]

#: `line`: TOPIC PAYLOAD; `kv`: key=value pairs; `json`: an object per line, one publish per key;
#: `json-object`: the whole object on one topic; `frame`: COBS + CRC binary frames (docs/serial-protocol.md).
SERIAL_FORMATS = ("line", "kv", "json", "json-object", "frame")
#: What to do when a device is missing at start: refuse to start, or retry in the background.
ON_MISSING = ("error", "retry")
GPIO_INPUTS = ("Button", "MotionSensor", "DigitalInputDevice")
GPIO_OUTPUTS = ("LED", "OutputDevice", "PWMOutputDevice")


def _topic_name_problem(topic: str) -> Optional[str]:
    if not topic or "\0" in topic:
        return "must be a non-empty topic without NUL"
    if "+" in topic or "#" in topic:
        return "must not contain wildcards (+ or #)"
    if len(topic.encode("utf-8", "surrogatepass")) > 65535:
        return "too long for an MQTT topic"
    return None


def _topic_filter_problem(topic_filter: str) -> Optional[str]:
    if not topic_filter or "\0" in topic_filter:
        return "must be a non-empty topic filter without NUL"
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return f"{topic_filter!r}: # must be a whole level and the last one"
        if "+" in level and level != "+":
            return f"{topic_filter!r}: + must be a whole level"
    return None


def _check_topic(value: Optional[str], option: str) -> None:
    if value is not None:
        problem = _topic_name_problem(value)
        if problem:
            raise ConfigError(problem, option=option)


@record
class SerialPort:
    """One serial port whose lines or frames become publishes (`[[serial]]`)."""
    #: The device: a path such as /dev/serial/by-id/usb-...-port0 (a udev symlink, followed at every
    #: open, so a replugged adapter is found under the same name), /dev/ttyUSB0, /dev/serial0.
    port: str
    #: Line speed, bits per second. Default 115200 (what most boards print at).
    baudrate: int = 115200
    #: One of SERIAL_FORMATS. Default "line" (`TOPIC PAYLOAD`).
    format: str = "line"
    #: Prepended to every topic the board sends. Default "serial/NAME/".
    topic_prefix: Optional[str] = None
    #: Names the port in $SYS, logs and the default client id and prefix. Default: the device's file
    #: name (ttyUSB0), which is also what /dev/serial/by-id names are reduced to.
    name: Optional[str] = None
    #: The client id it publishes as (ACLs see it). Default "serial-NAME".
    client_id: Optional[str] = None
    #: The username the ACL file's rules for this port name (acl_file `user` lines); None = anonymous
    #: (the ACL's general rules and `pattern` lines with %c apply).
    username: Optional[str] = None
    #: QoS of its publishes (a frame may ask for QoS 1 itself). Default 0.
    qos: int = 0
    #: Publish retained (a frame may ask for it itself). Default false.
    retain: bool = False
    #: Topic filters whose messages are written to the board (downlink), e.g. ["sensors/uart0/cmd/#"].
    command_topics: Tuple[str, ...] = ()
    #: QoS of the command subscriptions (0 or 1; 1 is acknowledged by the board in the frame format).
    command_qos: int = 0
    #: Longest line (terminator excluded) or encoded frame accepted, in bytes; longer ones are dropped
    #: and counted. Default 1024: a reading is tens of bytes, and it bounds what noise can make us hold.
    max_length: int = 1024
    #: When the device is missing at start: "error" (the broker does not start, naming the port) or
    #: "retry" (it starts, reports the port offline and keeps trying). Default "error".
    on_missing: str = "error"
    #: Retained "online"/"offline" as the port opens and closes. Default TOPIC_PREFIX + "status".
    status_topic: Optional[str] = None
    #: Seconds before the first attempt to reopen a lost port; doubled after each failure.
    reopen_delay: float = 1.0
    #: The longest wait between attempts, in seconds.
    reopen_delay_max: float = 30.0
    #: Seconds the broker waits for a board's ACK of a QoS 1 command frame before sending it again (3
    #: times at most).
    ack_timeout: float = 2.0
    #: Not an option: "file:line" of the table, for errors at start.
    where: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.port or "\0" in self.port:
            raise ConfigError("must be a device path", option="port")
        if not 50 <= self.baudrate <= 4_000_000:
            raise ConfigError(f"must be 50-4000000, got {self.baudrate}", option="baudrate")
        if self.format not in SERIAL_FORMATS:
            raise ConfigError(f"must be one of {', '.join(SERIAL_FORMATS)}, got {self.format!r}", option="format")
        if self.name is not None and (not self.name or "/" in self.name or "+" in self.name or "#" in self.name):
            raise ConfigError("must be a non-empty name without /, + or #", option="name")
        _check_topic(self.topic_prefix, "topic_prefix")
        if self.topic_prefix is not None and self.topic_prefix.startswith("$"):
            raise ConfigError("must not start with $ (those topics are the broker's)", option="topic_prefix")
        _check_topic(self.status_topic, "status_topic")
        if self.client_id is not None and (not self.client_id or "\0" in self.client_id):
            raise ConfigError("must be a non-empty client id", option="client_id")
        for option in ("qos", "command_qos"):
            if getattr(self, option) not in (0, 1, 2):
                raise ConfigError(f"must be 0, 1 or 2, got {getattr(self, option)}", option=option)
        for topic_filter in self.command_topics:
            problem = _topic_filter_problem(topic_filter)
            if problem:
                raise ConfigError(problem, option="command_topics")
        if not 8 <= self.max_length <= 65536:
            raise ConfigError(f"must be 8-65536 bytes, got {self.max_length}", option="max_length")
        if self.on_missing not in ON_MISSING:
            raise ConfigError(f"must be one of {', '.join(ON_MISSING)}, got {self.on_missing!r}", option="on_missing")
        for option in ("reopen_delay", "reopen_delay_max", "ack_timeout"):
            if getattr(self, option) <= 0:
                raise ConfigError("must be more than 0 seconds", option=option)
        if self.reopen_delay_max < self.reopen_delay:
            raise ConfigError("must be at least reopen_delay", option="reopen_delay_max")

    @property
    def label(self) -> str:
        return self.name or os.path.basename(self.port.rstrip("/")) or self.port

    @property
    def prefix(self) -> str:
        return self.topic_prefix if self.topic_prefix is not None else f"serial/{self.label}/"

    @property
    def client(self) -> str:
        return self.client_id or f"serial-{self.label}"

    @property
    def status(self) -> str:
        return self.status_topic or self.prefix + "status"


@record
class GpioDevice:
    """One GPIO device through gpiozero (`[[gpio]]`): an input publishing its state and events, or an
    output following a command topic."""
    #: gpiozero's pin: a BCM number (17) or a name ("GPIO17", "BOARD11").
    pin: Union[int, str]
    #: The gpiozero class: one of GPIO_INPUTS or GPIO_OUTPUTS.
    device: str
    #: State topic: an input publishes "1"/"0" there, retained, and events on TOPIC/event; an output
    #: publishes its value there, retained, after each change.
    topic: str
    #: Where an output takes commands: "1"/"on"/"true", "0"/"off"/"false", "toggle", or for
    #: PWMOutputDevice a value 0.0-1.0. Default TOPIC + "/set".
    command_topic: Optional[str] = None
    #: QoS of its publishes and of the command subscription.
    qos: int = 0
    #: Inputs: pull-up (true, gpiozero's default for Button) or pull-down (false); None = the device's default.
    pull_up: Optional[bool] = None
    #: Inputs: seconds of debounce; None = none.
    bounce_time: Optional[float] = None
    #: Outputs: true when a high pin means on (gpiozero's default).
    active_high: bool = True
    #: Outputs: the value at start (0 or 1; 0.0-1.0 for PWM).
    initial_value: float = 0.0
    #: Not an option: "file:line" of the table.
    where: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.pin, bool) or not isinstance(self.pin, (int, str)) or self.pin == "" or (
                isinstance(self.pin, int) and self.pin < 0):
            raise ConfigError("must be a pin number or a name such as \"GPIO17\"", option="pin")
        if self.device not in GPIO_INPUTS + GPIO_OUTPUTS:
            raise ConfigError(f"must be one of {', '.join(GPIO_INPUTS + GPIO_OUTPUTS)}, got {self.device!r}",
                              option="device")
        _check_topic(self.topic, "topic")
        _check_topic(self.command_topic, "command_topic")
        if self.command_topic is not None and self.device in GPIO_INPUTS:
            raise ConfigError(f"an input ({self.device}) takes no commands", option="command_topic")
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"must be 0, 1 or 2, got {self.qos}", option="qos")
        if self.bounce_time is not None and self.bounce_time <= 0:
            raise ConfigError("must be more than 0 seconds", option="bounce_time")
        if not 0.0 <= self.initial_value <= 1.0:
            raise ConfigError("must be 0-1", option="initial_value")

    @property
    def is_input(self) -> bool:
        return self.device in GPIO_INPUTS

    @property
    def commands(self) -> str:
        return self.command_topic or self.topic + "/set"


#: Option name -> kind, for the file reader ("strs": an array of strings; "pin": int or str).
SERIAL_FIELDS = {
    "port": "str", "baudrate": "int", "format": "str", "topic_prefix": "str", "name": "str",
    "client_id": "str", "username": "str", "qos": "int", "retain": "bool", "command_topics": "strs", "command_qos": "int",
    "max_length": "int", "on_missing": "str", "status_topic": "str", "reopen_delay": "float",
    "reopen_delay_max": "float", "ack_timeout": "float",
}
GPIO_FIELDS = {
    "pin": "pin", "device": "str", "topic": "str", "command_topic": "str", "qos": "int", "pull_up": "bool",
    "bounce_time": "float", "active_high": "bool", "initial_value": "float",
}
