"""The pipeline step for the node tap's control-plane connection reports: counted on their
edge (client workload -> control-plane component) as allowed, and nothing else. They are L4
facts, not HTTP exchanges: judging them would learn a bogus endpoint in learn mode.

Alerts about control-plane traffic (`Mesh.ControlPlane.Access`) are not reports: they go the
usual way (judged with the threat the node tap found, recorded, counted as alerts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshward.core.controlplane import is_connection_report
from meshward.core.engine import Engine

if TYPE_CHECKING:
    from meshward.app.pipeline import Call


class ControlPlaneConnections:
    """Ingest door: a connection report stops here, as one allowed call on its edge."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ingest(self, call: Call) -> None:
        obs = call.obs
        if is_connection_report(obs):
            self.engine.edges.add(obs.source.key, obs.destination.key, "allow", obs.time)
            call.stop = True
