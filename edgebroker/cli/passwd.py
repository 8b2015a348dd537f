"""`edgebroker-passwd`: manage a password file, with mosquitto_passwd(1)'s flags and file format.

    edgebroker-passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c | -D] FILE USERNAME
    edgebroker-passwd [-H sha512-pbkdf2|sha512] [-I ITERATIONS] [-c] -b FILE USERNAME PASSWORD
    edgebroker-passwd [-H ...] [-I ...] -U FILE

Without -b the password is asked for twice on the terminal, without echo. The file is what
mosquitto_passwd 2.0 writes (`user:$7$ITERATIONS$SALT$HASH` by default), so Mosquitto reads it too, and
this tool edits files mosquitto_passwd wrote. Other lines (comments, other users) are kept as they are;
the file is replaced atomically (written beside it, then renamed), keeping its permissions, and its owner
and group when run as root.

One difference: -U hashes the plaintext passwords of a file and leaves lines that already hold a hash
alone (mosquitto_passwd -U would hash the hash, locking those users out).

Exit codes: 0 done, 1 an error (message on stderr), 2 bad usage.
"""
from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile

from ..auth import DEFAULT_ITERATIONS, hash_password, parse_password_file

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

HASHES = ("sha512-pbkdf2", "sha512")


class _Fail(Exception):
    """Ends the command with exit code 1 and this message."""
    prefix = "Error"


class _NotFound(_Fail):
    prefix = "Warning"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgebroker-passwd",
        description="Add, change or delete a user in a password file for edgebroker (and Mosquitto), as "
                    "mosquitto_passwd does.")
    p.add_argument("-H", dest="hash", default="sha512-pbkdf2", metavar="HASH",
                   help="hash: sha512-pbkdf2 (default, recommended) or sha512 (Mosquitto 1.x)")
    p.add_argument("-I", dest="iterations", type=int, default=DEFAULT_ITERATIONS, metavar="ITERATIONS",
                   help=f"PBKDF2 iterations for sha512-pbkdf2 (default {DEFAULT_ITERATIONS}, as mosquitto_passwd; "
                        "more is slower for guessers and for every first login: see docs/security.md)")
    p.add_argument("-c", dest="create", action="store_true", help="create the file, replacing an existing one")
    p.add_argument("-D", dest="delete", action="store_true", help="delete the user")
    p.add_argument("-b", dest="batch", action="store_true", help="take the password from the command line")
    p.add_argument("-U", dest="update", action="store_true",
                   help="hash every plaintext password of FILE (lines already hashed are left alone)")
    p.add_argument("file", metavar="FILE")
    p.add_argument("username", nargs="?", metavar="USERNAME")
    p.add_argument("password", nargs="?", metavar="PASSWORD")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        _check(args, parser)
        if args.update:
            _update(args)
        elif args.delete:
            _delete(args)
        else:
            _set(args)
    except _Fail as exc:
        print(f"{exc.prefix}: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if args.hash not in HASHES:
        raise _Fail(f"Unknown hash type '{args.hash}'")
    if args.iterations < 1:
        raise _Fail("Number of iterations must be > 0.")
    if args.create and args.delete:
        raise _Fail("-c and -D cannot be used together.")
    if args.update:
        if args.create or args.delete or args.batch or args.username is not None:
            parser.error("-U takes only FILE (and -H, -I)")
        return
    if args.username is None:
        parser.error("USERNAME is missing")
    if args.batch != (args.password is not None) or (args.delete and args.batch):
        parser.error("a PASSWORD argument goes with -b (and not with -D)")
    if ":" in args.username:
        raise _Fail("Username must not contain the ':' character.")
    if not args.username or args.username != args.username.strip() or "\n" in args.username:
        raise _Fail("Username must not be empty, or start or end with spaces.")


def _hash(args: argparse.Namespace, password: str) -> str:
    return hash_password(password.encode("utf-8"), args.hash, args.iterations)


def _read_lines(path: str) -> List[str]:
    try:
        with open(path, "r", encoding="utf-8", newline="") as f:
            return f.read().splitlines()
    except OSError as exc:
        raise _Fail(f"Unable to open password file {path}. {exc.strerror or exc}.") from None


def _write_lines(path: str, lines: List[str]) -> None:
    """Write beside the file, then rename over it (a crash leaves the old file or the new one)."""
    directory = os.path.dirname(os.path.abspath(path))
    owner = None
    try:
        st = os.stat(path)
        mode = st.st_mode & 0o7777
        owner = (st.st_uid, st.st_gid)
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        mode = 0o666 & ~mask
    try:
        fd, tmp = tempfile.mkstemp(prefix=".edgebroker-passwd-", dir=directory)
    except OSError as exc:
        raise _Fail(f"Unable to write password file {path}. {exc.strerror or exc}.") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fsync(f.fileno())
        if owner is not None and (os.stat(tmp).st_uid, os.stat(tmp).st_gid) != owner:
            # Keep the owner and group too (root:edgebroker 0640 on a gateway, so the broker can read it),
            # as mosquitto_passwd does by rewriting in place. Only root may give a file away.
            try:
                os.chown(tmp, owner[0], owner[1])
            except PermissionError:
                pass
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _Fail(f"Unable to write password file {path}. {exc.strerror or exc}.") from None


def _user_of(line: str) -> Optional[str]:
    if line.startswith("#") or ":" not in line:
        return None
    return line.split(":", 1)[0].strip()


def _prompt() -> str:
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Reenter password: ")
    except (EOFError, KeyboardInterrupt):
        print(file=sys.stderr)
        raise _Fail("No password given.") from None
    if first != second:
        raise _Fail("Passwords do not match.")
    if not first:
        raise _Fail("Empty password.")
    return first


def _set(args: argparse.Namespace) -> None:
    lines = [] if args.create else _read_lines(args.file)
    password = args.password if args.batch else _prompt()
    entry = f"{args.username}:{_hash(args, password)}"
    out: List[str] = []
    done = False
    for line in lines:
        if _user_of(line) == args.username:
            if not done:
                out.append(entry)  # in place of the first line for the user; later ones dropped
                done = True
            continue
        out.append(line)
    if not done:
        out.append(entry)
    _write_lines(args.file, out)


def _delete(args: argparse.Namespace) -> None:
    lines = _read_lines(args.file)
    kept = [line for line in lines if _user_of(line) != args.username]
    if len(kept) == len(lines):
        raise _NotFound(f"User {args.username} not found in password file.")
    _write_lines(args.file, kept)


def _update(args: argparse.Namespace) -> None:
    lines = _read_lines(args.file)
    out: List[str] = []
    for number, line in enumerate(lines, 1):
        user = _user_of(line)
        if user is None:
            if line.strip() and not line.startswith("#"):
                raise _Fail(f"Corrupt password file at line {number}.")
            out.append(line)
            continue
        secret = line.split(":", 1)[1]
        if parse_password_file(line, args.file).entries:
            out.append(line)  # already a hash Mosquitto and edgebroker read: left alone
            continue
        out.append(f"{user}:{_hash(args, secret.strip())}")
    _write_lines(args.file, out)


if __name__ == "__main__":
    sys.exit(main())
