"""An ingest batch judged in the ingest worker process, against a snapshot of serve's state.

A 16 MB batch (10,000 observations) took serve's event loop 0.2-0.3 CPU-s to judge, in 0.1 ms
slices between Checks, and Check p99 followed the slice (docs/benchmarks.md). So the worker,
which already parsed and inspected the batch (meshward/app/ingest.py), keeps it and judges it
too, through the same pipeline steps serve runs (`Pipeline.take_ingested`: claims dropped,
`CallerByIp`, `Count`, `ControlPlaneConnections`, `Judge`, the recent-call sample), on an
`Engine` of serve's config and detector loaded with what the batch needs of serve's state:

1. `outline` (the first call) tells serve what to decide on its loop: the destinations touched,
   which of them a clean observation could teach and under which namespace and node-scope key,
   the node-scope keys (what `NodeScope.allows` reads), the IP-only node-tap callers.
2. serve answers with a `Snapshot` (meshward/app/batchapply.py): the touched profiles'
   documents, the namespace modes, the node-scope keys refused, the pods holding the callers'
   IPs; the destination cap decided there, in the batch's order (a new destination it admits
   comes as an empty profile; one it refuses is absent, and this engine, allowed no new
   profile, counts each refused learning as serve's would).
3. `judge` (the second call) returns `Judged`: aggregates, not per-observation objects. Verdict
   and threat counts, observations per source, evaluate latencies (bucketed), claims dropped,
   IP callers resolved (one `Metrics.counts()`), the engine's counters and refusals, its alerts
   in order (serve's quota gate passes each), edges, joiner notes of non-allow verdicts with a
   request id, the recent-call shapes (first observation, count, last time), control-plane
   components, per-item failures, and the learned profiles' documents. envoy-tap items stay on
   the loop's path (the both-ends join and judged-by-Check are loop state): they come back as
   they are, after the rest of the batch, which is the one order that differs from judging the
   batch on the loop item by item.
4. `learned_of` (a third call, rare): what the batch learned about destinations whose profile
   serve replaced meanwhile (a replica's sync, a review edit), for serve to learn it again.

The worker keeps at most `KEPT` batches (`forget` drops one once serve applied it).
"""

from __future__ import annotations

import dataclasses
import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshward.app.callerip import known_only_by_ip
from meshward.app.nodescope import ScopeKey, scope_key
from meshward.app.pipeline import Pipeline
from meshward.app.podindex import PodInfo
from meshward.app.recent import RecentCalls, Shape, shape
from meshward.core.allowlist import ServiceProfile
from meshward.core.claims import distrusted
from meshward.core.controlplane import is_connection_report
from meshward.core.edges import EdgeCount
from meshward.core.engine import Engine, EngineConfig, Learned, Prepared
from meshward.core.observation import Observation
from meshward.core.quota import AlertQuota
from meshward.core.threats.inspection import Detector
from meshward.runtime.metrics import Counted, Metrics
from meshward.tap.envoy.join import Joiner

KEPT = 4  # batches the worker holds between serve's calls (serve forgets each once applied)
Pair = tuple[Observation, Prepared | None]


@dataclass
class Outline:
    """What serve decides between the two calls, read off one batch (all distinct)."""

    batch: int
    destinations: list[str] = field(default_factory=list)  # every one touched, first first
    # (destination, namespace, node-scope key) of the observations that could teach it, in
    # the batch's order: serve applies the destination cap in this order
    learners: list[tuple[str, str, ScopeKey]] = field(default_factory=list)
    scope_keys: list[ScopeKey] = field(default_factory=list)
    caller_ips: list[str] = field(default_factory=list)  # node-tap sources known only by IP
    tapped: int = 0  # envoy-tap items: judged on serve's loop


@dataclass
class Snapshot:
    """What of serve's state one batch is judged against."""

    modes: dict[str, str]  # as stored: `*` is every namespace not named
    profiles: dict[str, bytes]  # the touched destinations' profiles, pickled (`pickled`)
    outside: set[ScopeKey] = field(default_factory=set)  # node-scope keys refused
    pods: dict[str, PodInfo | None] | None = None  # caller IP -> pod (None: not in a cluster)


@dataclass
class Judged:
    """One batch judged: what serve adds to its own state."""

    taken: int = 0
    outside: int = 0  # skipped: outside the calling node tap's node
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, error), first 20
    failed: int = 0
    metrics: list[Counted] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[tuple[Observation, dict[str, Any]]] = field(default_factory=list)
    edges: list[EdgeCount] = field(default_factory=list)
    recent: list[tuple[Observation, int, float]] = field(default_factory=list)
    components: list[tuple[str, str]] = field(default_factory=list)
    learned: dict[str, bytes] = field(default_factory=dict)  # the learned profiles, pickled
    tapped: list[bytes] = field(default_factory=list)  # pickled envoy-tap pairs, for the loop


class Forgotten(LookupError):
    """The batch is not kept here (a new worker, or more batches in flight than `KEPT`)."""


@dataclass
class _Batch:
    pairs: list[Pair]
    inspection_failed: int
    engine: Engine | None = None  # after judging: its journal holds what was learned


_batches: OrderedDict[int, _Batch] = OrderedDict()


def pickled(profile: ServiceProfile) -> bytes:
    """A profile as it crosses between serve and the worker: pickled, not as its document
    (for a 676-endpoint profile `to_doc` and `from_doc` take 7.4 and 17 ms of serve's loop per
    batch, pickling 4.0 and 7.7 ms; docs/benchmarks.md). Both ends are serve's own code, and
    the snapshot is taken at once."""
    return pickle.dumps(profile, pickle.HIGHEST_PROTOCOL)


def unpickled(raw: bytes) -> ServiceProfile:
    profile = pickle.loads(raw)
    if not isinstance(profile, ServiceProfile):
        raise TypeError(f"not a profile: {type(profile).__name__}")
    return profile


def could_learn(obs: Observation, prepared: Prepared | None) -> bool:
    """Whether the ingest door may learn from this observation in learn mode: clean (no
    threat kept from the sender, none found, the detectors did not fail), judged (not an
    envoy-tap copy: those go the loop's way; not a connection report: those stop early)."""
    obs, _ = distrusted(obs)
    if obs.threats or obs.seen_by == "envoy-tap" or is_connection_report(obs):
        return False
    return prepared is None or not (prepared.found.threats or prepared.failed)


def outline(batch: int, pairs: list[Pair], inspection_failed: int) -> Outline:
    """Keep the batch and say what serve must decide for it."""
    _batches[batch] = _Batch(pairs, inspection_failed)
    while len(_batches) > KEPT:
        _batches.popitem(last=False)
    out = Outline(batch)
    dests: dict[str, None] = {}
    learners: dict[tuple[str, str, ScopeKey], None] = {}
    keys: dict[ScopeKey, None] = {}
    ips: dict[str, None] = {}
    for obs, prepared in pairs:
        dest = obs.destination.key
        dests[dest] = None
        key = scope_key(obs)
        keys[key] = None
        if obs.seen_by == "envoy-tap":
            out.tapped += 1
        elif obs.seen_by == "node-tap" and known_only_by_ip(obs.source):
            ips[obs.source.ip] = None
        if could_learn(obs, prepared):
            learners[(dest, obs.destination.namespace, key)] = None
    out.destinations, out.learners = list(dests), list(learners)
    out.scope_keys, out.caller_ips = list(keys), list(ips)
    return out


class _Judging(Engine):
    """serve's engine's code on a snapshot: refusals counted, not logged (serve logs them
    when it adds them); no profile created (serve decided the destination cap)."""

    def _refuse(self, what: str, destination: str, n: int = 1) -> None:
        self.refused[what] += n


def _judging_config(config: EngineConfig) -> EngineConfig:
    most = 1 << 40  # serve's quota gate decides which alerts it keeps
    return dataclasses.replace(
        config,
        alert_quota=AlertQuota(most, most, most),
        alert_history=1,
        limits=dataclasses.replace(config.limits, max_destinations=0),
    )


class _Notes(Joiner):
    """The joiner's notes of non-allow verdicts, kept for serve's joiner."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[tuple[Observation, dict[str, Any]]] = []

    def note_verdict(self, obs: Observation, verdict: dict[str, Any]) -> None:
        # the join keys on the request id, authority and caller: the body stays here
        slim = dataclasses.replace(obs, body=b"", headers=[], response_headers=[], extra={})
        self.notes.append((slim, verdict))


class _Shapes(RecentCalls):
    """The recent-call sample's shapes, tallied: serve's sample keeps them (`keep`)."""

    def __init__(self) -> None:
        super().__init__()
        self.tally: OrderedDict[Shape, list[Any]] = OrderedDict()

    def keep(self, obs: Observation, calls_of_shape: int = 1, last: float | None = None) -> None:
        key = shape(obs)
        seen = self.tally.get(key)
        if seen is None:
            self.tally[key] = [obs, calls_of_shape, obs.time if last is None else last]
        else:
            seen[1] += calls_of_shape
            seen[2] = obs.time if last is None else last
            self.tally.move_to_end(key)


class _Resolved:
    """serve's pod index, as far as this batch's callers go."""

    def __init__(self, pods: dict[str, PodInfo | None]) -> None:
        self.pods = pods

    def by_ip(self, ip: str) -> PodInfo | None:
        return self.pods.get(ip)


class _Pipeline(Pipeline):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tapped: list[Pair] = []

    def take_tap(self, obs: Observation, prepared: Prepared | None = None) -> None:
        self.tapped.append((obs, prepared))  # the join and judged-by-Check are serve's


def judge(
    batch: int,
    snapshot: Snapshot,
    config: EngineConfig,
    detector: Detector,
    pace: Callable[[], None] = lambda: None,
) -> tuple[Judged, list[Pair]]:
    """The kept batch judged through serve's pipeline steps on `snapshot`; the envoy-tap
    items handed back. `Forgotten` when the batch is not kept."""
    kept = _batches.get(batch)
    if kept is None or kept.engine is not None:
        raise Forgotten(batch)
    engine = _Judging(_judging_config(config), detector)
    for raw in snapshot.profiles.values():
        engine.allowlist.add_profile(unpickled(raw))
    engine.set_modes(snapshot.modes)
    engine.journal_open(batch, list(snapshot.profiles))  # what it learns, for `learned_of`
    metrics, notes, shapes = Metrics(), _Notes(), _Shapes()
    pods = _Resolved(snapshot.pods) if snapshot.pods is not None else None
    pipeline = _Pipeline(engine, metrics, notes, pods, shapes)
    out = Judged()
    outside = snapshot.outside
    for index, (obs, prepared) in enumerate(kept.pairs):
        pace()  # the worker rests while serve answers Checks (meshward.app.ingest)
        if outside and scope_key(obs) in outside:
            out.outside += 1  # a node tap speaks only for pods on its own node
            continue
        try:
            pipeline.take_ingested(obs, prepared)
            out.taken += 1
        except Exception as exc:  # one bad item never stops the batch or the worker
            out.failed += 1
            if len(out.failures) < 20:
                out.failures.append((index, repr(exc)[:200]))
    engine.counters["inspection_failed"] += kept.inspection_failed
    changes = engine.drain(pickled)
    kept.engine, kept.pairs = engine, []
    out.metrics = metrics.counts()
    out.counters = {k: n for k, n in engine.counters.items() if n}
    out.refused = dict(engine.refused)
    out.alerts, out.edges, out.learned = changes.alerts, changes.edges, changes.profiles
    out.notes = notes.notes
    out.recent = [(obs, n, last) for obs, n, last in shapes.tally.values()]
    out.components = list(pipeline.control_plane.components.items())
    return out, pipeline.tapped


def learned_of(batch: int, destinations: list[str]) -> dict[str, list[Learned]]:
    """What the judged batch learned about `destinations`, in order (empty when the batch is
    no longer kept: a worker that died)."""
    kept = _batches.get(batch)
    if kept is None or kept.engine is None:
        return {}
    out = {}
    for dest in destinations:
        entries = kept.engine.journal_entries(batch, dest)
        if entries:
            out[dest] = entries
    return out


def forget(batch: int) -> None:
    _batches.pop(batch, None)
