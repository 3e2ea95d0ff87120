"""What an ingested observation claims about itself, and what serve keeps of it.

Serve judges every observation itself (the engine's detectors and the allowlist). A caller of
the ingest door (`POST /api/v1/observations`) can write anything into an observation, including
a list of `threats` and verdict-like fields (`verdict`, `score`, `reasons`, ...): trusting them
would let one POST plant alerts (with whatever evidence it likes) and push the real ones out of
the history. So they are dropped, and counted by the caller of these functions.

One exception, because serve cannot judge it again: a *network event* the node tap found in
packets serve never sees (ICMP, UDP, DNS: `tap/node/netthreats.py`). Such a threat is kept when
the observation says `seen_by: node-tap`, a network protocol, the `network` location and a
name from the network part of the registry (`names.NETWORK_THREATS`); the ingest door that
carries it is authenticated (docs/security.md), and the alerts it raises are bounded by the
per-source alert quota like any other. The mesh guard's traffic findings are network events
too (`tap/node/controlplane.py`, `tap/node/bypass.py`: TCP SYNs to the control plane, request
heads on a pod's own interface that its proxy never carried): `Mesh.ControlPlane.Access` on
`tcp`, `Mesh.Sidecar.Bypass` on `http/1.1` or `h2`, located at `network`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from meshward.core.observation import Observation, Threat
from meshward.core.threats.names import (
    MESH_CONTROL_PLANE_ACCESS,
    MESH_SIDECAR_BYPASS,
    NETWORK_THREATS,
)

NETWORK_PROTOCOLS = frozenset({"icmp", "udp", "dns"})
_NETWORK_NAMES = frozenset(NETWORK_THREATS)
# the mesh guard's findings in packets, with the protocols their observations carry
_GUARD_PROTOCOLS = {
    MESH_CONTROL_PLANE_ACCESS: frozenset({"tcp"}),
    MESH_SIDECAR_BYPASS: frozenset({"http/1.1", "h2"}),
}
# fields of a verdict or an alert, never of an observation: a caller sending them is trying
# to decide its own judgement (observation_from_dict ignores them; they are counted here)
VERDICT_FIELDS = frozenset(
    {
        "verdict",
        "score",
        "reasons",
        "rule",
        "mode",
        "alert",
        "alerts",
        "judged",
        "body_partly_inspected",
    }
)


def verdict_fields(raw: Mapping[str, object]) -> int:
    """How many verdict fields one observation dict carries (all of them ignored)."""
    return sum(1 for k in VERDICT_FIELDS if k in raw)


def is_network_event(obs: Observation, threat: Threat) -> bool:
    """A node tap's finding in packets: the one kind of threat serve keeps from a caller."""
    if obs.seen_by != "node-tap" or threat.location != "network":
        return False
    if obs.protocol in NETWORK_PROTOCOLS:
        return threat.name in _NETWORK_NAMES
    return obs.protocol in _GUARD_PROTOCOLS.get(threat.name, ())


def distrusted(obs: Observation) -> tuple[Observation, int]:
    """The observation without the threats its sender claimed (network events kept), and how
    many were dropped. Serve's own detectors judge what is left."""
    if not obs.threats:
        return obs, 0
    kept = [t for t in obs.threats if is_network_event(obs, t)]
    dropped = len(obs.threats) - len(kept)
    if not dropped:
        return obs, 0
    return dataclasses.replace(obs, threats=kept), dropped
