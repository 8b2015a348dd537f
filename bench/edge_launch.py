"""Start edgebroker with max_queued_messages set, for a CLI that has no configuration file option.

Used by scenarios S2q and S8 (which need both brokers to queue more messages than edgebroker's default
1000) only when `python -m edgebroker --help` lacks `--config-file`; otherwise bench/brokers.py passes
a generated TOML with -c. It mirrors the CLI of that time: the same Config defaults apart from that one
value, the same logger, the same Server, the same signal handling.

    python bench/edge_launch.py -p PORT --max-queued-messages N
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from edgebroker import log as L  # noqa: E402
from edgebroker.config import Config  # noqa: E402
from edgebroker.server import Server  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-p", "--port", type=int, required=True)
    p.add_argument("--max-queued-messages", type=int, required=True)
    args = p.parse_args()
    log = L.Logger(L.DEFAULT_TYPES)
    config = Config(max_queued_messages=args.max_queued_messages)
    server = Server(config, log=log, default_port=args.port)

    def stop(signum: int, frame: object) -> None:
        server.shutdown()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
