"""`edgebroker`: start the broker, with mosquitto(8)'s everyday flags.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM) or a valid `--check-config`, 1 when the broker cannot
start (bad configuration, port in use, bad value), 2 for bad command-line usage.

`-c FILE` reads a TOML or mosquitto.conf file (edgebroker.configfile); every error in it is reported as
`Error: FILE:LINE: option: message` before anything binds. SIGHUP re-reads it (a bad file is logged
and the running configuration kept). `-d` forks into the background after the listeners are bound and
`user` drops root once the database is open (cli/startup.py). An error that stops the start once the
log is set up goes to the configured log and to the terminal (with -d, through the waiting foreground
process), and the exit status is 1.
"""
from __future__ import annotations

import os
import _signal  # signal.py's enums would import enum (0.4 MiB): bench/README.md, Issue 19
import sys

from .. import __version__
from .. import log as L
from .. import record
from ..auth import Security, load_security, security_lines
from ..config import DEFAULT_PORT, Config
from ..errors import ConfigError, ListenError
from ..gcpolicy import settle
from ..notify import Notifier
from ..server import Server, configure_logger
from ..store import StoreError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    import types
    from typing import Any, Dict, List, Optional, Tuple

    from ..configfile import LoadedConfig

#: types.SimpleNamespace (argparse's Namespace for the plain flags), without the types module.
_Namespace = type(sys.implementation)


def _startup() -> types.ModuleType:
    """cli/startup.py: -t's checks, -d, the user switch; a start that uses none of them does not load it."""
    from . import startup
    return startup


def _parser() -> argparse.ArgumentParser:
    import argparse

    p = argparse.ArgumentParser(
        prog="edgebroker",
        description="An MQTT 3.1/3.1.1 broker for edge gateways. With no options it listens on "
                    "127.0.0.1 and ::1, port 1883, and allows anonymous clients, as Mosquitto 2.0 does "
                    "without a configuration file.")
    p.add_argument("-c", "--config-file", metavar="FILE",
                   help="read the configuration from FILE: TOML (edgebroker.toml), or mosquitto.conf syntax "
                        "(*.conf), which is translated")
    p.add_argument("-t", "--check-config", action="store_true",
                   help="check the file given with -c and exit, starting nothing: its options, and that the "
                        "log file, pid file and persistence directories exist and are writable and the "
                        "listeners' addresses exist here; prints FILE: OK and exits 0, or the errors and exits 1")
    p.add_argument("-p", "--port", type=int, default=None, metavar="PORT",
                   help="port of the default loopback listener (default 1883; 0 picks a free port); ignored "
                        "when the configuration file defines listeners, as in Mosquitto 2.0")
    p.add_argument("-d", "--daemon", action="store_true",
                   help="run in the background (after the listeners are bound, so errors still reach you)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="verbose logging: every log type, every packet (like mosquitto -v)")
    p.add_argument("--version", action="version", version=f"edgebroker version {__version__}")
    return p


#: The flags _plain_args knows: those taking a value, and the switches, by spelling.
_VALUE_FLAGS = {"-c": "config_file", "--config-file": "config_file", "-p": "port", "--port": "port"}
_SWITCHES = {"-t": "check_config", "--check-config": "check_config", "-d": "daemon", "--daemon": "daemon",
             "-v": "verbose", "--verbose": "verbose"}


def _plain_args(argv: List[str]) -> Optional[Any]:
    """The command line when it has only the flags' plain forms (`-c FILE`, `--port=1883`, `-d`), parsed
    without argparse: its help formatter imports shutil (and with it zlib, bz2 and lzma) and gettext
    imports locale, 1.5 MiB of resident memory kept for the broker's whole life (bench/README.md,
    "Issue 19"). None for anything else (help, --version, an abbreviation, a missing or bad value), which
    argparse then parses and reports as always."""
    values: Dict[str, Any] = {"config_file": None, "check_config": False, "port": None, "daemon": False,
                              "verbose": False}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg in _SWITCHES:
            values[_SWITCHES[arg]] = True
            continue
        name, sep, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if name not in _VALUE_FLAGS:
            return None
        if not sep:
            if i == len(argv):
                return None
            value = argv[i]
            i += 1
        if not value or value.startswith("-"):
            return None
        if _VALUE_FLAGS[name] == "port":
            try:
                values["port"] = int(value)
            except ValueError:
                return None
        else:
            values["config_file"] = value
    return _Namespace(**values)


def main(argv: Optional[List[str]] = None) -> int:
    args = _plain_args(sys.argv[1:] if argv is None else argv)
    if args is None:
        args = _parser().parse_args(argv)
    if args.check_config and not args.config_file:
        _parser().error("--check-config needs -c FILE")
    loaded: Optional[LoadedConfig] = None
    security = None
    if args.config_file:
        from ..configfile import load_config  # only with -c: the default start stays small
        try:
            loaded = load_config(args.config_file)
            _check_user(loaded)
            security = _security(loaded)
        except ConfigError as exc:
            for error in getattr(exc, "errors", [exc]):  # ConfigErrors: every refused option at once
                print(f"Error: {error}", file=sys.stderr)
            return 1
        if args.check_config:
            for warning in loaded.warnings:
                print(f"Warning: {warning}", file=sys.stderr)
            for level, line in security_lines(*security, loaded.config):
                if level <= L.WARNING:  # what reading the password files had to say
                    print(line, file=sys.stderr)
            problems = _startup().check_paths(loaded.config)
            for problem in problems:
                print(f"Error: {args.config_file}: {problem}", file=sys.stderr)
            if problems:
                return 1
            print(f"{args.config_file}: OK")
            return 0
        config = loaded.config
    else:
        config = Config()
    if args.verbose:
        config = record.replace(config, verbose=True)
    log = L.Logger()
    try:
        configure_logger(log, config)
    except OSError as exc:
        print(f"Error: cannot open log file {config.log_file}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    log(L.NOTICE, f"edgebroker version {__version__} starting")
    if loaded is None:
        log(L.NOTICE, "Using default config.")
    else:
        log(L.NOTICE, f"Config loaded from {args.config_file}.")
        for warning in loaded.warnings:
            log(L.WARNING, f"Warning: {warning}")
    if not config.listeners:
        log(L.NOTICE, "Starting in local only mode. Connections will only be possible from clients running "
                      "on this machine.")
    elif args.port is not None:
        log(L.WARNING, f"Warning: -p {args.port} ignored: {args.config_file} defines listeners (Mosquitto 2.0 "
                       "ignores -p then too).")
    port = args.port if args.port is not None else DEFAULT_PORT

    def reload() -> Config:
        if not args.config_file:
            return config
        from ..configfile import load_config
        new = load_config(args.config_file)
        _security(new)  # an unreadable password or ACL file: the error names where the option is set
        for warning in new.warnings:
            log(L.WARNING, f"Warning: {warning}")
        return record.replace(new.config, verbose=True) if args.verbose else new.config

    report: List[int] = []  # with -d, in the daemon: the pipe to the foreground process waiting on it
    # A SIGTERM during start-up (a service manager stopping us at once) stops the broker once it runs.
    stop_requested: List[int] = []
    old_handlers = {sig: _signal.signal(sig, lambda signum, frame: stop_requested.append(signum))
                    for sig in (_signal.SIGINT, _signal.SIGTERM)}

    def after_bind() -> None:
        if args.daemon:
            report.append(_startup().daemonize())
        if config.pid_file:
            with open(config.pid_file, "w", encoding="ascii") as f:
                f.write(f"{os.getpid()}\n")
        if _switches_user(config):
            _startup().prepare_data_dir(config)

    def after_open() -> None:
        if _switches_user(config):
            warning = _startup().drop_privileges(config)
            log(L.NOTICE, f"Running as user {config.user}.")
            if warning:
                log(L.WARNING, f"Warning: {warning}")

    def fail(message: str) -> int:
        """A start-up error: to the configured log, to the terminal, and with -d to the waiting process."""
        log(L.ERR, f"Error: {message}")
        if not (log.enabled(L.ERR) and sys.stderr in log.streams):
            print(f"Error: {message}", file=sys.stderr)
        if report:
            _startup().report_failure(report.pop(), message)
        log.close()
        for sig, handler in old_handlers.items():
            _signal.signal(sig, handler)
        return 1

    notifier = Notifier.from_environ()  # systemd Type=notify: READY=1 and friends
    try:
        server = Server(config, log=log, default_port=port, reloader=reload, after_bind=after_bind,
                        notifier=notifier, after_open=after_open, security=security)
    except (ConfigError, StoreError) as exc:
        return fail(str(exc))
    except ListenError as exc:
        where = ""
        if loaded is not None and exc.listener in config.listeners:
            origin = loaded.origins.get(f"listener[{config.listeners.index(exc.listener)}]")
            if origin is not None:
                where = f" (the listener at {origin.file}:{origin.line})"
        return fail(f"{exc}{where}")
    except OSError as exc:
        if exc.filename and exc.filename == config.pid_file:
            return fail(f"cannot write pid file {config.pid_file}: {exc.strerror or exc}")
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        return fail(f"cannot start: {what}")
    except Exception as exc:  # a bug: still reported (with -d the terminal would see nothing)
        import traceback
        log(L.ERR, traceback.format_exc().rstrip())
        return fail(f"cannot start: {exc!r}")
    if report:
        _startup().report_ready(report.pop())

    def stop(signum: int, frame: object) -> None:
        server.shutdown()

    _signal.signal(_signal.SIGINT, stop)
    _signal.signal(_signal.SIGTERM, stop)
    if stop_requested:
        server.shutdown()
    _signal.signal(_signal.SIGHUP, lambda signum, frame: server.request_reload())
    settle()  # the garbage collector's thresholds, start-up done (gcpolicy.py)
    try:
        server.serve_forever()
    finally:
        if config.pid_file:
            try:
                os.unlink(config.pid_file)
            except OSError:
                pass
        log(L.NOTICE, f"edgebroker version {__version__} terminating")
        log.close()
        if notifier is not None:
            notifier.close()
    return 0


def _security(loaded: LoadedConfig) -> Tuple[Security, List[Optional[Security]]]:
    """Read the password and ACL files the configuration names; an error names the file and line of the
    option that names the file (an error inside an ACL file names that file's line)."""
    try:
        return load_security(loaded.config)
    except ConfigError as exc:
        key = exc.option or ""
        if exc.file is not None:  # inside an ACL file: say also where the configuration names it
            config = loaded.config
            keys = (["acl_file"] if config.acl_file == exc.file else []) + [
                f"listener[{i}].acl_file" for i, ls in enumerate(config.listeners) if ls.acl_file == exc.file]
            origin = next((loaded.origins[k] for k in keys if k in loaded.origins), None)
            if origin is None:
                raise
            text = str(exc)[len(f"{exc.file}:{exc.line}: {key}: "):]
            raise ConfigError(f"{text} (the acl_file of {origin.file}:{origin.line})", exc.file, exc.line,
                              key) from None
        text = str(exc)
        raise loaded.error(key, text[len(key) + 2:] if text.startswith(key + ": ") else text) from None


def _switches_user(config: Config) -> bool:
    """Mosquitto switches to `user` only when started as root."""
    return (config.user is not None and config.user != "root" and hasattr(os, "geteuid")
            and os.geteuid() == 0)


def _check_user(loaded: LoadedConfig) -> None:
    if _switches_user(loaded.config):
        import pwd
        try:
            pwd.getpwnam(loaded.config.user)  # type: ignore[arg-type]
        except KeyError:
            raise loaded.error("user", f"no such user {loaded.config.user!r}") from None


if __name__ == "__main__":
    sys.exit(main())
