"""The meshes' control planes as the node tap recognises them: which pods and Services are
istiod or Linkerd's controllers (by their labels, never by address), and which of their ports
a client is expected to use.

Pure facts and small functions: the node agent (meshward.app.controlplaneview) reads Pods and
Services through the Kubernetes API and asks `component_of`; the node tap's detector
(meshward.tap.node.controlplane) judges TCP connections against the result.

Ports (istiod: Istio's "Ports used by Istio" reference; Linkerd: the proxies' own log lines,
"Identity verified via linkerd-identity-headless...:8080", "Destinations resolved via
linkerd-dst-headless...:8086", and the chart's linkerd-policy Service on 8090):

- istiod 15010: xDS and CA over plaintext gRPC (no client authentication at all);
- istiod 15012: xDS and CA over TLS (what every sidecar uses);
- istiod 15014: the control plane's monitoring port, HTTP `/metrics` and the `/debug/*`
  endpoints (config dumps, connected proxies, syncz): plaintext, no authentication;
- istiod 15017: the injection and validation webhooks (the API server calls them);
- Linkerd destination 8086, identity 8080, policy 8090: gRPC over the proxies' mTLS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from meshward.core.observation import Observation
from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS

ISTIOD_PORTS: Final = {
    15010: "xds-plaintext",
    15012: "xds-tls",
    15014: "monitoring-debug",
    15017: "webhook",
}
# istiod ports where a client without a sidecar gets what it asks without authenticating
ISTIOD_OPEN_PORTS: Final = frozenset({15010, 15014})
LINKERD_PORTS: Final = {8086: "destination", 8080: "identity", 8090: "policy"}
# the Linkerd component each port belongs to (policy is served by the destination pod)
LINKERD_PORT_COMPONENT: Final = {8086: "destination", 8080: "identity", 8090: "destination"}

ISTIO_APP_LABEL: Final = "app"
ISTIOD_APPS: Final = frozenset({"istiod", "istio-pilot"})  # istio-pilot: before 1.5's istiod
ISTIO_REVISION_LABEL: Final = "istio.io/rev"
LINKERD_COMPONENT_LABEL: Final = "linkerd.io/control-plane-component"
# the label selectors the node agent watches with (each a small list cluster-wide)
SELECTORS: Final = (
    f"{ISTIO_APP_LABEL} in (istiod,istio-pilot)",
    LINKERD_COMPONENT_LABEL,
)


# a node tap's report of a connection to the control plane that raised nothing (an edge of the
# graph, never an HTTP exchange to learn): Observation.extra[REPORT_KEY] == CONNECTION
REPORT_KEY: Final = "control_plane"
CONNECTION: Final = "connection"


def is_connection_report(obs: Observation) -> bool:
    """A node tap's control-plane connection report (tap/node/controlplane.py)."""
    return (
        obs.seen_by == "node-tap"
        and obs.protocol == "tcp"
        and not obs.threats
        and obs.extra.get(REPORT_KEY) == CONNECTION
    )


def judged_client_side(obs: Observation) -> bool:
    """Control-plane traffic is judged on the client's node (the node tap knows its own pods'
    sidecars): a report or a `Mesh.ControlPlane.Access` alert speaks for its source pod."""
    if obs.seen_by != "node-tap" or obs.protocol != "tcp":
        return False
    return is_connection_report(obs) or any(
        t.name == MESH_CONTROL_PLANE_ACCESS for t in obs.threats
    )


@dataclass(frozen=True, slots=True)
class Component:
    """One control-plane component: which mesh, which part, and its ports (port -> purpose)."""

    mesh: str  # istio | linkerd
    name: str  # istiod | destination | identity | ...
    ports: Mapping[int, str]


def component_of(labels: object) -> Component | None:
    """The control-plane component a Pod's or Service's labels name, else None."""
    if not isinstance(labels, Mapping):
        return None
    app = labels.get(ISTIO_APP_LABEL)
    if isinstance(app, str) and app in ISTIOD_APPS:
        return Component("istio", "istiod", ISTIOD_PORTS)
    part = labels.get(LINKERD_COMPONENT_LABEL)
    if isinstance(part, str) and part:
        ports = {p: what for p, what in LINKERD_PORTS.items() if LINKERD_PORT_COMPONENT[p] == part}
        return Component("linkerd", part, ports)
    return None


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What a (address, port) a client connected to is: a component's port, and who runs it."""

    mesh: str
    component: str
    port: int  # the component's own port (a Service's targetPort)
    purpose: str
    namespace: str
    workload: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.workload}"

    @property
    def open_to_anyone(self) -> bool:
        """A port that answers without any client authentication (istiod 15010, 15014)."""
        return self.mesh == "istio" and self.port in ISTIOD_OPEN_PORTS


def service_ports(spec: Mapping[str, Any], component: Component) -> dict[int, int]:
    """A Service's port -> the component's port it forwards to (numeric targetPorts; a named
    or missing targetPort is the port itself, as the charts name them), for component ports."""
    out: dict[int, int] = {}
    ports = spec.get("ports")
    for p in ports if isinstance(ports, list) else []:
        if not isinstance(p, Mapping) or p.get("protocol", "TCP") != "TCP":
            continue
        port, target = p.get("port"), p.get("targetPort")
        if not isinstance(port, int) or isinstance(port, bool):
            continue
        dest = target if isinstance(target, int) and not isinstance(target, bool) else port
        if dest in component.ports:
            out[port] = dest
    return out
