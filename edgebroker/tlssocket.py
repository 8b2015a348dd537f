"""A TLS connection with a plain socket's face, for the loop: what a TLS listener's connections use as
their `handle`, so the loop's read and flush code is the same for both kinds and costs a plain
connection nothing.

Theory of operation: `recv` reads the socket, feeds the bytes to a `TlsEngine` and returns the
application bytes they decrypt to; while the handshake runs (or a record is incomplete) there are none
and it raises BlockingIOError, which the loop treats as "nothing to read yet". Handshake records and
other records the engine writes on its own go straight out; if the socket cannot take them all, the
rest waits in `_raw` and `on_backlog()` asks the loop for a writable event, upon which it calls
`flush_backlog()`.

`send(data)` keeps socket semantics: it returns how many bytes of `data` are gone for good. It
encrypts everything given, and when the socket takes only part of the ciphertext it keeps the rest and
reports the bytes just encrypted as *not* sent. The loop, as with a plain socket, passes the unsent
bytes again in its next `send`, which first sends the kept ciphertext and then skips those bytes
(`_skip`): nothing is encrypted twice, and the loop's backlog accounting (EVENT_WRITE, flow control)
works unchanged.

At handshake completion the client certificate's CN or subject becomes `conn.tls_username` when the
listener says so (use_identity_as_username / use_subject_as_username); a certificate without a CN
fails the connection there.
"""
from __future__ import annotations

import errno

from .tls import TlsEngine, TlsError, common_name, subject_string

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any, Callable, Optional

__all__ = ["TlsSocket", "IDENTITY", "SUBJECT"]

#: Values of `identity`: what of the client certificate becomes the username.
IDENTITY = "identity"
SUBJECT = "subject"


class TlsSocket:
    __slots__ = ("sock", "engine", "conn", "identity", "on_backlog", "_raw", "_skip", "_closing")

    def __init__(self, sock: socket.socket, engine: TlsEngine, conn: Any, identity: Optional[str] = None,
                 on_backlog: Optional[Callable[[], None]] = None) -> None:
        self.sock = sock
        self.engine = engine
        self.conn = conn
        self.identity = identity
        self.on_backlog = on_backlog
        self._raw = b""  # ciphertext the socket has not taken yet
        self._skip = 0  # bytes at the start of the next send() whose ciphertext is in _raw (or gone)
        self._closing = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        sock = self.sock
        data = sock.recv(size)
        if self._closing or not data:
            return data
        engine = self.engine
        handshaking = not engine.handshake_done
        try:
            plain = engine.feed(data)
            if handshaking and engine.handshake_done and self.identity is not None:
                self._take_identity()
        except TlsError as exc:
            self._push_quietly()  # the alert, so the peer learns why
            raise OSError(errno.EPROTO, str(exc)) from None
        if engine.has_data_to_send:
            self._push()
        if plain:
            return plain
        if engine.peer_closed:
            return b""
        raise BlockingIOError(errno.EAGAIN, "no application data yet")

    def _take_identity(self) -> None:
        cert = self.engine.peer_certificate()
        if cert is None:  # require_certificate is set whenever identity is: cannot happen, but be sure
            raise TlsError("TLS: the client sent no certificate, so there is no username")
        if self.identity == IDENTITY:
            name = common_name(cert)
            if not name:
                raise TlsError("TLS: the client certificate has no CN (use_identity_as_username)")
        else:
            name = subject_string(cert)
        self.conn.tls_username = name

    def _push(self) -> None:
        """Send what the engine wrote on its own; keep what the socket does not take."""
        data = self._raw + self.engine.data_to_send()
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        self._raw = data[sent:]
        if self._raw and self.on_backlog is not None:
            self.on_backlog()

    def _push_quietly(self) -> None:
        try:
            self.sock.send(self._raw + self.engine.data_to_send())
        except OSError:
            pass
        self._raw = b""

    def flush_backlog(self) -> bool:
        """Send kept ciphertext; True when none is left."""
        raw = self._raw
        if raw:
            try:
                sent = self.sock.send(raw)
            except (BlockingIOError, InterruptedError):
                return False
            self._raw = raw[sent:]
        return not self._raw

    def send(self, data: bytes) -> int:
        if self._raw and not self.flush_backlog():
            return 0
        done = self._skip
        self._skip = 0
        if done >= len(data):
            return len(data)
        engine = self.engine
        try:
            engine.write(data[done:] if done else data)
        except TlsError as exc:
            raise OSError(errno.EPROTO, str(exc)) from None
        cipher = engine.data_to_send()
        if not cipher:
            return len(data)  # before the handshake completes: the engine holds it
        try:
            sent = self.sock.send(cipher)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(cipher):
            return len(data)
        self._raw = cipher[sent:]
        self._skip = len(data) - done
        return done

    def shutdown(self, how: int) -> None:
        """Before the loop closes: a close_notify for the peer, then the socket's own shutdown."""
        if not self._closing:
            self._closing = True
            if self.engine.handshake_done:
                self.engine.close()
            self._push_quietly()
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()
        # The connection holds this object as its handle, and on_backlog is a closure over the
        # connection: without these two references a closed TLS connection is freed by its reference
        # count, not left as a cycle for the garbage collector (docs/architecture.md).
        self._closing = True
        self.conn = None
        self.on_backlog = None

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)
