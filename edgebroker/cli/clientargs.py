"""Command-line options shared by edgebroker-pub and edgebroker-sub, parsed as mosquitto_pub/sub do.

Theory of operation: users type the commands of mosquitto_pub(1) and mosquitto_sub(1) with the tool
name changed, so the options are read the way Mosquitto's client_shared.c reads them rather than with
argparse: each option is one exact word, its value is always the next word (even one starting with
"-", as in `-m -5`), numbers go through C's atoi, and a bad command line prints Mosquitto's error text,
then "Use '<tool> --help' to see usage.", and exits 1. `parse()` returns an `Options` or raises
`UsageError`; `--help` and `--version` raise `HelpRequested` / `VersionRequested` (both exit 1, as
Mosquitto's tools do).

What Mosquitto's tools accept and we do not (TLS engines and PSK, SOCKS proxy, MQTT 5 properties,
options files) is refused with a message that says so, never silently ignored.
"""
from __future__ import annotations

import os

from ..codec import valid_topic_filter, valid_topic_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, Optional

__all__ = ["TLS_HELP", "Options", "UsageError", "HelpRequested", "VersionRequested", "parse", "atoi", "PUB", "SUB",
           "MSGMODE_CMD", "MSGMODE_FILE", "MSGMODE_STDIN_LINE", "MSGMODE_STDIN_FILE", "MSGMODE_NULL"]

PUB = "pub"
SUB = "sub"

MSGMODE_CMD = "-m"
MSGMODE_FILE = "-f"
MSGMODE_STDIN_LINE = "-l"
MSGMODE_STDIN_FILE = "-s"
MSGMODE_NULL = "-n"

#: The TLS part of both tools' --help (mosquitto_pub's wording where the options are the same).
TLS_HELP = """ --cafile : path to a file containing trusted CA certificates to enable encrypted
            communication.
 --capath : path to a directory containing trusted CA certificates to enable encrypted
            communication.
 --cert : client certificate for authentication, if required by server.
 --key : client private key for authentication, if required by server.
 --ciphers : openssl compatible list of TLS ciphers to support (TLS 1.2).
 --tls-alpn : TLS application layer protocol to offer, e.g. mqtt.
 --tls-version : lowest TLS protocol version, can be one of tlsv1.3 tlsv1.2 or tlsv1.1.
                 Defaults to tlsv1.2.
 --tls-use-os-certs : load and trust the CA certificates of the operating system.
 --insecure : do not check that the server certificate hostname matches the remote
              hostname (the certificate itself is still verified). Do not use this option
              in a production environment.
"""

#: Largest payload a PUBLISH can carry (remaining length limit), Mosquitto's MQTT_MAX_PAYLOAD.
MQTT_MAX_PAYLOAD = 268435455


class UsageError(Exception):
    """A bad command line. `text` is printed to stderr as is (Mosquitto's messages end with one or
    two newlines); `hint` adds "Use '<tool> --help' to see usage."."""

    def __init__(self, text: str, hint: bool = True) -> None:
        super().__init__(text)
        self.text = text
        self.hint = hint


class HelpRequested(Exception):
    pass


class VersionRequested(Exception):
    pass


class Options:
    """Everything the command line says (Mosquitto's struct mosq_config); defaults as Mosquitto's.
    A plain class, not a dataclass: importing dataclasses costs a short-lived tool ~10 ms."""

    def __init__(self, tool: str = "sub") -> None:
        self.tool = tool
        self.host: Optional[str] = None
        self.port: Optional[int] = None  # None: 1883
        self.unix_path: Optional[str] = None
        self.bind_address: Optional[str] = None
        self.nodelay: bool = False
        self.client_id: Optional[str] = None
        self.id_prefix: Optional[str] = None
        self.keepalive: int = 60
        self.clean_session: bool = True
        self.protocol_level: int = 4
        self.username: Optional[str] = None
        self.password: Optional[bytes] = None
        self.will_topic: Optional[str] = None
        self.will_payload: Optional[bytes] = None
        self.will_qos: int = 0
        self.will_retain: bool = False
        self.debug: bool = False
        self.quiet: bool = False
        self.qos: int = 0
        # edgebroker-pub
        self.topic: Optional[str] = None
        self.pub_mode: Optional[str] = None
        self.message: bytes = b""
        self.file_input: Optional[str] = None
        self.retain: bool = False
        self.repeat_count: int = 1
        self.repeat_delay: float = 0.0
        self.max_inflight: int = 20
        # edgebroker-sub
        self.topics: List[str] = []
        self.unsub_topics: List[str] = []
        self.filter_outs: List[str] = []
        self.msg_count: int = 0
        self.no_retain: bool = False
        self.retained_only: bool = False
        self.remove_retained: bool = False
        self.verbose: bool = False
        self.eol: bool = True
        self.format: Optional[str] = None
        self.timeout: int = 0
        self.exit_after_sub: bool = False
        self.random_filter: float = 100.0
        # TLS, as mosquitto_pub/sub: --cafile or --capath (or --tls-use-os-certs) turns it on
        self.cafile: Optional[str] = None
        self.capath: Optional[str] = None
        self.certfile: Optional[str] = None
        self.keyfile: Optional[str] = None
        self.insecure: bool = False
        self.tls_version: Optional[str] = None
        self.ciphers: Optional[str] = None
        self.tls_alpn: Optional[str] = None
        self.tls_use_os_certs: bool = False

    @property
    def tls(self) -> bool:
        """TLS is on: as in Mosquitto's tools, --cert/--key/--insecure alone do not turn it on."""
        return self.cafile is not None or self.capath is not None or self.tls_use_os_certs


def atoi(text: str) -> int:
    """C's atoi: optional blanks and sign, then digits up to the first non-digit; 0 if none."""
    s = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if s[:1] in ("+", "-"):
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    digits = ""
    for ch in s:
        if "0" <= ch <= "9":
            digits += ch
        else:
            break
    return sign * int(digits) if digits else 0


def atof(text: str) -> float:
    """C's atof, near enough: the longest leading part that parses as a float; 0.0 if none."""
    s = text.strip()
    for end in range(len(s), 0, -1):
        try:
            return float(s[:end])
        except ValueError:
            continue
    return 0.0


def _raw(text: str) -> bytes:
    """The bytes the user typed (argv is decoded with surrogateescape)."""
    return os.fsencode(text)


def _filter_arg(topic_filter: str, flag: str, what: str) -> str:
    """A -T or -U topic filter, refused with mosquitto_sub's messages."""
    if not _utf8_ok(topic_filter):
        raise UsageError(f"Error: Malformed UTF-8 in {flag} argument.\n\n")
    if not valid_topic_filter(topic_filter):
        raise UsageError(f"Error: Invalid {what} topic '{topic_filter}', are all '+' and '#' "
                         "wildcards correct?\n")
    return topic_filter


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _spec_step(fmt: str, i: int) -> int:
    """One character further into a -F format specifier, which must not end there (mosquitto_sub's check)."""
    i += 1
    if i == len(fmt) - 1:
        raise UsageError("Error: Incomplete format specifier.\n")
    return i


def check_format(fmt: str) -> None:
    """Mosquitto's check_format(): refuse an -F string with an unknown or incomplete sequence."""
    n = len(fmt)
    i = 0
    while i < n:
        c = fmt[i]
        if c == "%":
            if i == n - 1:
                raise UsageError("Error: Incomplete format specifier.\n")
            if fmt[i + 1] in "0-":
                i = _spec_step(fmt, i)
            while fmt[i + 1] in "0123456789":
                i = _spec_step(fmt, i)
            if fmt[i + 1] == ".":
                i = _spec_step(fmt, i)
                while fmt[i + 1] in "0123456789":
                    i = _spec_step(fmt, i)
            spec = fmt[i + 1]
            if spec == "J":
                raise UsageError("Error: The %J format specifier is not supported yet (use %j).\n")
            if spec not in "%ACDEFIlmPpqRSrtjUxX":
                raise UsageError(f"Error: Invalid format specifier '{spec}'.\n")
            i += 1
        elif c == "@":
            if i == n - 1:
                raise UsageError("Error: Incomplete format specifier.\n")
            i += 1
        elif c == "\\":
            if i == n - 1:
                raise UsageError("Error: Incomplete escape specifier.\n")
            if fmt[i + 1] not in "\\0aenrtv":
                raise UsageError(f"Error: Invalid escape specifier '{fmt[i + 1]}'.\n")
            i += 1
        i += 1


#: Mosquitto options we recognise but do not implement, with the reason given to the user.
_UNSUPPORTED = {
    "--tls-engine": "TLS engines", "--keyform": "TLS engines", "--tls-engine-kpass-sha1": "TLS engines",
    "--psk": "TLS-PSK", "--psk-identity": "TLS-PSK", "--proxy": "SOCKS proxies",
    "-D": "MQTT 5", "--property": "MQTT 5", "-x": "MQTT 5", "--retain-as-published": "MQTT 5",
    "-o": "options files", "--pretty": "pretty JSON output", "--ws": "websockets",
    "-S": "SRV lookups", "-w": "watch mode", "--watch": "watch mode",
}


def _mqtt5_unsupported(tool_name: str) -> UsageError:
    return UsageError(f"Error: MQTT 5 is not supported by {tool_name} yet; use -V mqttv311 or -V mqttv31.\n")


def parse(argv: List[str], tool: str, tool_name: str) -> Options:
    """Options from argv (without the program name), or UsageError / HelpRequested / VersionRequested."""
    o = Options(tool)
    n = len(argv)
    i = 0

    def value(what: str) -> str:
        # "Error: -t argument given but no topic specified." -- the value is the next word, always.
        if i == n - 1:
            raise UsageError(f"Error: {argv[i]} argument given but no {what} specified.\n\n")
        return argv[i + 1]

    def set_mode(mode: str) -> None:
        if o.pub_mode is not None:
            raise UsageError("Error: Only one type of message can be sent at once.\n\n")
        o.pub_mode = mode

    while i < n:
        arg = argv[i]
        only = _OPTION_TOOLS.get(arg)
        if only is not None and tool not in only:
            raise UsageError(f"Error: Unknown option '{arg}'.\n")
        if arg == "-A":
            o.bind_address = value("address")
            i += 1
        elif arg == "-C":
            o.msg_count = atoi(value("count"))
            if o.msg_count < 1:
                raise UsageError(f'Error: Invalid message count "{o.msg_count}".\n\n')
            i += 1
        elif arg in ("-c", "--disable-clean-session"):
            o.clean_session = False
        elif arg in ("-d", "--debug"):
            o.debug = True
        elif arg == "-E":
            o.exit_after_sub = True
        elif arg in ("-f", "--file"):
            if o.pub_mode is not None:
                raise UsageError("Error: Only one type of message can be sent at once.\n\n")
            o.file_input = value("file")
            o.pub_mode = MSGMODE_FILE
            i += 1
        elif arg == "-F":
            o.format = value("format")
            check_format(o.format)
            i += 1
        elif arg == "--help":
            raise HelpRequested()
        elif arg in ("-h", "--host"):
            o.host = value("host")
            i += 1
        elif arg in ("-i", "--id"):
            if o.id_prefix is not None:
                raise UsageError("Error: -i and -I argument cannot be used together.\n\n")
            o.client_id = value("id")
            i += 1
        elif arg in ("-I", "--id-prefix"):
            if o.client_id is not None:
                raise UsageError("Error: -i and -I argument cannot be used together.\n\n")
            o.id_prefix = value("id prefix")
            i += 1
        elif arg in ("-k", "--keepalive"):
            o.keepalive = atoi(value("keepalive"))
            if not 5 <= o.keepalive <= 65535:
                raise UsageError("Error: Invalid keepalive given, it must be between 5 and 65535 "
                                 "inclusive.\n\n")
            i += 1
        elif arg in ("-L", "--url"):
            _parse_url(o, value("URL"), tool, tool_name)
            i += 1
        elif arg in ("-l", "--stdin-line"):
            set_mode(MSGMODE_STDIN_LINE)
        elif arg in ("-m", "--message"):
            if o.pub_mode is not None:
                raise UsageError("Error: Only one type of message can be sent at once.\n\n")
            o.message = _raw(value("message"))
            if len(o.message) > MQTT_MAX_PAYLOAD:
                raise UsageError(f"Error: Message length must be less than {MQTT_MAX_PAYLOAD} bytes.\n\n")
            o.pub_mode = MSGMODE_CMD
            i += 1
        elif arg == "-M":
            if i == n - 1:
                raise UsageError("Error: -M argument given but max_inflight not specified.\n\n")
            o.max_inflight = atoi(argv[i + 1])
            if o.max_inflight < 1:
                raise UsageError("Error: Maximum inflight messages must be greater than 0.\n\n")
            i += 1
        elif arg == "--nodelay":
            o.nodelay = True
        elif arg in ("-n", "--null-message"):
            set_mode(MSGMODE_NULL)
        elif arg == "-N":
            o.eol = False
        elif arg in ("-p", "--port"):
            o.port = atoi(value("port"))
            if not 0 <= o.port <= 65535:
                raise UsageError(f"Error: Invalid port given: {o.port}\n")
            i += 1
        elif arg in ("-P", "--pw"):
            o.password = _raw(value("password"))
            i += 1
        elif arg in ("-q", "--qos"):
            o.qos = atoi(value("QoS"))
            if not 0 <= o.qos <= 2:
                raise UsageError(f"Error: Invalid QoS given: {o.qos}\n")
            i += 1
        elif arg == "--quiet":
            o.quiet = True
        elif arg in ("-r", "--retain"):
            o.retain = True
        elif arg == "-R":
            o.no_retain = True
        elif arg == "--random-filter":
            chance = atof(value("chance"))
            if not 0.1 <= chance <= 100.0:
                raise UsageError("Error: --random-filter chance must be between 0.1-100.0\n\n")
            o.random_filter = chance
            i += 1
        elif arg == "--remove-retained":
            o.remove_retained = True
        elif arg == "--repeat":
            o.repeat_count = atoi(value("count"))
            if o.repeat_count < 1:
                raise UsageError("Error: --repeat argument must be >0.\n\n")
            i += 1
        elif arg == "--repeat-delay":
            o.repeat_delay = atof(value("time"))
            if o.repeat_delay < 0:
                raise UsageError("Error: --repeat-delay argument must be >=0.0.\n\n")
            i += 1
        elif arg == "--retained-only":
            o.retained_only = True
        elif arg in ("-s", "--stdin-file"):
            set_mode(MSGMODE_STDIN_FILE)
        elif arg in ("-t", "--topic"):
            _add_topic(o, value("topic"), tool, "-t")
            i += 1
        elif arg in ("-T", "--filter-out"):
            o.filter_outs.append(_filter_arg(value("topic filter"), "-T", "filter"))
            i += 1
        elif arg in ("-U", "--unsubscribe"):
            o.unsub_topics.append(_filter_arg(value("unsubscribe topic"), "-U", "unsubscribe"))
            i += 1
        elif arg in ("-u", "--username"):
            o.username = value("username")
            i += 1
        elif arg == "--unix":
            o.unix_path = value("socket path")
            i += 1
        elif arg in ("-V", "--protocol-version"):
            if i == n - 1:
                raise UsageError("Error: --protocol-version argument given but no version specified.\n\n")
            version = argv[i + 1]
            if version in ("mqttv31", "31"):
                o.protocol_level = 3
            elif version in ("mqttv311", "311"):
                o.protocol_level = 4
            elif version in ("mqttv5", "5"):
                raise _mqtt5_unsupported(tool_name)
            else:
                raise UsageError("Error: Invalid protocol version argument given.\n\n")
            i += 1
        elif arg in ("-v", "--verbose"):
            o.verbose = True
        elif arg == "--version":
            raise VersionRequested()
        elif arg == "-W":
            o.timeout = atoi(value("timeout"))
            if o.timeout < 1:
                raise UsageError(f'Error: Invalid timeout "{o.timeout}".\n\n')
            i += 1
        elif arg == "--will-payload":
            o.will_payload = _raw(value("will payload"))
            i += 1
        elif arg == "--will-qos":
            o.will_qos = atoi(value("will QoS"))
            if not 0 <= o.will_qos <= 2:
                raise UsageError(f"Error: Invalid will QoS {o.will_qos}.\n\n")
            i += 1
        elif arg == "--will-retain":
            o.will_retain = True
        elif arg == "--will-topic":
            will_topic = value("will topic")
            if not _utf8_ok(will_topic):
                raise UsageError("Error: Malformed UTF-8 in --will-topic argument.\n\n")
            if not valid_topic_name(will_topic):
                raise UsageError(f"Error: Invalid will topic '{will_topic}', does it contain '+' or '#'?\n")
            o.will_topic = will_topic
            i += 1
        elif arg in _TLS_VALUES:
            setattr(o, _TLS_VALUES[arg], value(_TLS_WHAT[arg]))
            i += 1
        elif arg == "--insecure":
            o.insecure = True
        elif arg == "--tls-use-os-certs":
            o.tls_use_os_certs = True
        elif arg in _UNSUPPORTED:
            what = _UNSUPPORTED[arg]
            if what == "MQTT 5":
                raise _mqtt5_unsupported(tool_name)
            raise UsageError(f"Error: {arg}: {what} not supported by {tool_name} yet.\n")
        else:
            raise UsageError(f"Error: Unknown option '{arg}'.\n")
        i += 1

    # Checks on the whole command line, in client_config_load's order.
    if o.will_payload is not None and o.will_topic is None:
        raise UsageError("Error: Will payload given, but no will topic given.\n")
    if o.will_retain and o.will_topic is None:
        raise UsageError("Error: Will retain given, but no will topic given.\n")
    if not o.clean_session and (o.id_prefix is not None or o.client_id is None):
        raise UsageError("Error: You must provide a client id if you are using the -c option.\n")
    if (o.certfile is None) != (o.keyfile is None):
        raise UsageError("Error: Both certfile and keyfile must be provided if one of them is set.\n")
    if tool == SUB and not o.topics and not o.unsub_topics:
        raise UsageError("Error: You must specify a topic to subscribe to.\n")
    if o.host is None:
        o.host = "localhost"
    return o


#: TLS options that take a value: the Options attribute, and the word of Mosquitto's "no ... specified".
_TLS_VALUES = {"--cafile": "cafile", "--capath": "capath", "--cert": "certfile", "--key": "keyfile",
               "--tls-version": "tls_version", "--ciphers": "ciphers", "--tls-alpn": "tls_alpn"}
_TLS_WHAT = {"--cafile": "cafile", "--capath": "capath", "--cert": "certfile", "--key": "keyfile",
             "--tls-version": "version", "--ciphers": "ciphers", "--tls-alpn": "protocol"}


def _add_topic(o: Options, topic: str, tool: str, arg: str) -> None:
    if not _utf8_ok(topic):
        raise UsageError(f"Error: Malformed UTF-8 in {arg} argument.\n\n")
    if tool == PUB:
        if "+" in topic or "#" in topic:
            raise UsageError(f"Error: Invalid publish topic '{topic}', does it contain '+' or '#'?\n")
        o.topic = topic
    else:
        # Mosquitto lets an empty filter through to the broker, which then drops the connection; we
        # refuse it here with the same message as any other invalid filter [MQTT-4.7.3-1].
        if not valid_topic_filter(topic):
            raise UsageError(f"Error: Invalid subscription topic '{topic}', are all '+' and '#' wildcards "
                             "correct?\n")
        o.topics.append(topic)


def _parse_url(o: Options, url: str, tool: str, tool_name: str) -> None:
    """-L mqtt://[username[:password]@]host[:port]/topic"""
    lower = url.lower()
    if lower.startswith("mqtt://"):
        rest = url[7:]
        o.port = 1883
    elif lower.startswith(("mqtts://", "ws://", "wss://")):
        raise UsageError(f"Error: {url.split(':', 1)[0]} URLs are not supported by {tool_name} yet.\n\n")
    else:
        raise UsageError("Error: unsupported URL scheme.\n\n")
    if "/" not in rest:
        raise UsageError("Error: Invalid URL for -L argument specified - topic missing.\n")
    hostpart, topic = rest.split("/", 1)
    _add_topic(o, topic, tool, "-L topic")
    if "@" in hostpart:
        auth, hostpart = hostpart.split("@", 1)
        if ":" in auth:
            auth, password = auth.split(":", 1)
            o.password = _raw(password)
        o.username = auth
    if ":" in hostpart:
        hostpart, port = hostpart.split(":", 1)
        o.port = atoi(port)
    o.host = hostpart


#: Options that only one of the tools takes (the other answers "Unknown option", as Mosquitto's do).
_OPTION_TOOLS: Dict[str, tuple] = {
    **{opt: (SUB,) for opt in ("-C", "-E", "-F", "-N", "-R", "-T", "--filter-out", "-U", "--unsubscribe",
                               "-v", "--verbose", "-W", "--random-filter", "--remove-retained",
                               "--retained-only", "--pretty", "-w", "--watch", "--retain-as-published")},
    **{opt: (PUB,) for opt in ("-f", "--file", "-l", "--stdin-line", "-m", "--message", "-n",
                               "--null-message", "-r", "--retain", "-s", "--stdin-file", "--repeat",
                               "--repeat-delay")},
}
