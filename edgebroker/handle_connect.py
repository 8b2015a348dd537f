"""CONNECT: protocol checks, client ids, authentication (the answer of the hashing thread included), session
takeover and resumption, the CONNACK.

A mixin of `edgebroker.broker.Broker` (one file per concern, as Mosquitto keeps one per packet
handler): its methods run on the Broker and use its state; see broker.py's theory of operation."""
from __future__ import annotations

import os

from . import log as L
from .auth import ALLOW, BAD_CREDENTIALS, PendingAuth, Security, refusal
from .codec import MAX_PACKET_SIZE
from .connection import Connection
from .packets import Connect, ConnackCode
from .session import Session, add_member

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

__all__ = ["ConnectHandlers"]


_PROTOCOLS = {("MQTT", 4): "p2", ("MQIsdp", 3): "p1"}


class ConnectHandlers:
    def _refuse(self, conn: Connection, code: int, now: float, reason: str) -> None:
        conn.write(_connack(False, code))
        self.stats.messages_sent += 1
        if self.debug:
            self.log(L.DEBUG, f"Sending CONNACK to {conn.client_id} (0, {code})")
        self._close(conn, now, reason)

    def _on_connect(self, conn: Connection, p: Connect, now: float) -> None:
        cfg = self.config
        if p.protocol_level & 0x80:
            # A bridge (Mosquitto's try_private): its own messages do not come back to it and retained
            # ones keep their flag, as Mosquitto treats bridges.
            conn.bridge = True
            p = p._replace(protocol_level=p.protocol_level & 0x7F)
        proto = _PROTOCOLS.get((p.protocol_name, p.protocol_level))
        if proto is None:
            if p.protocol_name in ("MQTT", "MQIsdp"):
                self._refuse(conn, ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION, now,
                             f"unsupported protocol level {p.protocol_level} [MQTT-3.1.2-2]")
            else:
                self._close(conn, now, f"invalid protocol name {p.protocol_name!r} [MQTT-3.1.2-1]")
            return
        sec = conn.security or self.security
        client_id = p.client_id
        if not client_id:
            if p.protocol_level == 3 or not p.clean_session or not sec.allow_zero_length_clientid:
                self._refuse(conn, ConnackCode.IDENTIFIER_REJECTED, now,
                             "empty client id not allowed [MQTT-3.1.3-8]")
                return
            client_id = sec.auto_id_prefix + _random_uuid()  # [MQTT-3.1.3-6]
        conn.client_id = client_id
        if cfg.clientid_prefixes and not client_id.startswith(cfg.clientid_prefixes):
            self._refuse(conn, ConnackCode.IDENTIFIER_REJECTED, now,
                         f"client id does not start with clientid_prefixes {cfg.clientid_prefixes!r}")
            return
        if p.keepalive > cfg.max_keepalive:
            self._refuse(conn, ConnackCode.IDENTIFIER_REJECTED, now,
                         f"keepalive {p.keepalive} above max_keepalive {cfg.max_keepalive}")
            return
        if p.will is not None and cfg.message_size_limit and len(p.will.payload) > cfg.message_size_limit:
            # Mosquitto refuses such a CONNECT with return code 5 (not authorized): a will it would
            # drop when publishing it must not be accepted.
            self._refuse(conn, ConnackCode.NOT_AUTHORIZED, now,
                         f"will payload of {len(p.will.payload)} bytes over message_size_limit "
                         f"{cfg.message_size_limit}")
            return
        identity = conn.tls_username is not None
        username = conn.tls_username if identity else p.username
        code, entry = sec.connect(username, p.password, identity)
        if code != ALLOW:
            self._refuse_auth(conn, code, username, now)
            return
        if entry is not None:
            password: bytes = p.password  # type: ignore[assignment]
            if self.verify_async is not None and entry.expensive:
                pending = PendingAuth(conn, p, sec, entry, username)  # type: ignore[arg-type]
                add_member(conn, "paused_by", pending)
                self.flow_changed.append(conn)
                self.verify_async(conn.peer.rsplit(":", 1)[0], lambda: entry.verify(password), pending)
                return
            if not entry.verify(password):
                self._refuse_auth(conn, BAD_CREDENTIALS, username, now)
                return
            sec.passwords.remember(username, entry, password)  # type: ignore[union-attr,arg-type]
        self._connected(conn, p, username, sec, now)

    def password_checked(self, token: object, ok: bool, now: float) -> None:
        """The loop hands back the answer of a `verify_async` job."""
        pending: PendingAuth = token  # type: ignore[assignment]
        conn: Connection = pending.conn  # type: ignore[assignment]
        self._now = now
        if ok and pending.security.passwords is not None:
            pending.security.passwords.remember(pending.username, pending.entry, pending.packet.password or b"")
        if conn.closed:
            return
        if pending in conn.paused_by:
            conn.paused_by.discard(pending)  # type: ignore[attr-defined]
        if ok:
            self._connected(conn, pending.packet, pending.username, pending.security, now)  # type: ignore
        else:
            self._refuse_auth(conn, BAD_CREDENTIALS, pending.username, now)
        if not conn.closed and not conn.paused_by:
            self.flow_changed.append(conn)  # the loop reads it again and handles what it stashed

    def _refuse_auth(self, conn: Connection, code: int, username: Optional[str], now: float) -> None:
        self._refuse(conn, code, now, refusal(code, username))

    def _connected(self, conn: Connection, p: Connect, username: Optional[str], sec: Security,
                   now: float) -> None:
        """The rest of CONNECT, once the client is let in."""
        cfg = self.config
        client_id = conn.client_id
        conn.username = username
        session = self.sessions.get(client_id)
        if session is not None and session.conn is not None:
            # Takeover: the server MUST disconnect the existing client [MQTT-3.1.4-2].
            old = session.conn
            self.log(L.NOTICE, f"Client {client_id} already connected, closing old connection.")
            self._close(old, now, "session taken over")  # type: ignore[arg-type]
            session = self.sessions.get(client_id)
        if p.clean_session and session is not None:
            self._discard_session(session)  # [MQTT-3.1.2-6]
            session = None
        present = session is not None
        if session is None:
            session = Session(client_id, p.clean_session)
            self.sessions[client_id] = session
        if not session.clean:
            self.store.session_online(client_id)
        session.conn = conn
        session.drop_logged = False
        if self._acl_on:
            acl = session.acl = sec.subject(username, client_id)
            if acl.dangerous:
                self.log(L.NOTICE, acl.dangerous)
        conn.session = session
        conn.connected = True
        conn.keepalive = p.keepalive
        conn.will = p.will
        conn.protocol_level = p.protocol_level
        conn.parser.max_packet_size = cfg.max_packet_size or MAX_PACKET_SIZE
        stats = self.stats
        stats.connections += 1
        stats.clients_connected += 1
        if stats.clients_connected > stats.clients_maximum:
            stats.clients_maximum = stats.clients_connected
        if conn.bridge:
            self._rap.add(session)
        if cfg.connection_messages:
            proto = "p2" if p.protocol_level == 4 else "p1"  # what _PROTOCOLS let in: 3.1.1 or 3.1
            self.log(L.NOTICE, f"New {'bridge' if conn.bridge else 'client'} connected from {conn.peer} as {client_id} "
                               f"({proto}, c{int(p.clean_session)}, k{p.keepalive}"
                               f"{', u' + repr(username) if username is not None else ''}).")
        if self.debug:
            if p.will is None:
                self.log(L.DEBUG, "No will message specified.")
            else:
                self.log(L.DEBUG, f"Will message specified ({len(p.will.payload)} bytes) "
                                  f"(r{int(p.will.retain)}, q{p.will.qos}).")
                self.log(L.DEBUG, f"\t{p.will.topic}")
            self.log(L.DEBUG, f"Sending CONNACK to {client_id} ({int(present and p.protocol_level == 4)}, 0)")
        # Session present: 0 for a clean session [MQTT-3.2.2-1], 1 when one is resumed [MQTT-3.2.2-2];
        # MQTT 3.1 has no such flag: that byte is 0 (as Mosquitto sends it).
        conn.write(_CONNACKS[(True, 0)] if present and p.protocol_level == 4 else _ACCEPTED)
        stats.messages_sent += 1
        if present:
            self._resend(session, conn)


def _random_uuid() -> str:
    """A random (version 4) UUID in upper-case hex, as Mosquitto forms client ids; without the uuid
    module, which costs the broker about half a MiB of memory for this one use."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex().upper()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


#: Every CONNACK this broker sends, by (session present, return code).
_CONNACKS = {(present, code): bytes((0x20, 2, int(present), code)) for present in (False, True) for code in range(6)}


_ACCEPTED = _CONNACKS[(False, 0)]  # a new session's (and every MQTT 3.1 client's) CONNACK


def _connack(session_present: bool, return_code: int) -> bytes:
    return _CONNACKS[(bool(session_present), return_code)]
