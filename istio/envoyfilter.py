"""Istio objects that install meshward's filters in a namespace's sidecars.

Two styles, both from the one filter config in `istio.filters`:
- `envoyfilter`: an EnvoyFilter (networking.istio.io/v1alpha3) that INSERTs the filters BEFORE
  the router on SIDECAR_INBOUND, and MERGEs the ext_authz per-virtual-host settings
  (context_extensions) into the inbound virtual hosts. A mode change re-renders it.

The filters' `grpc_service` points at the mesh's own outbound cluster for meshward's Service
(`outbound|9191||meshward.meshward.svc.cluster.local`), not at a cluster of ours: Istio's
automatic mTLS then carries every Check and tap stream with the calling sidecar's own
certificate to meshward's sidecar (STRICT PeerAuthentication on its `grpc-` ports), which
verifies it and appends the caller to `x-forwarded-client-cert`, the one thing serve trusts
(`serve --grpc-plaintext`, meshward.core.peer.xfcc_identity).
- `extension-provider`: Istio's own ext_authz integration, a `meshConfig.extensionProviders`
  entry (envoyExtAuthzGrpc) plus an AuthorizationPolicy with action CUSTOM (enforce only).
  Istio has no ext_proc provider, so the tap still comes as an EnvoyFilter.

Both styles add a DestinationRule for meshward's Service, seen from this namespace only: the tap's
stream window (`FilterSettings.tap_stream_window`) on the mesh's outbound cluster for the tap
port. Istio builds that cluster, and its DestinationRule API sets the HTTP/2 limits there
(`connectionPool.http.maxConcurrentStreams`); an EnvoyFilter MERGE of the cluster's
`typed_extension_protocol_options` would replace Istio's whole HttpProtocolOptions, since Istio
does not merge inside an `Any` (istio/istio#55940). It sets no `tls`, so Istio's automatic mTLS
still applies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from meshward.core.labels import MANAGED_BY, MODE_LABEL
from meshward.istio import filters
from meshward.istio.authzexport import AUTHZ_POLICY_API
from meshward.istio.filters import FilterSettings

ENVOYFILTER_API = "networking.istio.io/v1alpha3"
DESTINATION_RULE_API = "networking.istio.io/v1"
DEFAULT_SERVICE = "meshward.meshward.svc.cluster.local"
PROVIDER_NAME = "meshward"
STYLES = ("envoyfilter", "extension-provider")
HCM = "envoy.filters.network.http_connection_manager"


def _metadata(name: str, namespace: str, mode: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {**MANAGED_BY, MODE_LABEL: mode},
    }


def _filter_match(context: str = "SIDECAR_INBOUND") -> dict[str, Any]:
    return {
        "context": context,
        "listener": {
            "filterChain": {"filter": {"name": HCM, "subFilter": {"name": filters.ROUTER}}}
        },
    }


def mesh_cluster(service: str, port: int) -> str:
    """Istio's name for the outbound cluster of `service`'s `port` (no subset)."""
    return f"outbound|{port}||{service}"


def envoy_filter(
    s: FilterSettings,
    *,
    service: str = DEFAULT_SERVICE,
    authz_port: int = 9191,
    tap_port: int = 9192,
    selector: dict[str, str] | None = None,
    with_authz: bool | None = None,
    outbound_tap: bool = True,
    name: str = "meshward",
) -> dict[str, Any]:
    """The EnvoyFilter carrying exactly `filters.http_filters(s)`, calling meshward through the
    mesh's outbound clusters for `service` (mesh_cluster).

    `selector` limits it to some workloads (their labels); `with_authz=False` drops ext_authz
    (the extension-provider style installs it through Istio instead); `outbound_tap` also taps
    the workloads' outbound calls (SIDECAR_OUTBOUND), so both ends of each call report it.
    """
    authz = s.with_authz if with_authz is None else with_authz and s.with_authz
    s = dataclasses.replace(
        s,
        authz_cluster=mesh_cluster(service, authz_port),
        tap_cluster=mesh_cluster(service, tap_port),
    )
    patches: list[dict[str, Any]] = []
    for http_filter in filters.http_filters(s):
        if http_filter["name"] == filters.EXT_AUTHZ and not authz:
            continue
        patches.append(
            {
                "applyTo": "HTTP_FILTER",
                "match": _filter_match(),
                # each goes right before the router, so they keep their order
                "patch": {"operation": "INSERT_BEFORE", "value": http_filter},
            }
        )
    if outbound_tap:
        # the caller's view of each call, for the both-ends join (tap only: callers never decide)
        caller = dataclasses.replace(s, direction="outbound")  # the same mesh clusters
        patches += [
            {
                "applyTo": "HTTP_FILTER",
                "match": _filter_match("SIDECAR_OUTBOUND"),
                "patch": {"operation": "INSERT_BEFORE", "value": http_filter},
            }
            for http_filter in filters.http_filters(caller)
        ]
    if authz:
        patches.append(
            {
                "applyTo": "VIRTUAL_HOST",
                "match": {"context": "SIDECAR_INBOUND"},
                "patch": {
                    "operation": "MERGE",
                    "value": {"typed_per_filter_config": filters.ext_authz_route_config(s)},
                },
            }
        )
    spec: dict[str, Any] = {"configPatches": patches}
    if selector:
        spec = {"workloadSelector": {"labels": dict(selector)}, **spec}
    return {
        "apiVersion": ENVOYFILTER_API,
        "kind": "EnvoyFilter",
        "metadata": _metadata(name, s.namespace, s.mode),
        "spec": spec,
    }


def tap_destination_rule(
    s: FilterSettings,
    *,
    service: str = DEFAULT_SERVICE,
    tap_port: int = 9192,
    selector: dict[str, str] | None = None,
    name: str = "meshward",
) -> dict[str, Any]:
    """The tap's window on the mesh's outbound cluster for meshward's tap port, as
    `filters.grpc_cluster` sets it on the bootstrap's own cluster: at most `tap_stream_window`
    streams on one connection, one connection, further copies queued in the sidecar (at most
    TAP_CIRCUIT_LIMIT). Exported to this namespace only; `selector` narrows it to the workloads
    the EnvoyFilter taps."""
    spec: dict[str, Any] = {
        "host": service,
        "exportTo": ["."],
        "trafficPolicy": {
            "portLevelSettings": [
                {
                    "port": {"number": tap_port},
                    "connectionPool": {
                        "tcp": {"maxConnections": 1},
                        "http": {
                            "maxConcurrentStreams": s.tap_stream_window,
                            "http1MaxPendingRequests": filters.TAP_CIRCUIT_LIMIT,
                            "http2MaxRequests": filters.TAP_CIRCUIT_LIMIT,
                        },
                    },
                }
            ]
        },
    }
    if selector:
        spec["workloadSelector"] = {"matchLabels": dict(selector)}
    return {
        "apiVersion": DESTINATION_RULE_API,
        "kind": "DestinationRule",
        "metadata": _metadata(name, s.namespace, s.mode),
        "spec": spec,
    }


def extension_provider(
    *, service: str = DEFAULT_SERVICE, authz_port: int = 9191, body_limit: int = 8192
) -> dict[str, Any]:
    """The mesh-wide `meshConfig.extensionProviders` entry (fails closed: only enforce uses it)."""
    return {
        "name": PROVIDER_NAME,
        "envoyExtAuthzGrpc": {
            "service": service,
            "port": authz_port,
            "timeout": "0.2s",
            "failOpen": False,
            "statusOnError": "403",
            "includeRequestBodyInCheck": {
                "maxRequestBytes": body_limit,
                "allowPartialMessage": True,
                "packAsBytes": True,
            },
        },
    }


def authorization_policy(namespace: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    """CUSTOM policy sending every request of the namespace to meshward's provider."""
    spec: dict[str, Any] = {
        "action": "CUSTOM",
        "provider": {"name": PROVIDER_NAME},
        "rules": [{}],  # one empty rule matches every request
    }
    if selector:
        spec = {"selector": {"matchLabels": dict(selector)}, **spec}
    return {
        "apiVersion": AUTHZ_POLICY_API,
        "kind": "AuthorizationPolicy",
        "metadata": _metadata("meshward-ext-authz", namespace, "enforce"),
        "spec": spec,
    }


def render(
    namespace: str,
    mode: str,
    *,
    style: str = "envoyfilter",
    service: str = DEFAULT_SERVICE,
    authz_port: int = 9191,
    tap_port: int = 9192,
    workload: str = "",
    selector: Mapping[str, str] | None = None,
    body_limit: int = 8192,
    outbound_tap: bool = True,
    tap_close_timeout_ms: int = filters.TAP_CLOSE_TIMEOUT_MS,
    tap_stream_window: int = filters.TAP_STREAM_WINDOW,
) -> dict[str, Any]:
    """Everything to install for `namespace` in `mode`.

    Returns {"objects": [Kubernetes objects]} and, for the extension-provider style,
    "meshConfig": the fragment to merge into istiod's mesh config. In `off`, no objects and no
    fragment: meshward is not installed there (delete what an earlier mode rendered).
    `workload` narrows the objects to that workload's pods and names it in context_extensions
    and the tap metadata: its name as its owner references give it (the Deployment,
    StatefulSet or DaemonSet: meshward.linkerd.pods.workload_of), the one naming serve's pod
    index checks against the sidecar's verified service account (docs/security.md). Its pods
    are selected by `selector`, default the label app=<workload>.
    `tap_close_timeout_ms` and `tap_stream_window`: how far meshward may lag behind the tap
    (FilterSettings); the window is the DestinationRule's (tap_destination_rule).
    """
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r} ({', '.join(STYLES)})")
    s = FilterSettings(
        namespace=namespace,
        workload=workload,
        mode=mode,
        body_limit=body_limit,
        tap_close_timeout_ms=tap_close_timeout_ms,
        tap_stream_window=tap_stream_window,
    )
    if not s.installed:
        return {"objects": []}
    if selector and not workload:
        raise ValueError("a selector needs the workload it selects (the name serve checks)")
    labels = (dict(selector) if selector else {"app": workload}) if workload else None
    name = f"meshward-{workload}" if workload else "meshward"
    common: dict[str, Any] = {
        "authz_port": authz_port,
        "tap_port": tap_port,
        "outbound_tap": outbound_tap,
    }
    window = tap_destination_rule(s, service=service, tap_port=tap_port, selector=labels, name=name)
    if style == "envoyfilter":
        objects = [envoy_filter(s, service=service, selector=labels, name=name, **common), window]
        return {"objects": objects}
    objects = [
        envoy_filter(s, service=service, selector=labels, with_authz=False, name=name, **common),
        window,
    ]
    if mode == "enforce":
        objects.append(authorization_policy(namespace, labels))
    provider = extension_provider(service=service, authz_port=authz_port, body_limit=body_limit)
    return {"meshConfig": {"extensionProviders": [provider]}, "objects": objects}
