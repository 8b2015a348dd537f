"""`edgebroker`: start the broker, with mosquitto(8)'s everyday flags.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM), 1 when the broker cannot start (port in use,
bad value), 2 for bad command-line usage.
"""
from __future__ import annotations

import argparse
import signal
import sys
from typing import List, Optional

from .. import __version__
from .. import log as L
from ..config import DEFAULT_PORT, Config
from ..errors import ConfigError
from ..server import Server
from ..store import StoreError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgebroker",
        description="An MQTT 3.1/3.1.1 broker for edge gateways. With no options it listens on "
                    "127.0.0.1 and ::1, port 1883, and allows anonymous clients, as Mosquitto 2.0 does "
                    "without a configuration file.")
    p.add_argument("-p", "--port", type=int, default=DEFAULT_PORT, metavar="PORT",
                   help="port of the default loopback listener (default 1883; 0 picks a free port)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="verbose logging: every log type, every packet (like mosquitto -v)")
    p.add_argument("--version", action="version", version=f"edgebroker version {__version__}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    log = L.Logger(L.ALL if args.verbose else L.DEFAULT_TYPES)
    log(L.NOTICE, f"edgebroker version {__version__} starting")
    log(L.NOTICE, "Using default config.")
    log(L.NOTICE, "Starting in local only mode. Connections will only be possible from clients running "
                  "on this machine.")
    try:
        config = Config(verbose=args.verbose)
        server = Server(config, log=log, default_port=args.port)
    except (ConfigError, StoreError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"Error: cannot listen on port {args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1

    def stop(signum: int, frame: object) -> None:
        server.shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    finally:
        log(L.NOTICE, f"edgebroker version {__version__} terminating")
    return 0


if __name__ == "__main__":
    sys.exit(main())
