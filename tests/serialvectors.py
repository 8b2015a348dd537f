"""The test vectors of docs/serial-protocol.md: every line of a ```vectors block is one JSON object.

Shared by tests/test_frames.py (CPython) and tests/test_micropython.py (MicroPython), which check the
same vectors against the same codec files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

DOC = Path(__file__).resolve().parent.parent / "docs" / "serial-protocol.md"


def load_vectors(path: Path = DOC) -> List[Dict[str, object]]:
    vectors = []
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip() == "```vectors":
            inside = True
        elif line.strip() == "```":
            inside = False
        elif inside and line.strip():
            vector = json.loads(line)
            vector["_line"] = number
            vectors.append(vector)
    return vectors


def by_kind(kind: str) -> List[Dict[str, object]]:
    return [v for v in load_vectors() if kind in v]


def unhex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))
