"""The pipeline step for the node tap's control-plane connection reports: counted on their
edge (client workload -> control-plane component) as allowed, and nothing else. They are L4
facts, not HTTP exchanges: judging them would learn a bogus endpoint in learn mode.

Alerts about control-plane traffic (`Mesh.ControlPlane.Access`) are not reports: they go the
usual way (judged with the threat the node tap found, recorded, counted as alerts).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING

from meshward.core.controlplane import is_connection_report
from meshward.core.engine import Engine
from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS

if TYPE_CHECKING:
    from meshward.app.pipeline import Call


MAX_COMPONENTS = 256


class ControlPlaneConnections:
    """Ingest door: a connection report stops here, as one allowed call on its edge. The
    control-plane workloads reports and alerts name are kept (`components`, bounded, newest
    kept) for the graph to mark them."""

    def __init__(self, engine: Engine, most: int = MAX_COMPONENTS) -> None:
        self.engine = engine
        self.most = most
        self.components: OrderedDict[str, str] = OrderedDict()  # workload key -> component

    def note(self, key: str, component: str) -> None:
        """One control-plane workload seen (newest kept)."""
        self.components[key] = component
        self.components.move_to_end(key)
        while len(self.components) > self.most:
            self.components.popitem(last=False)

    def ingest(self, call: Call) -> None:
        obs = call.obs
        report = is_connection_report(obs)
        if not report and not any(t.name == MESH_CONTROL_PLANE_ACCESS for t in obs.threats):
            return
        if obs.seen_by == "node-tap" and obs.destination.workload:
            mesh, component = obs.extra.get("mesh", ""), obs.extra.get("component", "")
            self.note(obs.destination.key, f"{mesh} {component}")
        if report:
            self.engine.edges.add(obs.source.key, obs.destination.key, "allow", obs.time)
            call.stop = True
