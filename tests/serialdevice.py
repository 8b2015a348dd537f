"""A serial device for tests: a real pseudo-terminal behind a /dev/serial/by-id-like symlink.

The broker opens the symlink with pyserial, as it would a USB adapter's by-id path; the test holds the
master side and is the board. `unplug()` closes the master (the tty hangs up, as when an adapter is
pulled); `replug()` makes a new pseudo-terminal and points the same symlink at it (udev does that for a
replugged adapter).
"""
from __future__ import annotations

import os
import select
import time
from pathlib import Path
from typing import Callable, List, Optional


class PtyDevice:
    def __init__(self, directory: Path, name: str = "usb-Test_Board-if00-port0") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.link = directory / name
        self.master = -1
        self.received = bytearray()
        self.replug()

    @property
    def path(self) -> str:
        return str(self.link)

    def replug(self) -> None:
        assert self.master < 0, "unplug first"
        master, slave = os.openpty()
        tty = os.ttyname(slave)
        os.close(slave)  # the broker opens it by name
        os.set_blocking(master, False)
        tmp = self.link.with_name(self.link.name + ".new")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(tty, tmp)
        os.replace(tmp, self.link)  # atomically, as udev renames its links
        self.master = master

    def unplug(self) -> None:
        os.close(self.master)
        self.master = -1

    def close(self) -> None:
        if self.master >= 0:
            self.unplug()
        if os.path.lexists(self.link):
            os.unlink(self.link)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.master, view)
            except BlockingIOError:
                select.select([], [self.master], [], 1.0)
                continue
            view = view[n:]

    def read_available(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        self.received += data
        return data

    def wait_received(self, condition: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
        """Read what the broker writes until `condition(all received so far)` holds; returns it."""
        deadline = time.monotonic() + timeout
        while not condition(bytes(self.received)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the board did not receive what was expected; got {bytes(self.received)!r}")
            select.select([self.master], [], [], min(left, 0.5))
            self.read_available()
        return bytes(self.received)

    def take(self) -> bytes:
        data = bytes(self.received)
        self.received.clear()
        return data


def frames_in(data: bytes) -> List[bytes]:
    """The complete frames (with their 0x00) in a byte string."""
    parts = data.split(b"\x00")
    return [p + b"\x00" for p in parts[:-1] if p]


def count_frames(data: bytes, frame: Optional[bytes] = None) -> int:
    return sum(1 for f in frames_in(data) if frame is None or f == frame)
