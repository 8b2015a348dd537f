"""The service manager's end of systemd's notify protocol, for tests: a bound datagram socket whose
messages (KEY=VALUE lines) are read with deadlines, never with sleeps."""
from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Dict, List, Optional

TIMEOUT = 10.0


class Manager:
    """The service manager's end: a bound datagram socket; `expect` returns the next datagram holding
    all the given KEY=VALUE pairs (a value of None: the key with any value), keeping the others seen."""

    def __init__(self, address: str, path: Optional[Path] = None) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path) if path is not None else "\0" + address[1:])
        self.seen: List[Dict[str, str]] = []

    def next(self, timeout: float = TIMEOUT) -> Dict[str, str]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except socket.timeout:
            raise AssertionError(f"no notification within {timeout}s; seen: {self.seen}") from None
        fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
        self.seen.append(fields)
        return fields

    def expect(self, timeout: float = TIMEOUT, **want: Optional[str]) -> Dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no notification with {want} within {timeout}s; seen: {self.seen}")
            fields = self.next(left)
            if all(k in fields and (v is None or fields[k] == v) for k, v in want.items()):
                return fields

    def close(self) -> None:
        self.sock.close()
