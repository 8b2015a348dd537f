"""Retained messages: one per topic, in a tree of topic levels.

A new subscription gets the retained messages its filter matches [MQTT-3.3.1-6]. Testing every retained
topic against every filter of a SUBSCRIBE costs filters x retained (20,000 retained messages and one
SUBSCRIBE of 1,000 wildcard filters froze the broker for 8 s); walking a tree of levels costs only the
branches the filter allows, as Mosquitto's retain tree does: a literal level follows one child, `+` every
child, `#` the whole subtree. The walks use a stack of their own, never recursion. A dict beside the tree
answers lookups by topic and keeps the order topics were first retained (restart, `$SYS` figures).

The values are opaque here (the core stores its Message objects); `size` is what `payload_bytes` sums.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Generic, Iterator, List, Optional, Tuple, TypeVar

    V = TypeVar("V")
else:
    V = None

    class Generic:
        """`Generic[V]` for the type checker; at run time (no `typing`) the tree derives from object."""

        def __class_getitem__(cls, item: object) -> type:
            return object

__all__ = ["RetainedTree"]


class _Node:
    __slots__ = ("children", "value", "size")

    def __init__(self) -> None:
        self.children: Dict[str, _Node] = {}
        self.value: object = None
        self.size = 0


class RetainedTree(Generic[V]):
    def __init__(self) -> None:
        self._root = _Node()
        self._by_topic: Dict[str, V] = {}
        #: payload bytes of everything retained, for $SYS/broker/store/messages/bytes
        self.payload_bytes = 0

    # ---- the mapping side ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_topic)

    def __contains__(self, topic: object) -> bool:
        return topic in self._by_topic

    def __getitem__(self, topic: str) -> V:
        return self._by_topic[topic]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_topic)

    def get(self, topic: str) -> Optional[V]:
        return self._by_topic.get(topic)

    def items(self):  # type: ignore[no-untyped-def]
        return self._by_topic.items()

    def values(self):  # type: ignore[no-untyped-def]
        return self._by_topic.values()

    def set(self, topic: str, value: V, size: int) -> None:
        """Retain `value` for `topic`, replacing what was there [MQTT-3.3.1-5]."""
        node = self._root
        for level in topic.split("/"):
            child = node.children.get(level)
            if child is None:
                child = node.children[level] = _Node()
            node = child
        self.payload_bytes += size - node.size
        node.value = value
        node.size = size
        self._by_topic[topic] = value

    def pop(self, topic: str) -> Optional[V]:
        """Forget the message retained for `topic`; returns it, or None when there was none."""
        value = self._by_topic.pop(topic, None)
        if value is None:
            return None
        levels = topic.split("/")
        path: List[_Node] = [self._root]
        for level in levels:
            path.append(path[-1].children[level])
        node = path[-1]
        self.payload_bytes -= node.size
        node.value = None
        node.size = 0
        # Prune the branch back to the last node still in use: a churn of unique topics must not grow
        # the tree forever.
        for i in range(len(levels), 0, -1):
            node = path[i]
            if node.value is not None or node.children:
                break
            del path[i - 1].children[levels[i - 1]]
        return value

    # ---- matching a filter --------------------------------------------------------------------------

    def matching(self, topic_filter: str) -> List[V]:
        """The retained messages whose topics `topic_filter` matches, in tree order (depth first, each
        level's children in the order they were created). A topic starting with `$` is not matched by
        a filter starting with a wildcard [MQTT-4.7.2-1]."""
        if "+" not in topic_filter and "#" not in topic_filter:
            value = self._by_topic.get(topic_filter)
            return [] if value is None else [value]
        out: List[V] = []
        if not self._by_topic:
            return out
        levels = topic_filter.split("/")
        n = len(levels)
        stack: List[Tuple[_Node, int]] = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if i == n:
                if node.value is not None:
                    out.append(node.value)  # type: ignore[arg-type]
                continue
            level = levels[i]
            if level == "#":
                # The parent level too: "sport/#" matches "sport" (section 4.7.1.2); then the subtree.
                if node.value is not None and i:
                    out.append(node.value)  # type: ignore[arg-type]
                self._subtree(node, i == 0, out)
            elif level == "+":
                pending = [(child, i + 1) for key, child in node.children.items()
                           if i or not key.startswith("$")]
                pending.reverse()  # popped in creation order
                stack += pending
            else:
                child = node.children.get(level)
                if child is not None:
                    stack.append((child, i + 1))
        return out

    @staticmethod
    def _subtree(node: _Node, top: bool, out: List) -> None:
        """Every value below `node`, depth first; at the top level without the `$` topics."""
        pending = [child for key, child in node.children.items() if not (top and key.startswith("$"))]
        pending.reverse()
        while pending:
            node = pending.pop()
            if node.value is not None:
                out.append(node.value)
            if node.children:
                children = list(node.children.values())
                children.reverse()
                pending += children
