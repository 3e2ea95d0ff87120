"""serve's part of an ingest batch judged in the worker (meshward.app.batchjudge): between the
worker's two calls it decides what needs serve's own state and sends the snapshot; afterwards it
adds what came back. Its cost grows with the batch's distinct destinations, node-scope keys,
callers, call shapes and alerts, not with its observations.

Learned profiles are installed only over the very profile object snapshotted: what Checks (or
anything else on the loop) learned about it meanwhile is journaled by the engine and replayed
onto the batch's result (a serial order: the batch, then those). A profile replaced meanwhile
(a replica's sync, a review edit) or a journal past its bound makes serve learn that
destination's batch observations itself instead (`redo`, `relearn`).
"""

from __future__ import annotations

from typing import Protocol

from meshward.app.batchjudge import Judged, Outline, Snapshot, pickled, unpickled
from meshward.app.callerip import PodsByIp
from meshward.app.cpedges import ControlPlaneConnections
from meshward.app.nodescope import NodeScope
from meshward.app.recent import RecentCalls
from meshward.core.allowlist import ServiceProfile
from meshward.core.engine import Engine, Learned
from meshward.core.modes import EVERY_OTHER
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner


class Steps(Protocol):
    """The pipeline's state a batch's results go into (meshward.app.pipeline.Pipeline)."""

    @property
    def recent(self) -> RecentCalls: ...
    @property
    def control_plane(self) -> ControlPlaneConnections: ...
    @property
    def pods(self) -> PodsByIp | None: ...


class BatchDoor:
    """One batch's way through serve's loop (not reused)."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        joiner: Joiner,
        steps: Steps,
        scope: NodeScope | None = None,
        node: str = "",
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.joiner = joiner
        self.steps = steps
        self.scope = scope
        self.node = node
        self.batch = -1
        self.profiles: dict[str, ServiceProfile] = {}  # snapshotted, by destination
        self.lost: list[str] = []  # destinations whose batch learning could not be redone
        # new destinations this batch's snapshots admitted (an empty profile each, taking a
        # place under the destination cap): removed again if the batch fails (`abandon`)
        self.admitted: dict[str, ServiceProfile] = {}

    def snapshot(self, outline: Outline) -> Snapshot:
        """Node scope per key, the destination cap in the batch's order (a new learn-mode
        destination admitted gets its empty profile now, as learning would create it), the
        callers' pods, the modes and the touched profiles; learning about them journaled
        from now on."""
        engine, allowlist = self.engine, self.engine.allowlist
        self.close()
        self.batch = outline.batch
        outside: set[tuple[str, str, str]] = set()
        if self.node and self.scope is not None:
            allows = self.scope.allows_key
            outside = {k for k in outline.scope_keys if not allows(k, self.node)}
        decided: set[str] = set()
        for dest, namespace, key in outline.learners:
            if dest in decided or key in outside or engine.mode_of(namespace) != "learn":
                continue
            decided.add(dest)
            if allowlist.get(dest) is None and allowlist.has_room():
                admitted = allowlist.learnable(dest)  # past the cap: the worker counts refusals
                if admitted is not None:
                    self.admitted[dest] = admitted
        services = allowlist.services
        self.profiles = {d: services[d] for d in outline.destinations if d in services}
        engine.journal_open(outline.batch, list(self.profiles))
        modes = {**engine.modes(), EVERY_OTHER: engine.default_mode}
        pods = self.steps.pods
        by_ip = {ip: pods.by_ip(ip) for ip in outline.caller_ips} if pods is not None else None
        profiles = {d: pickled(p) for d, p in self.profiles.items()}  # copies, taken now
        return Snapshot(modes, profiles, outside, by_ip)

    def apply(self, judged: Judged) -> list[str]:
        """What the worker found, added; the destinations whose learning must be redone here
        (`relearn`) returned."""
        engine = self.engine
        self.metrics.add(judged.metrics)
        engine.add_counts(judged.counters, judged.refused, "(an ingest batch)")
        engine.keep_alerts(judged.alerts)
        engine.edges.merge(judged.edges)
        for obs, verdict in judged.notes:
            self.joiner.note_verdict(obs, verdict)
        recent, control_plane = self.steps.recent, self.steps.control_plane
        for obs, calls, last in judged.recent:
            recent.keep(obs, calls, last)
        for key, component in judged.components:
            control_plane.note(key, component)
        return [
            dest
            for dest, raw in judged.learned.items()
            if not engine.install_learned(self.batch, dest, unpickled(raw), self.profiles.get(dest))
        ]

    def relearn(self, redo: list[str], learned: dict[str, list[Learned]]) -> None:
        """The batch's learning of `redo`, done here (what the worker sent back of it)."""
        for dest in redo:
            if dest in learned:
                self.engine.relearn(dest, learned[dest])
            else:
                self.lost.append(dest)

    def abandon(self) -> None:
        """The batch failed (its worker died twice, or it raised): the empty profiles its
        snapshots admitted are removed, unless something learned into them meanwhile, so a
        failed batch holds no place under the destination cap."""
        services = self.engine.allowlist.services
        for dest, profile in self.admitted.items():
            if services.get(dest) is profile and profile.is_empty():
                del services[dest]
        self.admitted = {}

    def close(self) -> None:
        """Stop journaling for this batch."""
        if self.batch >= 0:
            self.engine.journal_close(self.batch)
