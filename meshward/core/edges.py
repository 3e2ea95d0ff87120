"""Per-edge verdict counts over time: caller -> destination, allowed / alerted / denied per
time bucket. The dashboard colours its service graph with them.

Every verdict (ext_authz, the Envoy tap, the node tap, files; cache hits included) is added by
the pipeline; the app drains the counts with the engine's other changes and adds them up in its
store (one row per bucket and edge). Memory is bounded: past `max_edges` distinct (bucket,
caller, destination) keys between two drains, further new keys are folded into the caller
`OTHER` of their destination bucket, and their calls counted in `folded`. Pure: the time is the
observation's.
"""

from __future__ import annotations

from dataclasses import dataclass

BUCKET_SECONDS = 60
MAX_EDGES = 10_000
OTHER = "(other)"  # callers folded together once the bound is reached
KINDS = ("allow", "alert", "deny")

EdgeKey = tuple[int, str, str]  # (bucket start, epoch seconds; source; destination)


@dataclass
class EdgeCount:
    """One edge in one bucket: how many verdicts of each kind."""

    bucket: int
    source: str
    destination: str
    allowed: int = 0
    alerted: int = 0
    denied: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "time": self.bucket,
            "source": self.source,
            "destination": self.destination,
            "allowed": self.allowed,
            "alerted": self.alerted,
            "denied": self.denied,
        }


class EdgeCounts:
    """Counts since the last drain (not thread-safe: the engine's thread adds and drains)."""

    def __init__(self, bucket_seconds: int = BUCKET_SECONDS, max_edges: int = MAX_EDGES) -> None:
        if bucket_seconds < 1 or max_edges < 1:
            raise ValueError("bucket_seconds and max_edges must be at least 1")
        self.bucket_seconds = bucket_seconds
        self.max_edges = max_edges
        self.folded = 0
        self._counts: dict[EdgeKey, list[int]] = {}

    def add(self, source: str, destination: str, verdict: str, when: float) -> None:
        bucket = int(when // self.bucket_seconds) * self.bucket_seconds
        row = self._row(bucket, source, destination)
        row[KINDS.index(verdict) if verdict in KINDS else 1] += 1  # anything else: an alert

    def merge(self, counts: list[EdgeCount]) -> None:
        """Counts drained elsewhere (an ingest batch judged in the worker process), added in."""
        for e in counts:
            row = self._row(e.bucket, e.source, e.destination, e.allowed + e.alerted + e.denied)
            row[0] += e.allowed
            row[1] += e.alerted
            row[2] += e.denied

    def _row(self, bucket: int, source: str, destination: str, calls: int = 1) -> list[int]:
        """The counts of one edge in one bucket; past `max_edges` keys a new caller's go to
        `OTHER`'s (its `calls` counted in `folded`, whether added one by one or merged)."""
        key = (bucket, source, destination)
        row = self._counts.get(key)
        if row is None:
            if len(self._counts) >= self.max_edges:
                self.folded += calls
                key = (bucket, OTHER, destination)
                row = self._counts.get(key)
            if row is None:
                row = self._counts[key] = [0, 0, 0]
        return row

    def peek(self) -> list[EdgeCount]:
        """The counts not drained yet (copies)."""
        return [EdgeCount(b, s, d, *row) for (b, s, d), row in self._counts.items()]

    def drain(self) -> list[EdgeCount]:
        counts, self._counts = self._counts, {}
        return [EdgeCount(b, s, d, *row) for (b, s, d), row in counts.items()]

    def __len__(self) -> int:
        return len(self._counts)


def merge_counts(
    older: list[EdgeCount], newer: list[EdgeCount], max_edges: int = MAX_EDGES
) -> list[EdgeCount]:
    """Two drained batches as one (a batch that failed to write, merged into the next), folded
    into `OTHER` callers past `max_edges` keys as `EdgeCounts.add` does."""
    out: dict[EdgeKey, EdgeCount] = {}
    for e in (*older, *newer):
        key = (e.bucket, e.source, e.destination)
        if key not in out and len(out) >= max_edges:
            key = (e.bucket, OTHER, e.destination)
        have = out.get(key)
        if have is None:
            out[key] = EdgeCount(e.bucket, key[1], e.destination, e.allowed, e.alerted, e.denied)
        else:
            have.allowed += e.allowed
            have.alerted += e.alerted
            have.denied += e.denied
    return list(out.values())


def add_pending(
    stored: list[dict[str, object]],
    pending: list[EdgeCount],
    since: float,
    until: float | None = None,
    namespace: str | None = None,
) -> list[dict[str, object]]:
    """Stored rows (`EdgeCount.as_dict()`) with counts not written yet added in, filtered as
    the store's read is (buckets from the one holding `since`, before `until`, either end in
    `namespace`), oldest first."""
    out: dict[EdgeKey, dict[str, object]] = {}
    for row in stored:
        out[(int(str(row["time"])), str(row["source"]), str(row["destination"]))] = dict(row)
    prefix = f"{namespace}/" if namespace is not None else None
    for e in pending:
        if e.bucket + BUCKET_SECONDS <= since or (until is not None and e.bucket >= until):
            continue
        if prefix and not (e.source.startswith(prefix) or e.destination.startswith(prefix)):
            continue
        key = (e.bucket, e.source, e.destination)
        row = out.setdefault(key, EdgeCount(*key).as_dict())
        for name in ("allowed", "alerted", "denied"):
            row[name] = int(str(row[name])) + getattr(e, name)
    return [out[k] for k in sorted(out)]
