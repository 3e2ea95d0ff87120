"""Bounded state for the network detectors: fixed time windows, fragment extents, entropy.

Every structure here has a hard cap, so traffic (spoofed floods included) can cost CPU but
never unbounded memory.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class Window:
    """Counters, capped sets and fired flags for one fixed time window; all cleared on roll."""

    __slots__ = ("counts", "fired", "length", "max_keys", "max_set_keys", "sets", "start", "stats")

    def __init__(
        self, length: float, max_keys: int, max_set_keys: int, stats: Counter[str]
    ) -> None:
        self.length = length
        self.max_keys = max_keys
        self.max_set_keys = max_set_keys
        self.stats = stats
        self.start = 0.0
        self.counts: dict[object, int] = {}
        self.sets: dict[object, set[object]] = {}
        self.fired: set[object] = set()

    def roll(self, now: float) -> bool:
        """Start a new window if this one is over (or the clock went back); True if so."""
        if now - self.start < self.length and now >= self.start:
            return False
        self.start = now
        if self.counts or self.sets or self.fired:
            self.counts = {}
            self.sets = {}
            self.fired = set()
        return True

    def add(self, key: object, n: int = 1) -> int:
        """Add n to key's counter; returns the new value, or 0 when the table is full."""
        counts = self.counts
        value = counts.get(key)
        if value is None:
            if len(counts) >= self.max_keys:
                self.stats["untracked"] += 1
                return 0
            value = 0
        value += n
        counts[key] = value
        return value

    def add_member(self, key: object, member: object, cap: int) -> int:
        """Add member to key's set (kept at most `cap` large); returns the set's size."""
        members = self.sets.get(key)
        if members is None:
            if len(self.sets) >= self.max_set_keys:
                self.stats["untracked"] += 1
                return 0
            members = self.sets[key] = set()
        if len(members) < cap:
            members.add(member)
        return len(members)

    def fire_once(self, key: object) -> bool:
        """True the first time per window (and bounded: past the cap it stays quiet)."""
        if key in self.fired or len(self.fired) >= self.max_keys:
            return False
        self.fired.add(key)
        return True


@dataclass(slots=True)
class Datagram:
    """The fragments seen of one IP datagram (offsets in bytes of the IP payload)."""

    first: float
    extents: list[tuple[int, int]] = field(default_factory=list)
    covered: int = 0
    total: int = -1  # size known once the last fragment arrived
    reported: bool = False


def entropy(data: bytes | str) -> float:
    """Shannon entropy in bits per symbol."""
    n = len(data)
    if n == 0:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


def randomness(data: bytes) -> float:
    """Entropy of the bytes and of their XOR with the next byte, whichever is lower.

    The second term keeps counting patterns (ping's 0x00, 0x01, ... fill) from looking random:
    their byte histogram is flat, their neighbour differences are not.
    """
    n = len(data)
    if n < 2:
        return 0.0
    a = int.from_bytes(data[1:], "big")
    b = int.from_bytes(data[:-1], "big")
    return min(entropy(data), entropy((a ^ b).to_bytes(n - 1, "big")))


def expire(table: OrderedDict[Any, Any], old: Callable[[Any], bool]) -> None:
    """Drop entries from the head of an oldest-first table while they are too old."""
    while table:
        key = next(iter(table))
        if not old(table[key]):
            return
        table.popitem(last=False)
