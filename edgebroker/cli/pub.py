"""`edgebroker-pub`: publish one message (or one per line of stdin) and exit, as mosquitto_pub(1) does.

The message comes from exactly one of -m (argument), -f (file), -s (all of stdin), -l (one message per
line of stdin, sent as the lines arrive, so `tail -f log | edgebroker-pub -l` works) or -n (empty).
QoS 1 and 2 complete their handshakes before the DISCONNECT; with -l at most -M (default 20) QoS 1/2
messages are in flight at once.

Exit codes are mosquitto_pub's: 0 when everything was sent; 1 for a bad command line (and --help), an
unreadable input or a connection that cannot be made; the CONNACK return code when the broker refuses
the connection; 7 when the connection is lost.
"""
from __future__ import annotations

import os
import sys

from ..client import Client, ClientError, ConnectionRefused, Published
from .clientargs import (
    MQTT_MAX_PAYLOAD, MSGMODE_FILE, MSGMODE_STDIN_FILE, MSGMODE_STDIN_LINE, PUB, TLS_HELP, Options,
)
from .clienttool import Output, connect, err, make_client, parse_or_exit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

__all__ = ["main"]

PROG = "edgebroker-pub"

#: Bytes read from stdin at a time in -l mode.
STDIN_READ = 65536

USAGE = f"""\
{PROG} is a simple mqtt client that will publish a message on a single topic and exit.
It takes mosquitto_pub's options (MQTT 3.1.1 and 3.1; MQTT 5 is not supported yet).

Usage: {PROG} {{[-h host] [--unix path] [-p port] [-u username] [-P password] -t topic | -L URL}}
                     {{-f file | -l | -n | -m message | -s}}
                     [-c] [-k keepalive] [-q qos] [-r] [--repeat N] [--repeat-delay time]
                     [-A bind_address] [--nodelay]
                     [-i id] [-I id_prefix]
                     [-d] [--quiet]
                     [-M max_inflight]
                     [-u username [-P password]]
                     [--will-topic [--will-payload payload] [--will-qos qos] [--will-retain]]
                     [{{--cafile file | --capath dir}} [--cert file] [--key file]
                       [--ciphers ciphers] [--insecure] [--tls-alpn protocol]
                       [--tls-use-os-certs] [--tls-version version]]
       {PROG} --help

 -A : bind the outgoing socket to this host/ip address. Use to control which interface
      the client communicates over.
 -d : enable debug messages.
 -c : disable clean session/enable persistent client mode
      When this argument is used, the broker will be instructed not to clean existing sessions
      for the same client id when the client connects.
 -f : send the contents of a file as the message.
 -h : mqtt host to connect to. Defaults to localhost.
 -i : id to use for this client. Defaults to an id assigned by the broker.
 -I : define the client id as id_prefix appended with the process id. Useful for when the
      broker is using the clientid_prefixes option.
 -k : keep alive in seconds for this client. Defaults to 60.
 -L : specify user, password, hostname, port and topic as a URL in the form:
      mqtt://[username[:password]@]host[:port]/topic
 -l : read messages from stdin, sending a separate message for each line.
 -m : message payload to send.
 -M : the maximum inflight messages for QoS 1/2..
 -n : send a null (zero length) message.
 -p : network port to connect to. Defaults to 1883 for plain MQTT and 8883 for MQTT over TLS.
 -P : provide a password
 -q : quality of service level to use for all messages. Defaults to 0.
 -r : message should be retained.
 -s : read message from stdin, sending the entire input as a message.
 -t : mqtt topic to publish to.
 -u : provide a username
 -V : specify the version of the MQTT protocol to use when connecting.
      Can be mqttv311 or mqttv31. Defaults to mqttv311. (mqttv5 is not supported yet.)
 --help : display this message.
 --nodelay : disable Nagle's algorithm, to reduce socket sending latency at the possible
             expense of more packets being sent.
 --quiet : don't print error messages.
 --repeat : if publish mode is -f, -m, or -s, then repeat the publish N times.
 --repeat-delay : if using --repeat, wait time seconds between publishes. Defaults to 0.
 --unix : connect to a broker through a unix domain socket instead of a TCP socket,
          e.g. /tmp/mosquitto.sock
 --will-payload : payload for the client Will, which is sent by the broker in case of
                  unexpected disconnection. If not given and will-topic is set, a zero
                  length message will be sent.
 --will-qos : QoS level for the client Will.
 --will-retain : if given, make the client Will retained.
 --will-topic : the topic on which to publish the client Will.
{TLS_HELP}
See mosquitto_pub(1) for the details: {PROG} behaves the same.
"""


def _load_message(o: Options) -> Optional[int]:
    """Read -f / -s input into o.message before connecting, as mosquitto_pub does; an exit code on
    failure."""
    if o.pub_mode == MSGMODE_FILE:
        path = o.file_input or ""
        try:
            with open(path, "rb") as f:
                data = f.read(MQTT_MAX_PAYLOAD + 1)
        except OSError:
            err(o, f'Error: Unable to open file "{path}".\n')
            err(o, f'Error loading input file "{path}".\n')
            return 1
        if len(data) > MQTT_MAX_PAYLOAD:
            err(o, f"Error: File must be less than {MQTT_MAX_PAYLOAD} bytes.\n\n")
            err(o, f'Error loading input file "{path}".\n')
            return 1
        o.message = data
    elif o.pub_mode == MSGMODE_STDIN_FILE:
        data = sys.stdin.buffer.read() if sys.stdin is not None else b""
        if not data:
            err(o, "Error: Zero length input.\n")
            err(o, "Error loading input from stdin.\n")
            return 1
        if len(data) > MQTT_MAX_PAYLOAD:
            err(o, f"Error: Message length must be less than {MQTT_MAX_PAYLOAD} bytes.\n")
            err(o, "Error loading input from stdin.\n")
            return 1
        o.message = data
    return None


def _wait_published(client: Client, mid: int) -> None:
    while True:
        for event in client.loop():
            if isinstance(event, Published) and event.mid == mid:
                return


def _publish_repeated(client: Client, o: Options) -> None:
    topic = o.topic or ""
    for n in range(o.repeat_count):
        if n and o.repeat_delay > 0:
            client.loop(o.repeat_delay)  # keeps the connection serviced while waiting
        mid = client.publish(topic, o.message, o.qos, o.retain)
        _wait_published(client, mid)


def _publish_lines(client: Client, o: Options) -> None:
    """-l: one message per line, "\\n" removed ("\\r" kept); a last line without "\\n" is sent too."""
    topic = o.topic or ""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    buf = b""
    eof = fd < 0
    while True:
        while b"\n" in buf and client.inflight < o.max_inflight:
            line, buf = buf.split(b"\n", 1)
            client.publish(topic, line, o.qos, o.retain)
        if eof and b"\n" not in buf and buf and client.inflight < o.max_inflight:
            client.publish(topic, buf, o.qos, o.retain)
            buf = b""
        if eof and not buf and client.inflight == 0:
            return
        want_input = not eof and b"\n" not in buf and client.inflight < o.max_inflight
        client.loop(None, wake=(fd,) if want_input else ())
        if want_input and client.woken:
            data = os.read(fd, STDIN_READ)
            if data:
                buf += data
            else:
                eof = True


def main(argv: Optional[List[str]] = None) -> int:
    parsed = parse_or_exit(argv, PUB, PROG, USAGE)
    if isinstance(parsed, int):
        return parsed
    o = parsed
    if o.topic is None or o.pub_mode is None:
        sys.stderr.write("Error: Both topic and message must be supplied.\n")
        sys.stdout.write(USAGE)
        return 1
    rc = _load_message(o)
    if rc is not None:
        return rc
    if o.password is not None and o.username is None:
        err(o, "Error: Problem setting username and/or password.\n")
        return 1
    out = Output()
    client = make_client(o, out)
    try:
        try:
            connect(client, o)
        except ConnectionRefused as exc:
            err(o, f"{exc}\n")
            err(o, "Error: The connection was refused.\n")
            return exc.rc
        if not o.topic:
            # Mosquitto reports an empty topic only when publishing, after connecting, and exits 0.
            err(o, "Error: Invalid input. Does your topic contain '+' or '#'?\n")
            client.disconnect()
            return 0
        if o.pub_mode == MSGMODE_STDIN_LINE:
            _publish_lines(client, o)
        else:
            _publish_repeated(client, o)
        client.disconnect()
        return 0
    except ClientError as exc:
        err(o, f"{exc}\n")
        return exc.rc
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
