"""The service graph the dashboard draws (`GET /api/v1/graph`): who calls whom, from what serve
learned (the allowlist's services, their callers and the rules each caller used) and what it
raised (the alert history).

A node is an identity (`namespace/workload`): a learned service, or a caller only seen calling.
An edge is caller -> service with the endpoints (method + template) that caller used. Edges
are coloured by what meshward did on them in the window asked: with the per-edge verdict
counts (`meshward.core.edges`, `GET /api/v1/edges`), `denied` if any call was denied,
`alerted` if any alerted, `allowed` otherwise; the alert history counts alerts too (and
colours an edge the counts do not cover: one learned before the window).

The mesh's control plane is drawn too: a node is `role: "control-plane"` (with its
`component`, e.g. `istio istiod`) when serve knows it as one (`control_plane`: what the node
taps' connection reports and alerts named, meshward.app.cpedges) or an alert in the window
names it as the target of `Mesh.ControlPlane.Access`; an edge into one is `kind:
"control-plane"`. Edges also count their `Mesh.Sidecar.Bypass` alerts (`bypass`): requests
that reached the service around its proxy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from meshward.core.observation import Identity
from meshward.core.threats.names import MESH_CONTROL_PLANE_ACCESS, MESH_SIDECAR_BYPASS

ALL = ""  # every namespace


def namespace_of(key: str) -> str:
    """The namespace of an identity key ("" when it names none: an IP, an outside caller)."""
    return Identity.parse(key).namespace


def build_graph(
    allowlist_doc: Mapping[str, Any],
    alerts: Iterable[Mapping[str, Any]],
    modes: Mapping[str, str],
    default_mode: str,
    namespace: str = ALL,
    verdicts: Iterable[Mapping[str, Any]] = (),
    control_plane: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """{"namespace", "namespaces", "nodes", "edges"}; with `namespace`, the edges into or out
    of it and the nodes they touch (a caller from elsewhere is shown, marked `external`)."""
    edge_alerts: Counter[tuple[str, str]] = Counter()
    edge_denies: Counter[tuple[str, str]] = Counter()
    node_alerts: Counter[str] = Counter()
    edge_bypass: Counter[tuple[str, str]] = Counter()
    roles = dict(control_plane or {})  # node key -> control-plane component
    for a in alerts:
        if a.get("seen_by") == "mesh-guard":  # a configuration finding, not a call
            continue
        src, dst = str(a.get("source", "unknown")), str(a.get("destination", "unknown"))
        edge_alerts[src, dst] += 1
        node_alerts[dst] += 1
        named = _threat_names(a)
        if MESH_CONTROL_PLANE_ACCESS in named:
            roles.setdefault(dst, "")
        if MESH_SIDECAR_BYPASS in named:
            edge_bypass[src, dst] += 1
        if a.get("verdict") == "deny":
            edge_denies[src, dst] += 1

    counted: dict[tuple[str, str], list[int]] = {}  # allowed, alerted, denied in the window
    for row in verdicts:
        edge = (str(row.get("source", "unknown")), str(row.get("destination", "unknown")))
        sums = counted.setdefault(edge, [0, 0, 0])
        for i, kind in enumerate(("allowed", "alerted", "denied")):
            sums[i] += int(row.get(kind, 0) or 0)

    edges: dict[tuple[str, str], dict[str, Any]] = {}
    services: set[str] = set()
    for service in allowlist_doc.get("services", []):
        dst = str(service.get("destination", ""))
        services.add(dst)
        callers = service.get("sources") or {}
        for caller in callers:
            edges[caller, dst] = {"endpoints": []}
        for rule in service.get("endpoints", []):
            used = f"{rule.get('method', '')} {rule.get('path', '')}"
            for caller in rule.get("sources") or {}:
                edges.setdefault((caller, dst), {"endpoints": []})["endpoints"].append(used)
    for pair in [*edge_alerts, *counted]:  # a call that taught nothing (denied) is an edge too
        edges.setdefault(pair, {"endpoints": []})

    def wanted(src: str, dst: str) -> bool:
        return not namespace or namespace in (namespace_of(src), namespace_of(dst))

    out_edges = []
    touched: set[str] = set()
    for (src, dst), e in sorted(edges.items()):
        if not wanted(src, dst):
            continue
        touched.update((src, dst))
        n, denied = edge_alerts[src, dst], edge_denies[src, dst]
        allowed_n, alerted_n, denied_n = counted.get((src, dst), (0, 0, 0))
        if denied_n or denied:
            status = "denied"
        elif alerted_n or n:
            status = "alerted"
        else:
            status = "allowed"
        out_edges.append(
            {
                "id": f"{src}->{dst}",
                "source": src,
                "target": dst,
                "endpoints": sorted(set(e["endpoints"])),
                "alerts": n,
                "denied": denied,
                "verdicts": {"allowed": allowed_n, "alerted": alerted_n, "denied": denied_n},
                "status": status,
                "kind": "control-plane" if dst in roles else "service",
                "bypass": edge_bypass[src, dst],
            }
        )
    if namespace:
        touched.update(s for s in services if namespace_of(s) == namespace)
    else:
        touched.update(services)
    nodes = []
    for key in sorted(touched):
        ns = namespace_of(key)
        nodes.append(
            {
                "id": key,
                "namespace": ns,
                "mode": modes.get(ns, default_mode) if ns else "",
                "alerts": node_alerts[key],
                "service": key in services,
                "external": bool(namespace) and ns != namespace,
                "role": "control-plane" if key in roles else "workload",
                "component": roles.get(key, ""),
            }
        )
    every = {namespace_of(end) for pair in edges for end in pair}
    every |= {namespace_of(s) for s in services}
    every |= set(modes)
    return {
        "namespace": namespace,
        "namespaces": sorted(n for n in every if n),
        "nodes": nodes,
        "edges": out_edges,
    }


def _threat_names(alert: Mapping[str, Any]) -> set[str]:
    threats = alert.get("threats")
    if not isinstance(threats, list):
        return set()
    return {str(t.get("name", "")) for t in threats if isinstance(t, Mapping)}
