"""Run one edgebroker Server in its own process, so a test can kill it with SIGKILL and restart it.

    python tests/brokerproc.py --dir DIR [--durability crash] [--max-queued N] [--max-inflight N]
                               [--commit-window-ms N] [-v]

Listens on 127.0.0.1 on an ephemeral port, keeps its database in DIR (a restart reuses the same DIR),
prints `PORT <n>` on stdout (flushed) once bound, logs to stderr, and serves until SIGTERM/SIGINT
(a clean shutdown) or SIGKILL (the crash under test). A database that cannot be used prints
`Error: ...` on stderr and exits 1, like the edgebroker command.

This is a test tool: it builds the Config directly and does not depend on the CLI's options.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgebroker import log as L  # noqa: E402
from edgebroker.config import DURABILITY_LEVELS, Config, Listener  # noqa: E402
from edgebroker.server import Server  # noqa: E402
from edgebroker.store import StoreError  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="brokerproc")
    p.add_argument("--dir", required=True, help="persistence_location")
    p.add_argument("--durability", default="crash", choices=DURABILITY_LEVELS)
    p.add_argument("--max-queued", type=int, default=20000, help="max_queued_messages")
    p.add_argument("--max-inflight", type=int, default=20, help="max_inflight_messages")
    p.add_argument("--commit-window-ms", type=int, default=Config.commit_window_ms, help="commit_window_ms")
    p.add_argument("-v", "--verbose", action="store_true", help="log every packet")
    args = p.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)  # persistence_location must exist (as in Mosquitto)
    log = L.Logger(L.ALL if args.verbose else L.DEFAULT_TYPES, stream=sys.stderr)
    config = Config(listeners=[Listener(0, "127.0.0.1")], allow_anonymous=True, persistence=True,
                    persistence_location=args.dir, durability=args.durability, max_queued_messages=args.max_queued,
                    max_inflight_messages=args.max_inflight, sys_interval=0, verbose=args.verbose,
                    commit_window_ms=args.commit_window_ms)
    try:
        server = Server(config, log=log)
    except StoreError as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1

    def stop(signum: int, frame: object) -> None:
        server.shutdown()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"PORT {server.ports[0]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
