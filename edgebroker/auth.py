"""Who may connect and what they may touch: Mosquitto's password and ACL files, and the decisions.

Theory of operation: this module parses files and decides; it opens no socket, reads no clock and
starts no thread. `load_security(config)` reads the password and ACL files a Config names (once per
listener with per_listener_settings true) into `Security` objects; the loop gives each connection the
one of its listener, and the core asks it:
- at CONNECT, `Security.connect(username, password)`: allowed, refused (CONNACK 4 or 5), or "verify
  this password hash", which the loop does off the loop thread (`PasswordEntry.verify` is the one
  expensive call here: PBKDF2 with the iterations of the file's line);
- at PUBLISH, SUBSCRIBE and every delivery, the connection's `AclSubject` (its username and client id
  applied to the ACL file), which caches its answer per topic.

Mosquitto 2.0 is the reference for the file formats, the matching rules and the log lines
(`security_default.c`): a `deny` rule wins over an allow in the same group, a user's rules are checked
before the `pattern` rules, an ACL file without a rule for a client denies it everything. edgebroker's
differences, each documented in docs/security.md: a wrong username or password gets CONNACK 4 (Mosquitto
2.0 answers 5 to every refusal), and a SUBSCRIBE to a filter the client can read nothing under gets
return code 0x80 (Mosquitto 2.0 grants it and delivers nothing).
"""
from __future__ import annotations

import os
import sys

from . import log as L
from .config import Config, Listener
from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, List, NamedTuple, Optional, Tuple
else:
    from .record import NamedTuple

__all__ = ["PasswordEntry", "PasswordFile", "AclFile", "AclSubject", "Security", "READ", "WRITE",
           "parse_password_file", "parse_acl_file", "load_password_file", "load_acl_file", "load_security",
           "hash_password", "ALLOW", "BAD_CREDENTIALS", "NOT_AUTHORISED", "OPEN", "PendingAuth", "refusal",
           "security_lines"]

#: Access bits of ACL rules (Mosquitto's MOSQ_ACL_READ / MOSQ_ACL_WRITE; a deny rule has none).
READ = 1
WRITE = 2
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}

#: Outcomes of `Security.connect`: CONNACK return codes, 0 = accepted.
ALLOW = 0
BAD_CREDENTIALS = 4  # "bad user name or password"
NOT_AUTHORISED = 5

#: Bytes of salt mosquitto_passwd writes (and edgebroker-passwd too).
SALT_BYTES = 12
#: mosquitto_passwd 2.0's default iterations for sha512-pbkdf2.
DEFAULT_ITERATIONS = 101
#: PBKDF2 iterations up to which a hash is verified on the loop's thread (about 0.45 ms on the build
#: machine, a few ms on a Pi Zero; see docs/security.md); more go to the hashing thread.
INLINE_ITERATIONS = 200
#: Entries of the cache of passwords already verified, per password file: a reconnecting client does not
#: pay for PBKDF2 again. Bounded: the cache only ever holds users of the file, at most this many.
VERIFIED_CACHE_SIZE = 4096
#: Topics whose ACL decision one client caches; past it the cache starts again (a client publishing to
#: ever new topics, e.g. with ids in them, costs a rule walk per message but no unbounded memory).
ACL_CACHE_SIZE = 512


# ---- password files ---------------------------------------------------------------------------

#: edgebroker.passhash, imported with the first password checked (a broker without a password file never
#: loads it; it decides when OpenSSL's libcrypto, ~3.7 MiB of RSS, is worth loading). Kept here: an
#: import statement per login cost 1-2 us each, three of them per login (S6-auth logs 2,000 devices in).
_hashes = None


def _load_hashes():  # type: ignore[no-untyped-def]
    global _hashes
    from . import passhash
    _hashes = passhash
    return passhash


class PasswordEntry:
    """One user's line of a password file, decoded: `$7$ITERATIONS$SALT$HASH` (PBKDF2-HMAC-SHA512) or
    `$6$SALT$HASH` (one SHA-512 of password then salt, Mosquitto 1.x), base64 salt and hash."""

    __slots__ = ("kind", "iterations", "salt", "digest")

    def __init__(self, kind: str, iterations: int, salt: bytes, digest: bytes) -> None:
        self.kind = kind  # "sha512-pbkdf2" or "sha512"
        self.iterations = iterations
        self.salt = salt
        self.digest = digest

    def verify(self, password: bytes) -> bool:
        """Does `password` hash to this entry? Compared in constant time. Costs `iterations` rounds of
        HMAC-SHA512 for $7$ (see docs/security.md for the cost): call it off the loop."""
        passhash = _hashes or _load_hashes()
        if self.kind == "sha512-pbkdf2":
            computed = passhash.pbkdf2_sha512(password, self.salt, self.iterations, len(self.digest),
                                              INLINE_ITERATIONS)
        else:
            computed = passhash.sha512(password + self.salt).digest()
        return passhash.compare_digest(computed, self.digest)

    @property
    def expensive(self) -> bool:
        """Worth a trip to the hashing thread: a $7$ line with more than INLINE_ITERATIONS. Fewer (such
        as mosquitto_passwd's default 101: 0.2 ms here) cost less than the trip itself, which waits for
        the loop to let the thread have the interpreter (bench S6-auth); $6$ costs microseconds."""
        return self.kind == "sha512-pbkdf2" and self.iterations > INLINE_ITERATIONS


def hash_password(password: bytes, kind: str = "sha512-pbkdf2", iterations: int = DEFAULT_ITERATIONS,
                  salt: Optional[bytes] = None) -> str:
    """The hash part of a password file line, as mosquitto_passwd writes it."""
    import base64
    import hashlib
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    b64 = base64.b64encode
    if kind == "sha512-pbkdf2":
        digest = hashlib.pbkdf2_hmac("sha512", password, salt, iterations)
        return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"
    if kind == "sha512":
        return f"$6${b64(salt).decode()}${b64(hashlib.sha512(password + salt).digest()).decode()}"
    raise ValueError(f"unknown hash type {kind!r}")


#: base64's alphabet: what base64.b64decode(validate=True) checks before Python 3.11
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(text: str) -> Optional[bytes]:
    """base64.b64decode(text, validate=True), or None where it raises: written out with binascii, since
    base64 imports `re` (which imports enum: about 0.6 MiB of resident memory). From Python 3.11 that is
    binascii's strict mode; before, `[A-Za-z0-9+/]*={0,2}` and then the lenient decoding."""
    import binascii
    if not text or not text.isascii():
        return None
    data = text.encode("ascii")
    try:
        if sys.version_info >= (3, 11):
            decoded = binascii.a2b_base64(data, strict_mode=True)  # novm
            return decoded
        body = data.rstrip(b"=")
        if len(data) - len(body) > 2 or body.translate(None, _B64):
            return None
        return binascii.a2b_base64(data)
    except binascii.Error:
        return None


def _decode_hash(text: str) -> Tuple[Optional[PasswordEntry], str]:
    """(entry, "") or (None, Mosquitto's reason it removes the entry)."""
    parts = text.split("$")
    if len(parts) < 2 or parts[0] != "" or not parts[1]:
        return None, "Invalid password hash type" if text else "Invalid password hash"
    kind = parts[1]
    if kind not in ("6", "7"):
        return None, "Invalid password hash type"
    iterations = 0
    rest = parts[2:]
    if kind == "7":
        if not rest or not rest[0].isdigit() or int(rest[0]) < 1:
            return None, "Invalid hash iterations"
        iterations = int(rest[0])
        rest = rest[1:]
    if len(rest) != 2:
        return None, "Invalid password hash"
    salt = _b64(rest[0])
    if salt is None:
        return None, "Unable to decode password salt"
    digest = _b64(rest[1])
    if digest is None:
        return None, "Unable to decode password"
    return PasswordEntry("sha512-pbkdf2" if kind == "7" else "sha512", iterations, salt, digest), ""


class PasswordFile:
    """A parsed password file: users and their entries, and what parsing had to say (`notes`: log
    level and message, each naming the file and line)."""

    def __init__(self, path: str, entries: Dict[str, PasswordEntry], notes: List[Tuple[int, str]]) -> None:
        self.path = path
        self.entries = entries
        self.notes = notes
        # username -> SHA-256 of (salt + password) once that password has been verified
        self._verified: Dict[str, bytes] = {}

    def known_good(self, username: str, entry: PasswordEntry, password: bytes) -> bool:
        """Has this exact password been verified for this user before (cheap: one SHA-256)?"""
        seen = self._verified.get(username)
        if seen is None:
            return False
        passhash = _hashes or _load_hashes()
        return passhash.compare_digest(seen, passhash.sha256(entry.salt + password).digest())

    def remember(self, username: str, entry: PasswordEntry, password: bytes) -> None:
        """Record a successful verification (only successes: every wrong guess costs the full hash)."""
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[username] = (_hashes or _load_hashes()).sha256(entry.salt + password).digest()


def parse_password_file(text: str, path: str) -> PasswordFile:
    """Mosquitto 2.0's reading: `#` lines and lines without `:` are skipped, username and hash are
    trimmed, a line with an empty username or nothing after the colon is ignored with a warning, an
    entry whose hash cannot be decoded (plaintext, an unknown `$N$` type, bad base64) is removed with an
    error. Unlike Mosquitto every message names the file and line; a later line for the same user
    replaces an earlier one (with a warning)."""
    entries: Dict[str, PasswordEntry] = {}
    lines_of: Dict[str, int] = {}
    notes: List[Tuple[int, str]] = []
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if line.startswith("#") or ":" not in line:
            continue
        fields = line.split(":")
        username = fields[0].strip()
        secret = fields[1].strip() if len(fields) > 1 else ""
        where = f"{path}:{number}"
        if not username:
            notes.append((L.WARNING, f"Warning: Invalid line in password file {where}: empty username, ignored."))
            continue
        if len(username) > 65535 or len(secret) > 65535:
            notes.append((L.WARNING, f"Warning: Invalid line in password file {where}: too long, ignored."))
            continue
        if not secret:
            notes.append((L.ERR, f"Error: Invalid password hash for user {username} ({where}), removing entry."))
            continue
        entry, reason = _decode_hash(secret)
        if entry is None:
            hint = " (a plaintext password? convert the file with edgebroker-passwd -U)" \
                if reason == "Invalid password hash type" and not secret.startswith("$") else ""
            notes.append((L.ERR, f"Error: {reason} for user {username} ({where}), removing entry{hint}."))
            continue
        if username in entries:
            notes.append((L.WARNING, f"Warning: user {username} appears again in password file {where} "
                                     f"(first at line {lines_of[username]}); the later line is used."))
        entries[username] = entry
        lines_of[username] = number
    return PasswordFile(path, entries, notes)


def _read(path: str, option: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", option=option) from None
    return data.decode("utf-8", "surrogateescape")


def load_password_file(path: str) -> PasswordFile:
    """Read and parse a password file; ConfigError(option="password_file") when it cannot be read."""
    passwords = parse_password_file(_read(path, "password_file"), path)
    from .passhash import expect_accounts  # many accounts: OpenSSL's hashes from the start
    expect_accounts(len(passwords.entries))
    return passwords


# ---- topic filters as sets of topics ------------------------------------------------------------

def _covers(outer: List[str], inner: List[str]) -> bool:
    """Is every topic the filter `inner` matches also matched by `outer`? For a topic name `inner`
    (no wildcards) this is plain matching. A `$` topic is never matched by a filter that does not
    itself start with `$` (Mosquitto's ACL rule, stricter than [MQTT-4.7.2-1] only for `$` literals)."""
    if inner[0].startswith("$") and not outer[0].startswith("$"):
        return False
    n = len(inner)
    for i, level in enumerate(outer):
        if level == "#":
            return True
        if i >= n or inner[i] == "#":
            return False
        if level != "+" and (inner[i] == "+" or level != inner[i]):
            return False
    return len(outer) == n


def _overlap(a: List[str], b: List[str]) -> Optional[List[str]]:
    """The filter matching exactly the topics both filters match, or None when they share none."""
    for x, y in ((a, b), (b, a)):
        if x[0] in ("+", "#") and y[0].startswith("$"):
            return None  # a wildcard first level matches no `$` topic [MQTT-4.7.2-1]
    out: List[str] = []
    i = 0
    while True:
        x = a[i] if i < len(a) else None
        y = b[i] if i < len(b) else None
        if x == "#":
            return out + b[i:]
        if y == "#":
            return out + a[i:]
        if x is None or y is None:
            return out if x is None and y is None else None
        if x == "+":
            out.append(y)
        elif y == "+" or x == y:
            out.append(x)
        else:
            return None
        i += 1


def _valid_filter(text: str) -> bool:
    if not text or "\0" in text:
        return False
    levels = text.split("/")
    for i, level in enumerate(levels):
        if ("#" in level and (level != "#" or i != len(levels) - 1)) or ("+" in level and level != "+"):
            return False
    return True


# ---- ACL files ------------------------------------------------------------------------------------

class _Rule(NamedTuple):
    levels: List[str]  # the filter split at "/" (for a pattern: before %c/%u are put in)
    access: int        # READ | WRITE bits; 0 = deny
    text: str


def _add(rules: List[_Rule], rule: _Rule) -> None:
    """Mosquitto's order: deny rules at the front (so a matching deny is seen first), others in order."""
    if rule.access == 0:
        rules.insert(0, rule)
    else:
        rules.append(rule)


class AclFile:
    """A parsed acl_file: the anonymous group (rules before any `user` line, key None), each user's
    group, and the `pattern` rules that apply to every client."""

    def __init__(self, path: str, users: Dict[Optional[str], List[_Rule]], patterns: List[_Rule]) -> None:
        self.path = path
        self.users = users
        self.patterns = patterns

    def subject(self, username: Optional[str], client_id: str) -> "AclSubject":
        """The rules that apply to one client, its patterns filled in, in checking order."""
        groups: List[List[List[str]]] = []
        access: List[List[int]] = []
        own = self.users.get(username)
        if own:
            groups.append([r.levels for r in own])
            access.append([r.access for r in own])
        dangerous = ""
        if self.patterns:
            # Mosquitto: with patterns in use a username or client id containing + or # is denied
            # everything the user's own rules do not allow (it could widen its patterns).
            for kind, value in (("username", username), ("client id", client_id)):
                if value is not None and ("+" in value or "#" in value) and not dangerous:
                    dangerous = f"ACL denying access to client with dangerous {kind} \"{value}\""
            if not dangerous:
                expanded, bits = [], []
                for r in self.patterns:
                    if "%u" in r.text and username is None:
                        continue
                    text = r.text.replace("%c", client_id)
                    if username is not None:
                        text = text.replace("%u", username)
                    expanded.append(text.split("/"))
                    bits.append(r.access)
                groups.append(expanded)
                access.append(bits)
        return AclSubject(groups, access, username, client_id, dangerous)


class AclSubject:
    """One client's view of an ACL file: may it read or write a topic, may it subscribe to a filter.
    Decisions per topic are cached (both bits at once), so a client publishing to the same few topics
    walks its rules once per topic."""

    __slots__ = ("_groups", "_access", "_cache", "username", "client_id", "dangerous")

    def __init__(self, groups: List[List[List[str]]], access: List[List[int]], username: Optional[str],
                 client_id: str, dangerous: str = "") -> None:
        self._groups = groups
        self._access = access
        self._cache: Dict[str, int] = {}
        self.username = username
        self.client_id = client_id
        #: Mosquitto's notice when patterns are in use and the username or client id holds + or #
        self.dangerous = dangerous

    def _bits(self, topic: str) -> int:
        levels = topic.split("/")
        allowed = 0
        for want in (READ, WRITE):
            if self._decide(levels, want):
                allowed |= want
        return allowed

    def _decide(self, levels: List[str], want: int) -> bool:
        for group, access in zip(self._groups, self._access):
            for rule, bits in zip(group, access):
                if _covers(rule, levels):
                    if bits == 0:
                        return False  # an explicit deny ends the search
                    if bits & want:
                        return True
        return False

    def allowed(self, topic: str) -> int:
        bits = self._cache.get(topic)
        if bits is None:
            cache = self._cache
            if len(cache) >= ACL_CACHE_SIZE:
                cache.clear()
            bits = cache[topic] = self._bits(topic)
        return bits

    def may_read(self, topic: str) -> bool:
        return bool(self.allowed(topic) & READ)

    def may_write(self, topic: str) -> bool:
        return bool(self.allowed(topic) & WRITE)

    def may_subscribe(self, topic_filter: str) -> bool:
        """Could any topic the filter matches be read? True when a rule granting read shares a topic
        with the filter and no deny rule checked before it covers all of that shared part. (A part
        covered only by several deny rules together is granted; delivery checks each message anyway.)"""
        levels = topic_filter.split("/")
        denies: List[List[str]] = []
        for group, access in zip(self._groups, self._access):
            for rule, bits in zip(group, access):
                if bits == 0:
                    denies.append(rule)
                    continue
                if not bits & READ:
                    continue
                shared = _overlap(levels, rule)
                if shared is not None and not any(_covers(d, shared) for d in denies):
                    return True
        return False


class _Open(AclSubject):
    """No acl_file on this listener: everything allowed."""

    def __init__(self) -> None:
        super().__init__([], [], None, "")

    def allowed(self, topic: str) -> int:
        return READ | WRITE

    def may_subscribe(self, topic_filter: str) -> bool:
        return True


#: The subject of a client on a listener without an acl_file.
OPEN: AclSubject = _Open()


def parse_acl_file(text: str, path: str) -> AclFile:
    """Mosquitto 2.0's acl_file syntax: `#` comments, `user NAME`, `topic [read|write|readwrite|deny]
    FILTER`, `pattern [ACCESS] FILTER` (with %c and %u). An error names the file and line (Mosquitto
    refuses to start on these too)."""
    users: Dict[Optional[str], List[_Rule]] = {}
    patterns: List[_Rule] = []
    user: Optional[str] = None
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        head, rest = parts[0], parts[1] if len(parts) > 1 else ""

        def fail(message: str) -> ConfigError:
            return ConfigError(message, path, number, "acl_file")

        if head in ("topic", "pattern"):
            if not rest:
                raise fail(f"empty topic: {head} [read|write|readwrite|deny] FILTER")
            words = rest.split(None, 1)
            first, topic = words[0], words[1].strip() if len(words) > 1 else ""
            if topic:
                if first not in _ACCESS:
                    raise fail(f"invalid access type {first!r}: one of read, write, readwrite, deny")
                access = _ACCESS[first]
            else:
                topic, access = first, READ | WRITE
            if not _valid_filter(topic):
                raise fail(f"invalid topic filter {topic!r}")
            rule = _Rule(topic.split("/"), access, topic)
            if head == "topic":
                _add(users.setdefault(user, []), rule)
            else:
                _add(patterns, rule)
        elif head == "user":
            name = rest
            if not name:
                raise fail("missing username: user NAME")
            user = name
            users.setdefault(user, [])
        else:
            raise fail(f"invalid line {line.strip()!r}: expected topic, pattern, user or a # comment")
    return AclFile(path, users, patterns)


def load_acl_file(path: str) -> AclFile:
    return parse_acl_file(_read(path, "acl_file"), path)


# ---- one listener's (or the broker's) security settings ---------------------------------------

class Security:
    """What the core asks at CONNECT, and the ACL a connection gets. `index` is the listener's index in
    config.listeners with per_listener_settings true, -1 for the broker-wide settings."""

    def __init__(self, index: int, allow_anonymous: bool, passwords: Optional[PasswordFile],
                 acl: Optional[AclFile], auto_id_prefix: str, allow_zero_length_clientid: bool,
                 reason: str = "") -> None:
        self.index = index
        self.allow_anonymous = allow_anonymous
        self.passwords = passwords
        self.acl = acl
        self.auto_id_prefix = auto_id_prefix
        self.allow_zero_length_clientid = allow_zero_length_clientid
        #: why allow_anonymous has its value, for the start-up line
        self.reason = reason

    def connect(self, username: Optional[str], password: Optional[bytes],
                identity: bool = False) -> Tuple[int, Optional[PasswordEntry]]:
        """(ALLOW, None), (BAD_CREDENTIALS or NOT_AUTHORISED, None), or (ALLOW, entry): accepted if
        `entry.verify(password)` (the caller may run it on another thread; `known_good` first).
        `identity`: the username comes from the client's certificate, no password is checked."""
        if username is None:
            return (ALLOW if self.allow_anonymous else NOT_AUTHORISED), None
        if identity:
            return ALLOW, None
        pw = self.passwords
        if pw is None:
            # Mosquitto 2.0: without a password file a username proves nothing; it is anonymous.
            return (ALLOW if self.allow_anonymous else NOT_AUTHORISED), None
        entry = pw.entries.get(username)
        if entry is None or password is None:
            return BAD_CREDENTIALS, None
        if pw.known_good(username, entry, password):
            return ALLOW, None
        return ALLOW, entry

    def subject(self, username: Optional[str], client_id: str) -> AclSubject:
        return OPEN if self.acl is None else self.acl.subject(username, client_id)

    def describe(self) -> str:
        """The start-up line: which clients this listener (or the broker) lets in."""
        if self.allow_anonymous:
            who = "Anonymous clients are allowed"
        else:
            who = "Anonymous clients are refused"
        creds = (f"; usernames are checked against {self.passwords.path}" if self.passwords is not None
                 else "" if self.allow_anonymous else "; no password_file, so no client can connect")
        acl = f"; ACL from {self.acl.path}" if self.acl is not None else ""
        return f"{who} ({self.reason}){creds}{acl}."


def refusal(code: int, username: Optional[str]) -> str:
    """Why a CONNECT was refused, for the log line (Mosquitto's "not authorised" first)."""
    if code == BAD_CREDENTIALS:
        return f"not authorised, bad username or password (username {username!r})"
    if username is None:
        return "not authorised, anonymous clients are not allowed"
    return f"not authorised, username {username!r} with no password_file, and anonymous clients are not allowed"


class PendingAuth:
    """A CONNECT waiting for its password hash to be verified off the loop. The core puts it in the
    connection's `paused_by`, as a full queue does: the loop stops reading the connection, and what it
    sent after the CONNECT waits in its stash until the answer comes."""
    __slots__ = ("conn", "packet", "security", "entry", "username", "blocking", "last_progress")

    def __init__(self, conn: object, packet: object, security: Security, entry: PasswordEntry,
                 username: str) -> None:
        self.conn = conn
        self.packet = packet
        self.security = security
        self.entry = entry
        self.username = username
        self.blocking: set = set()  # what flow control expects of a session: it holds back no one
        self.last_progress = float("inf")  # and never counts as stalled


def security_lines(default: Security, per_listener: List[Optional[Security]],
                   config: Config) -> List[Tuple[int, str]]:
    """What to log at start and after a reload: the notes of each password file read, and who may
    connect (one line, or one per listener with per_listener_settings true)."""
    lines: List[Tuple[int, str]] = []
    seen = set()
    for sec in [default] + per_listener:
        if sec is not None and sec.passwords is not None and id(sec.passwords) not in seen:
            seen.add(id(sec.passwords))
            lines.extend(sec.passwords.notes)
    if config.per_listener_settings and per_listener:
        for listener, sec in zip(config.listeners, per_listener):
            if sec is not None:
                lines.append((L.NOTICE, f"{listener.describe().capitalize()}: {sec.describe()}"))
    else:
        lines.append((L.NOTICE, default.describe()))
    return lines


def _anonymous(explicit: Optional[bool], has_listeners: bool) -> Tuple[bool, str]:
    if explicit is not None:
        return explicit, f"allow_anonymous {'true' if explicit else 'false'}"
    if not has_listeners:
        return True, "local only mode: no listener is configured"
    return False, "a listener is configured and allow_anonymous is not set to true, as in Mosquitto 2.0"


def load_security(config: Config) -> Tuple[Security, List[Optional[Security]]]:
    """The broker-wide Security, and one per listener (None = the broker-wide one). Reads the files;
    a ConfigError names the option (and listener[i] for a listener's), the caller adds file and line."""
    def build(index: int, allow: Optional[bool], pw: Optional[str], acl: Optional[str], prefix: str,
              zero: bool) -> Security:
        anonymous, reason = _anonymous(allow, bool(config.listeners))
        passwords = load_password_file(pw) if pw else None
        acl_file = load_acl_file(acl) if acl else None
        return Security(index, anonymous, passwords, acl_file, prefix, zero, reason)

    default = build(-1, config.allow_anonymous, config.password_file, config.acl_file, config.auto_id_prefix,
                    config.allow_zero_length_clientid)
    per: List[Optional[Security]] = []
    if config.per_listener_settings:
        for i, listener in enumerate(config.listeners):
            try:
                per.append(_listener_security(i, listener, config, build))
            except ConfigError as exc:
                raise ConfigError(_strip(exc), option=f"listener[{i}].{exc.option}") from None
    return default, per


def _listener_security(i: int, listener: Listener, config: Config, build) -> Security:  # type: ignore[no-untyped-def]
    prefix = listener.auto_id_prefix if listener.auto_id_prefix is not None else config.auto_id_prefix
    zero = (listener.allow_zero_length_clientid if listener.allow_zero_length_clientid is not None
            else config.allow_zero_length_clientid)
    return build(i, listener.allow_anonymous, listener.password_file, listener.acl_file, prefix, zero)


def _strip(exc: ConfigError) -> str:
    text = str(exc)
    prefix = f"{exc.option}: " if exc.option else ""
    return text[len(prefix):] if text.startswith(prefix) else text
