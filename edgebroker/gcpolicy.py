"""The cyclic garbage collector's settings for a running broker (docs/architecture.md, "Garbage
collection", has the measurements).

Nothing in the broker relies on the collector: the paths that made reference cycles (a client closed
for a malformed packet, a TLS connection, a bridge's failed name lookup) break them where they are
made, so a closed connection is freed by its reference count. What the collector costs is then its
young-generation passes while the heap grows (a connect storm, a queue filling): with the interpreter's
default threshold of 700 it walks the young objects every 700 allocations and the middle generation
every 7,000, about a tenth of the broker's CPU per connection in S6's connect phase. `settle()` raises
the thresholds, so it runs about fourteen times less often there; it stays on, as a safety net for a
cycle made elsewhere (the standard library, a future change), found after at most THRESHOLDS[0]
allocations instead of 700.
"""
from __future__ import annotations

import gc

__all__ = ["THRESHOLDS", "settle"]

#: gc.set_threshold's (young, middle, old) once the broker has started; the interpreter's are (700, 10, 10)
THRESHOLDS = (10_000, 20, 10)


def settle() -> None:
    """Once start-up is done (listeners bound, the database loaded): the broker's collector thresholds."""
    gc.set_threshold(*THRESHOLDS)
