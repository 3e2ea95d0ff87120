"""The filter config: what each mode installs and what each filter carries."""

from __future__ import annotations

import json

import pytest

from meshward.core import wire
from meshward.istio import filters
from meshward.istio.filters import FilterSettings


def names(s: FilterSettings) -> list[str]:
    return [f["name"] for f in filters.http_filters(s)]


def test_filters_per_mode() -> None:
    assert names(FilterSettings("shop", "web", "learn")) == [filters.EXT_PROC]
    assert names(FilterSettings("shop", "web", "monitor")) == [filters.EXT_PROC]
    assert names(FilterSettings("shop", "web", "enforce")) == [filters.EXT_AUTHZ, filters.EXT_PROC]
    # the caller's side only reports; the callee's sidecar decides
    out = FilterSettings("shop", "web", "enforce", direction="outbound")
    assert names(out) == [filters.EXT_PROC]


def test_off_renders_nothing() -> None:
    """In `off` meshward is not installed: no filters and no clusters, on either side."""
    for direction in ("inbound", "outbound"):
        s = FilterSettings("shop", "web", "off", direction=direction)
        assert filters.http_filters(s) == [] and filters.clusters(s, "meshward", 9191, 9192) == []
        assert not s.installed and not s.with_authz
    with pytest.raises(ValueError, match="off, learn, monitor, enforce"):
        FilterSettings("shop", "web", "block")


def test_ext_authz_config() -> None:
    s = FilterSettings("shop", "web", "enforce", body_limit=4096)
    cfg = filters.ext_authz_filter(s)["typed_config"]
    assert cfg["@type"].endswith("envoy.extensions.filters.http.ext_authz.v3.ExtAuthz")
    assert cfg["grpc_service"]["envoy_grpc"] == {"cluster_name": filters.AUTHZ_CLUSTER}
    assert cfg["grpc_service"]["timeout"] == "0.200s"
    assert cfg["with_request_body"] == {
        "max_request_bytes": 4096,
        "allow_partial_message": True,
        "pack_as_bytes": True,
    }
    assert cfg["failure_mode_allow"] is False
    assert cfg["status_on_error"] == {"code": "Forbidden"}
    assert cfg["encode_raw_headers"] is True
    metadata = {h["key"]: h["value"] for h in cfg["grpc_service"]["initial_metadata"]}
    assert metadata["x-meshward-namespace"] == "shop"
    assert metadata["x-meshward-workload"] == "web"
    for mode in ("learn", "monitor"):
        open_cfg = filters.ext_authz_filter(FilterSettings("shop", "web", mode))["typed_config"]
        assert open_cfg["failure_mode_allow"] is True
    per_route = filters.ext_authz_route_config(s)[filters.EXT_AUTHZ]
    assert per_route["check_settings"]["context_extensions"] == {
        "namespace": "shop",
        "workload": "web",
        "direction": "inbound",
    }


def test_ext_proc_observability_mode() -> None:
    cfg = filters.ext_proc_filter(FilterSettings("shop", "orders", "learn"))["typed_config"]
    assert cfg["@type"].endswith("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor")
    assert cfg["observability_mode"] is True
    assert cfg["failure_mode_allow"] is True
    mode = cfg["processing_mode"]
    assert mode["request_header_mode"] == mode["response_header_mode"] == "SEND"
    assert mode["request_body_mode"] == "STREAMED"
    assert mode.get("response_body_mode", "NONE") == "NONE"
    assert mode.get("request_trailer_mode", "SKIP") == mode.get("response_trailer_mode") == "SKIP"
    assert cfg["request_attributes"] == list(wire.TAP_ATTRIBUTES)
    full = FilterSettings("shop", "orders", "learn", tap_response_body=True)
    full_mode = filters.ext_proc_filter(full)["typed_config"]["processing_mode"]
    assert full_mode["response_body_mode"] == "STREAMED"
    assert full_mode["response_trailer_mode"] == "SEND"
    full_meta = filters.ext_proc_filter(full)["typed_config"]["grpc_service"]["initial_metadata"]
    assert {"key": "x-meshward-tap-response-body", "value": "true"} in full_meta
    metadata = {h["key"]: h["value"] for h in cfg["grpc_service"]["initial_metadata"]}
    assert metadata == {
        "x-meshward-namespace": "shop",
        "x-meshward-workload": "orders",
        "x-meshward-direction": "inbound",
    }


def test_rendered_identity_fields_are_wire_hints() -> None:
    """Every name the renderer makes the sidecar send is in the wire contract's hint table."""
    s = FilterSettings("shop", "web", "enforce", tap_response_body=True)
    sent: set[str] = set()
    for f in filters.http_filters(s):
        sent |= {h["key"] for h in f["typed_config"]["grpc_service"]["initial_metadata"]}
    per_route = filters.ext_authz_route_config(s)[filters.EXT_AUTHZ]
    sent |= set(per_route["check_settings"]["context_extensions"])
    assert sent and sent <= set(wire.UNTRUSTED_HINTS)


def test_clusters_http2_and_limits() -> None:
    enforce = filters.clusters(FilterSettings("shop", "web", "enforce"), "10.0.0.1", 1, 2)
    assert [c["name"] for c in enforce] == [filters.AUTHZ_CLUSTER, filters.TAP_CLUSTER]
    learn = filters.clusters(FilterSettings("shop", "web", "learn"), "meshward.svc", 1, 2)
    assert [c["name"] for c in learn] == [filters.TAP_CLUSTER]
    tap = learn[0]
    assert tap["type"] == "STRICT_DNS"
    assert enforce[0]["type"] == "STATIC"
    opts = tap["typed_extension_protocol_options"][filters.HTTP_PROTOCOL_OPTIONS]
    # the tap: a window of streams on one connection, the rest queued in the sidecar
    window = {"max_concurrent_streams": filters.TAP_STREAM_WINDOW}
    assert opts["explicit_http_config"] == {"http2_protocol_options": window}
    for t in tap["circuit_breakers"]["thresholds"]:
        assert t["max_requests"] == t["max_pending_requests"] == filters.TAP_CIRCUIT_LIMIT
        assert t["max_connections"] == 1
    authz = enforce[0]
    authz_opts = authz["typed_extension_protocol_options"][filters.HTTP_PROTOCOL_OPTIONS]
    assert authz_opts["explicit_http_config"] == {"http2_protocol_options": {}}
    assert "circuit_breakers" not in authz
    json.dumps(enforce + learn)  # plain JSON-able dicts


def test_tap_lag_settings() -> None:
    """How far meshward may lag: Envoy's deferred close timeout and the tap stream window."""
    default = FilterSettings("shop", "web", "learn")
    cfg = filters.ext_proc_filter(default)["typed_config"]
    assert cfg["deferred_close_timeout"] == f"{filters.TAP_CLOSE_TIMEOUT_MS // 1000}s"
    assert filters.TAP_CLOSE_TIMEOUT_MS > 5000  # longer than Envoy's default
    s = FilterSettings("shop", "web", "learn", tap_close_timeout_ms=1500, tap_stream_window=8)
    assert filters.ext_proc_filter(s)["typed_config"]["deferred_close_timeout"] == "1.500s"
    tap = filters.clusters(s, "10.0.0.1", 1, 2)[-1]
    opts = tap["typed_extension_protocol_options"][filters.HTTP_PROTOCOL_OPTIONS]
    assert opts["explicit_http_config"]["http2_protocol_options"] == {"max_concurrent_streams": 8}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "block"},
        {"direction": "sideways"},
        {"namespace": ""},
        {"namespace": "Shop"},
        {"namespace": "shop ns"},
        {"workload": "web/../x"},
        {"namespace": "a" * 64},
        {"body_limit": -1},
        {"timeout_ms": 0},
        {"tap_close_timeout_ms": 0},
        {"tap_stream_window": 0},
        {"tap_stream_window": 2**31},
    ],
)
def test_bad_settings(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"namespace": "shop", "workload": "web", "mode": "learn"}
    with pytest.raises(ValueError):
        FilterSettings(**{**base, **kwargs})  # type: ignore[arg-type]
