"""What edgebroker-pub and edgebroker-sub share at run time: printing, errors, building the client.

stdout gets bytes (payloads are bytes), written through the stream's buffer when it has one; debug
lines go to stdout too, as libmosquitto's log callback prints them in mosquitto_pub/sub, and are not
silenced by --quiet. Error messages go to stderr unless --quiet (Mosquitto's err_printf).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

from .. import __version__
from ..client import Client, ConnectFailed
from ..packets import Will
from .clientargs import HelpRequested, Options, UsageError, VersionRequested, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import Iterator, List, Optional, TextIO, Union

__all__ = ["Output", "err", "parse_or_exit", "make_client", "connect", "stop_signals", "Stopped"]


class Output:
    """stdout as bytes. When the reader goes away (`edgebroker-sub ... | head -1`) writing stops and
    `broken` becomes true: the tool then ends cleanly instead of dying with a traceback."""

    def __init__(self, stream: Optional[TextIO] = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            buffer = getattr(self.stream, "buffer", None)
            if buffer is not None:
                buffer.write(data)
            else:  # a text-only stream (a test's StringIO)
                self.stream.write(data.decode("utf-8", "replace"))
        except BrokenPipeError:
            self._break()

    def line(self, text: str) -> None:
        self.write(text.encode("utf-8", "surrogateescape") + b"\n")
        self.flush()

    def flush(self) -> None:
        if self.broken:
            return
        try:
            buffer = getattr(self.stream, "buffer", None)
            if buffer is not None:
                buffer.flush()
            self.stream.flush()
        except BrokenPipeError:
            self._break()

    def _break(self) -> None:
        self.broken = True
        # Point the descriptor at /dev/null so the interpreter's own flush at exit does not fail again.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self.stream.fileno())
            finally:
                os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass


def err(o: Options, text: str) -> None:
    """Mosquitto's err_printf: to stderr unless --quiet."""
    if not o.quiet:
        sys.stderr.write(text)
        sys.stderr.flush()


def parse_or_exit(argv: Optional[List[str]], tool: str, prog: str, usage: str) -> Union[Options, int]:
    """Options, or the exit code after printing what Mosquitto's tool prints for this command line."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return parse(args, tool, prog)
    except HelpRequested:
        sys.stdout.write(usage)
        sys.stdout.flush()
        return 1  # mosquitto_pub/sub --help exit 1
    except VersionRequested:
        sys.stdout.write(f"{prog} version {__version__} (edgebroker, MQTT 3.1.1 and 3.1).\n")
        sys.stdout.flush()
        return 1
    except UsageError as exc:
        sys.stderr.write(exc.text)
        if exc.hint:
            sys.stderr.write(f"\nUse '{prog} --help' to see usage.\n")
        sys.stderr.flush()
        return 1


def make_client(o: Options, out: Output) -> Client:
    client_id = o.client_id
    if o.id_prefix is not None:
        client_id = f"{o.id_prefix}{os.getpid()}"
    will = None
    if o.will_topic is not None:
        will = Will(o.will_topic, o.will_payload or b"", o.will_qos, o.will_retain)
    return Client(client_id=client_id, clean_session=o.clean_session, keepalive=o.keepalive,
                  protocol_level=o.protocol_level, will=will, username=o.username, password=o.password,
                  debug=out.line if o.debug else None, max_inflight=o.max_inflight)


def connect(client: Client, o: Options) -> None:
    """Connect as the options say; with TLS the default port is 8883, as for mosquitto_pub."""
    tls = tls_context(o) if o.tls else None
    port = o.port if o.port is not None else 8883 if tls is not None else 1883
    client.connect(o.host or "localhost", port, bind_address=o.bind_address, unix_path=o.unix_path,
                   nodelay=o.nodelay, tls=tls)


def tls_context(o: Options) -> "ssl.SSLContext":
    """The TLS client context of the options; ConnectFailed with mosquitto_pub's message when a file
    is missing or an option is invalid."""
    from ..errors import ConfigError
    from ..tls import client_context
    try:
        context = client_context(cafile=o.cafile, capath=o.capath, certfile=o.certfile, keyfile=o.keyfile,
                                 insecure=o.insecure, tls_version=o.tls_version, ciphers=o.ciphers,
                                 use_os_certs=o.tls_use_os_certs, blocking=True)
        if o.tls_alpn is not None:
            context.set_alpn_protocols([o.tls_alpn])
    except ConfigError as exc:
        if "cannot read" in str(exc) or "not a directory" in str(exc):
            raise ConnectFailed("Error: Problem setting TLS options: File not found.") from exc
        raise ConnectFailed(f"Error: Problem setting TLS options, check the options are valid ({exc}).") from exc
    return context


class Stopped(Exception):
    """SIGINT or SIGTERM arrived: disconnect cleanly and exit 0, as mosquitto_sub does."""


@contextmanager
def stop_signals() -> Iterator[None]:
    """Turn SIGTERM (and SIGINT) into `Stopped` while the tool runs; only the main thread may set
    handlers, so an in-process caller on another thread keeps the defaults."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise Stopped()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
