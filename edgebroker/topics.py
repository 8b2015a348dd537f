"""The subscription trie: topic filters as paths of levels, with `+` and `#` branches.

match(topic) walks literal, `+` and `#` children level by level (Mosquitto's subs.c design), never a
scan of every filter. Only filters with a wildcard are in the trie: a filter without one matches one
topic name, itself, so those are a dict from that name to its subscribers, and a topic no wildcard
filter can reach costs one lookup there instead of a walk (a gateway's devices each subscribe to a
topic of their own: 2,000 of them made the walk a third of the broker's work per delivery). Such a
topic usually has one subscriber: it is kept as a (subscriber, qos) pair, and a dict of its own only
comes with the second (a dict of one is 224 bytes, the pair 56: 168 bytes less per device).
Results are cached per topic name and the cache is dropped on every (un)subscribe, so a steady
stream to the same topics costs one dict lookup per publish; while no filter has a wildcard, a topic
with one subscriber or none is answered from the literal lookup without being cached.
A topic name starting with `$` is not matched by a filter starting with a wildcard [MQTT-4.7.2-1].
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Hashable, List, Tuple, Union

    #: The subscribers of a filter without a wildcard: one (subscriber, qos) pair, or a dict of two or more.
    _Exact = Union[Tuple[Hashable, int], Dict[Hashable, int]]

__all__ = ["TopicTree", "filter_matches"]

#: Distinct topic names whose subscriber sets are cached; past it the cache starts over (bounds memory
#: when topics are unbounded, e.g. one per device and reading).
MATCH_CACHE_SIZE = 10_000


#: The children of every leaf: one shared empty dict, never written to (a leaf gets a dict of its own
#: when its first child comes), so a subscription to a topic of its own costs 64 bytes less.
_LEAF: Dict[str, "_Node"] = {}


#: The match of every topic no filter matches: one shared empty dict, never written to (callers do not
#: modify what match returns), so each such topic in the cache costs its entry only, not a dict of 64 bytes
#: (a gateway's sensors publish on many topics that only a few filters match; bench S7: 10,000 retained).
_NO_MATCH: Dict[Hashable, int] = {}


class _Node:
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: Dict[str, _Node] = _LEAF  # a dict of its own with its first child
        self.subscribers: Dict[Hashable, int] = {}


class TopicTree:
    def __init__(self) -> None:
        self._root = _Node()  # filters with a wildcard
        #: filters without one: the topic name each matches -> its subscribers (_Exact)
        self._literal: Dict[str, _Exact] = {}
        self._cache: Dict[str, Dict[Hashable, int]] = {}
        self.count = 0  # subscriptions held

    def subscribe(self, topic_filter: str, subscriber: Hashable, qos: int) -> bool:
        """Add or replace a subscription [MQTT-3.8.4-3]; True when it is new."""
        # A filter with a `+` or `#` goes in the trie (a level that merely contains one is refused by the
        # codec; the trie would treat it as a literal level, so it is right there as well), one without
        # in `_literal`. (The test inline, not a function: a device's connect and close each make one.)
        if "+" in topic_filter or "#" in topic_filter:
            node = self._root
            for level in topic_filter.split("/"):
                child = node.children.get(level)
                if child is None:
                    if node.children is _LEAF:
                        node.children = {}
                    child = node.children[level] = _Node()
                node = child
            subscribers = node.subscribers
        else:
            exact = self._literal.get(topic_filter)
            if exact is None or exact.__class__ is tuple:
                if exact is None or exact[0] == subscriber:  # type: ignore[index]
                    self._literal[topic_filter] = (subscriber, qos)  # the first, or itself again
                    self.count += exact is None
                    self._cache.clear()
                    return exact is None
                subscribers = self._literal[topic_filter] = {exact[0]: exact[1]}  # type: ignore[index]
            else:
                subscribers = exact  # type: ignore[assignment]
        new = subscriber not in subscribers
        subscribers[subscriber] = qos
        self.count += new
        self._cache.clear()
        return new

    def unsubscribe(self, topic_filter: str, subscriber: Hashable) -> bool:
        if "+" not in topic_filter and "#" not in topic_filter:  # a literal filter (see subscribe)
            exact = self._literal.get(topic_filter)
            if exact is None:
                return False
            if exact.__class__ is tuple:
                if exact[0] != subscriber:  # type: ignore[index]
                    return False
                del self._literal[topic_filter]
            else:
                if exact.pop(subscriber, None) is None:  # type: ignore[union-attr]
                    return False
                if len(exact) == 1:
                    self._literal[topic_filter] = next(iter(exact.items()))  # type: ignore[union-attr]
            self.count -= 1
            self._cache.clear()
            return True
        path: List[_Node] = [self._root]
        levels = topic_filter.split("/")
        for level in levels:
            child = path[-1].children.get(level)
            if child is None:
                return False
            path.append(child)
        if path[-1].subscribers.pop(subscriber, None) is None:
            return False
        self.count -= 1
        self._cache.clear()
        # Prune empty branches so a churn of unique filters does not grow the tree forever.
        for i in range(len(levels), 0, -1):
            node = path[i]
            if node.subscribers or node.children:
                break
            del path[i - 1].children[levels[i - 1]]
        return True

    def match(self, topic: str) -> Dict[Hashable, int]:
        """Subscribers whose filters match `topic`, each with its highest granted QoS [MQTT-3.3.5-1].
        The returned dict is shared through the cache: callers must not modify it."""
        result = self._cache.get(topic)
        if result is None:
            exact = self._literal.get(topic)
            if self._root.children:
                result = self._walk(topic.split("/"), topic.startswith("$"))
                if exact.__class__ is tuple:
                    sub, qos = exact  # type: ignore[misc]
                    if result.get(sub, -1) < qos:
                        result[sub] = qos
                elif exact is not None:
                    _merge(result, exact)  # type: ignore[arg-type]
                result = result or _NO_MATCH
            elif exact is None:
                return _NO_MATCH  # not cached: the lookup above costs what a cached answer would
            elif exact.__class__ is tuple:
                # One subscriber, no wildcard filter anywhere: a dict of one is cheaper to make than
                # to keep (a gateway's devices each get messages on a topic of their own: 2,000 of
                # them cached a dict each, about 300 bytes per device after one message to each).
                return {exact[0]: exact[1]}  # type: ignore[index]
            else:  # a dict of its own for the cache, which never changes
                result = dict(exact)  # type: ignore[arg-type]
            if len(self._cache) >= MATCH_CACHE_SIZE:
                self._cache.clear()
            self._cache[topic] = result
        return result

    def _walk(self, levels: List[str], dollar: bool) -> Dict[Hashable, int]:
        """The walk with a stack of its own, not one Python frame per level: a topic's depth is bounded
        by its length only (the codec refuses more than MAX_TOPIC_LEVELS from clients), and recursion
        would end in a RecursionError at about 1,000 levels."""
        out: Dict[Hashable, int] = {}
        n = len(levels)
        stack: List[Tuple[_Node, int]] = [(self._root, 0)]
        pop = stack.pop
        push = stack.append
        while stack:
            node, i = pop()
            children = node.children
            if i == n:
                _merge(out, node.subscribers)
                # "sport/#" also matches "sport": `#` includes the parent level (section 4.7.1.2).
                hash_node = children.get("#")
                if hash_node is not None:
                    _merge(out, hash_node.subscribers)
                continue
            if not children:
                continue
            if i or not dollar:  # [MQTT-4.7.2-1]
                hash_node = children.get("#")
                if hash_node is not None:
                    _merge(out, hash_node.subscribers)
                plus = children.get("+")
                if plus is not None:
                    push((plus, i + 1))
            child = children.get(levels[i])
            if child is not None:
                push((child, i + 1))
        return out


def _merge(out: Dict[Hashable, int], subscribers: Dict[Hashable, int]) -> None:
    for sub, qos in subscribers.items():
        if out.get(sub, -1) < qos:
            out[sub] = qos


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Does one filter match one topic name (for retained messages on subscribe)."""
    if topic_filter == topic:
        return True
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)
