"""`edgebroker-sub`: subscribe and print messages, as mosquitto_sub(1) does, with its options and output.

Exit codes are mosquitto_sub's: 0 after -C messages, -E, --retained-only or SIGINT/SIGTERM; 1 for a bad
command line (and --help), or when the connection cannot be made; the CONNACK return code when the
broker refuses the connection; 27 when the -W timeout expires ("Timed out"); 141 when stdout's reader
goes away (a shell's code for mosquitto_sub killed by SIGPIPE; we disconnect cleanly instead).
A connection lost after it was established is retried every second, subscriptions included, as
libmosquitto's loop does.
"""
from __future__ import annotations

import random
import sys
import time

from ..client import Client, ClientError, ConnectFailed, ConnectionLost, ConnectionRefused, Message, \
    Published, Subscribed
from ..topics import filter_matches
from .clientargs import SUB, TLS_HELP, Options
from .clienttool import Output, Stopped, connect, err, make_client, parse_or_exit, stop_signals
from .msgformat import render

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

__all__ = ["main"]

PROG = "edgebroker-sub"
#: mosquitto_sub's exit code when -W expires (MOSQ_ERR_TIMEOUT... as its alarm path returns it).
RC_TIMED_OUT = 27
#: Exit code when stdout's reader went away: what a shell reports for mosquitto_sub killed by SIGPIPE.
RC_BROKEN_PIPE = 128 + 13
#: libmosquitto's default reconnect delay, in seconds.
RECONNECT_DELAY = 1.0

USAGE = f"""\
{PROG} is a simple mqtt client that will subscribe to a set of topics and print all messages it receives.
It takes mosquitto_sub's options (MQTT 3.1.1 and 3.1; MQTT 5 is not supported yet).

Usage: {PROG} {{[-h host] [--unix path] [-p port] [-u username] [-P password] -t topic | -L URL [-t topic]}}
                     [-c] [-k keepalive] [-q qos]
                     [-C msg_count] [-E] [-R] [--retained-only] [--remove-retained] [-T filter_out] [-U topic ...]
                     [-F format]
                     [-W timeout_secs]
                     [-A bind_address] [--nodelay]
                     [-i id] [-I id_prefix]
                     [-d] [-N] [--quiet] [-v]
                     [--will-topic [--will-payload payload] [--will-qos qos] [--will-retain]]
                     [{{--cafile file | --capath dir}} [--cert file] [--key file]
                       [--ciphers ciphers] [--insecure] [--tls-alpn protocol]
                       [--tls-use-os-certs] [--tls-version version]]
       {PROG} --help

 -A : bind the outgoing socket to this host/ip address. Use to control which interface
      the client communicates over.
 -c : disable clean session/enable persistent client mode
      When this argument is used, the broker will be instructed not to clean existing sessions
      for the same client id when the client connects.
 -C : disconnect and exit after receiving the 'msg_count' messages.
 -d : enable debug messages.
 -E : Exit once all subscriptions have been acknowledged by the broker.
 -F : output format.
 -h : mqtt host to connect to. Defaults to localhost.
 -i : id to use for this client. Defaults to an id assigned by the broker.
 -I : define the client id as id_prefix appended with the process id. Useful for when the
      broker is using the clientid_prefixes option.
 -k : keep alive in seconds for this client. Defaults to 60.
 -L : specify user, password, hostname, port and topic as a URL in the form:
      mqtt://[username[:password]@]host[:port]/topic
 -N : do not add an end of line character when printing the payload.
 -p : network port to connect to. Defaults to 1883 for plain MQTT and 8883 for MQTT over TLS.
 -P : provide a password
 -q : quality of service level to use for the subscription. Defaults to 0.
 -R : do not print stale messages (those with retain set).
 -t : mqtt topic to subscribe to. May be repeated multiple times.
 -T : topic string to filter out of results. May be repeated.
 -u : provide a username
 -U : unsubscribe from a topic. May be repeated.
 -v : print published messages verbosely.
 -V : specify the version of the MQTT protocol to use when connecting.
      Can be mqttv311 or mqttv31. Defaults to mqttv311. (mqttv5 is not supported yet.)
 -W : Specifies a timeout in seconds how long to process incoming MQTT messages.
 --help : display this message.
 --nodelay : disable Nagle's algorithm, to reduce socket sending latency at the possible
             expense of more packets being sent.
 --quiet : don't print error messages.
 --random-filter : only print a percentage of received messages. Set to 100 to have all
                   messages printed, 50.0 to have half of the messages received on average
                   printed, and so on.
 --retained-only : only handle messages with the retained flag set, and exit when the
                   first non-retained message is received.
 --remove-retained : send a message to the server to clear any received retained messages
                     Use -T to filter out messages you do not want to be cleared.
 --unix : connect to a broker through a unix domain socket instead of a TCP socket,
          e.g. /tmp/mosquitto.sock
 --will-payload : payload for the client Will, which is sent by the broker in case of
                  unexpected disconnection. If not given and will-topic is set, a zero
                  length message will be sent.
 --will-qos : QoS level for the client Will.
 --will-retain : if given, make the client Will retained.
 --will-topic : the topic on which to publish the client Will.

The -F format string takes mosquitto_sub's sequences: %t %p %q %r %l %m %x %X %I %U %j %% (with
optional - or 0 flag, width and precision), @-sequences for strftime(3) (@N: nanoseconds), and
the escapes \\\\ \\0 \\a \\e \\n \\r \\t \\v.
{TLS_HELP}
See mosquitto_sub(1) for the details: {PROG} behaves the same.
"""


class _Subscriber:
    """mosquitto_sub's callbacks and state (sub_client.c), driven by our blocking client."""

    def __init__(self, o: Options, out: Output) -> None:
        self.o = o
        self.out = out
        self.client: Client = make_client(o, out)
        self.received = 0
        #: False once the tool decided to stop (count reached, --retained-only): later messages are
        #: ignored, as mosquitto_sub's process_messages flag does.
        self.processing = True
        #: mid of the last --remove-retained PUBLISH still waiting for its PUBACK (0: none).
        self.last_mid = 0
        self.done = False

    def on_connect(self) -> None:
        o = self.o
        if o.topics:
            self.client.subscribe([(t, o.qos) for t in o.topics])
        for topic_filter in o.unsub_topics:
            self.client.unsubscribe([topic_filter])

    def on_subscribe(self, event: Subscribed) -> None:
        if self.o.debug and not self.o.quiet:
            self.out.line(f"Subscribed (mid: {event.mid}): " + ", ".join(str(q) for q in event.granted))
        if self.o.exit_after_sub:
            self.done = True

    def on_message(self, m: Message) -> None:
        o = self.o
        if not self.processing:
            return
        if o.retained_only and not m.retain:
            self.processing = False
            if self.last_mid == 0:
                self.done = True
            return
        if m.retain and o.no_retain:
            return
        if any(filter_matches(f, m.topic) for f in o.filter_outs):
            return
        if o.remove_retained and m.retain:
            self.last_mid = self.client.publish(m.topic, b"", 1, True)
        if o.random_filter >= 100.0 or random.random() * 100.0 < o.random_filter:
            self.out.write(render(m.topic, m.payload, m.qos, m.retain, m.mid, o.verbose, o.format, o.eol))
            self.out.flush()
            if self.out.broken:  # nobody reads our output any more: stop (mosquitto_sub gets SIGPIPE)
                self.processing = False
                self.done = True
                return
        if o.msg_count > 0:
            self.received += 1
            if self.received == o.msg_count:
                self.processing = False
                if self.last_mid == 0:
                    self.done = True

    def on_publish(self, event: Published) -> None:
        if not self.processing and event.mid == self.last_mid:
            self.done = True

    def run(self) -> int:
        o = self.o
        deadline = time.monotonic() + o.timeout if o.timeout else None
        try:
            with stop_signals():
                try:
                    connect(self.client, o)
                except ConnectionRefused as exc:
                    return self._refused(exc)
                except ClientError as exc:
                    err(o, f"{exc}\n")
                    return exc.rc
                self.on_connect()
                while not self.done:
                    timeout = None
                    if deadline is not None:
                        timeout = deadline - time.monotonic()
                        if timeout <= 0:
                            self.client.disconnect()
                            err(o, "Timed out\n")
                            return RC_TIMED_OUT
                    try:
                        events = self.client.loop(timeout)
                    except ConnectionLost:
                        rc = self._reconnect(deadline)
                        if rc is not None:
                            return rc
                        continue
                    except ClientError as exc:  # protocol error: the stream is out of sync
                        err(o, f"{exc}\n")
                        return exc.rc
                    for event in events:
                        if isinstance(event, Message):
                            self.on_message(event)
                        elif isinstance(event, Subscribed):
                            self.on_subscribe(event)
                        elif isinstance(event, Published):
                            self.on_publish(event)
                self.client.disconnect()
                return RC_BROKEN_PIPE if self.out.broken else 0
        except Stopped:
            self.client.disconnect()
            return 0
        except KeyboardInterrupt:  # SIGINT before our handler was installed, or off the main thread
            self.client.disconnect()
            return 0
        finally:
            self.client.close()
            self.out.flush()

    def _refused(self, exc: ConnectionRefused) -> int:
        err(self.o, f"{exc}\n")
        self.client.disconnect()  # mosquitto_sub sends DISCONNECT after a refusing CONNACK
        return exc.rc

    def _reconnect(self, deadline: Optional[float]) -> Optional[int]:
        """Retry once a second until connected (None), refused (its exit code) or timed out (27)."""
        o = self.o
        while True:
            wait = RECONNECT_DELAY
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    err(o, "Timed out\n")
                    return RC_TIMED_OUT
                wait = min(wait, remaining)
            time.sleep(wait)  # back-off between attempts, not synchronisation
            if deadline is not None and time.monotonic() >= deadline:
                err(o, "Timed out\n")
                return RC_TIMED_OUT
            try:
                connect(self.client, o)
            except ConnectionRefused as exc:
                return self._refused(exc)
            except (ConnectFailed, ConnectionLost):
                continue
            except ClientError as exc:
                err(o, f"{exc}\n")
                return exc.rc
            self.on_connect()
            return None


def main(argv: Optional[List[str]] = None) -> int:
    parsed = parse_or_exit(argv, SUB, PROG, USAGE)
    if isinstance(parsed, int):
        return parsed
    o = parsed
    if o.no_retain and o.retained_only:
        sys.stderr.write("\nError: Combining '-R' and '--retained-only' makes no sense.\n")
        return 1
    if o.password is not None and o.username is None:
        err(o, "Error: Problem setting username and/or password.\n")
        return 1
    return _Subscriber(o, Output()).run()


if __name__ == "__main__":
    sys.exit(main())
