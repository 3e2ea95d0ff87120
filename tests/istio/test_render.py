"""Istio objects: valid against Istio's CRD schemas, and every patch value loads in real Envoy."""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshward.app.commands import UsageError
from meshward.core.modes import MODES
from meshward.istio import envoyfilter, filters
from meshward.istio.bootstrap import ROUTER_CONFIG, render_bootstrap, upstream_cluster
from meshward.istio.envoyproc import EnvoyError, validate
from meshward.istio.filters import FilterSettings
from tests.support.crdschema import ISTIO_CRDS, Validators, check_object, crd_validators

# DestinationRule (the tap's stream window), with the other security-relevant kinds
ISTIO_MESH_CRDS = ISTIO_CRDS.parent / "crds-mesh-security.yaml"
STYLES = ("envoyfilter", "extension-provider")


@pytest.fixture(scope="module")
def schemas() -> Validators:
    """(apiVersion, kind) -> a validator for the CRD's openAPIV3Schema."""
    return crd_validators(ISTIO_CRDS) | crd_validators(ISTIO_MESH_CRDS)


def variants() -> list[tuple[str, str, str]]:
    return [(m, s, w) for m in MODES for s in STYLES for w in ("", "orders")]


@pytest.mark.parametrize(("mode", "style", "workload"), variants())
def test_objects_match_crd_schemas(
    schemas: dict[tuple[str, str], Any], mode: str, style: str, workload: str
) -> None:
    out = envoyfilter.render("shop", mode, style=style, workload=workload)
    kinds = [o["kind"] for o in out["objects"]]
    if mode == "off":  # meshward is not installed there: nothing at all
        assert out == {"objects": []}
        return
    if style == "extension-provider" and mode == "enforce":
        assert kinds == ["EnvoyFilter", "DestinationRule", "AuthorizationPolicy"]
        policy = out["objects"][2]["spec"]
        assert policy["action"] == "CUSTOM" and policy["provider"] == {"name": "meshward"}
    else:
        assert kinds == ["EnvoyFilter", "DestinationRule"]
    for obj in out["objects"]:
        assert obj["metadata"]["namespace"] == "shop"
        check_object(schemas, obj)
    if style == "extension-provider":
        (provider,) = out["meshConfig"]["extensionProviders"]
        assert provider["envoyExtAuthzGrpc"]["failOpen"] is False
        assert provider["envoyExtAuthzGrpc"]["includeRequestBodyInCheck"]["packAsBytes"] is True


def test_schema_check_can_fail(schemas: dict[tuple[str, str], Any]) -> None:
    obj = envoyfilter.render("shop", "enforce")["objects"][0]
    bad = copy.deepcopy(obj)
    bad["spec"]["configPatches"][0]["applyto"] = bad["spec"]["configPatches"][0].pop("applyTo")
    with pytest.raises(AssertionError):
        check_object(schemas, bad)
    bad = copy.deepcopy(obj)
    bad["spec"]["configPatches"][1]["patch"]["operation"] = "INSERT_SOMEWHERE"
    with pytest.raises(AssertionError):
        check_object(schemas, bad)
    rule = envoyfilter.render("shop", "learn")["objects"][1]
    bad = copy.deepcopy(rule)
    pool = bad["spec"]["trafficPolicy"]["portLevelSettings"][0]["connectionPool"]
    pool["http"]["maxConcurentStreams"] = pool["http"].pop("maxConcurrentStreams")
    with pytest.raises(AssertionError):
        check_object(schemas, bad)


def test_tap_stream_window_is_a_destination_rule(schemas: dict[tuple[str, str], Any]) -> None:
    """--tap-stream-window on the Istio route: the filters call the mesh's outbound cluster, so
    the window is that cluster's HTTP/2 limit, set the Istio way, for the tap port only, seen
    from this namespace (or the rendered workload) only; no tls, so Istio's auto mTLS stays."""
    for style in STYLES:
        for workload, selector in (("", None), ("orders", {"matchLabels": {"app": "orders"}})):
            out = envoyfilter.render(
                "shop",
                "monitor",
                style=style,
                workload=workload,
                tap_port=9300,
                tap_stream_window=32,
            )
            (rule,) = [o for o in out["objects"] if o["kind"] == "DestinationRule"]
            check_object(schemas, rule)
            spec = rule["spec"]
            assert spec["host"] == envoyfilter.DEFAULT_SERVICE and spec["exportTo"] == ["."]
            assert spec.get("workloadSelector") == selector
            assert rule["metadata"]["name"] == (f"meshward-{workload}" if workload else "meshward")
            (port,) = spec["trafficPolicy"]["portLevelSettings"]
            assert port["port"] == {"number": 9300}
            assert port["connectionPool"] == {
                "tcp": {"maxConnections": 1},
                "http": {
                    "maxConcurrentStreams": 32,
                    "http1MaxPendingRequests": filters.TAP_CIRCUIT_LIMIT,
                    "http2MaxRequests": filters.TAP_CIRCUIT_LIMIT,
                },
            }
            assert "tls" not in json.dumps(spec)
    default = envoyfilter.render("shop", "learn")["objects"][1]["spec"]["trafficPolicy"]
    assert default["portLevelSettings"][0]["port"] == {"number": 9192}
    http = default["portLevelSettings"][0]["connectionPool"]["http"]
    assert http["maxConcurrentStreams"] == filters.TAP_STREAM_WINDOW


MESH_CLUSTERS = {
    "authz_cluster": envoyfilter.mesh_cluster(envoyfilter.DEFAULT_SERVICE, 9191),
    "tap_cluster": envoyfilter.mesh_cluster(envoyfilter.DEFAULT_SERVICE, 9192),
}


def test_patches_are_the_filter_config() -> None:
    """One source of truth: the EnvoyFilter carries exactly filters.http_filters, calling
    meshward through the mesh's outbound clusters (Istio's mTLS, no cluster of ours)."""
    for mode in MODES:
        s = FilterSettings("shop", "", mode, **MESH_CLUSTERS)
        if mode == "off":
            assert envoyfilter.render("shop", mode)["objects"] == filters.http_filters(s) == []
            continue
        obj, _window = envoyfilter.render("shop", mode)["objects"]
        patches = obj["spec"]["configPatches"]
        inserted = [p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
        inbound = [v for v in inserted if _direction(v) == "inbound"]
        assert inbound == filters.http_filters(s)
        outbound = [v for v in inserted if _direction(v) == "outbound"]
        caller = FilterSettings("shop", "", mode, "outbound", **MESH_CLUSTERS)
        assert outbound == filters.http_filters(caller)
        assert [f["name"] for f in outbound] == [filters.EXT_PROC]  # callers only report
        for p in patches:
            if p["applyTo"] == "HTTP_FILTER":
                context = "SIDECAR_" + _direction(p["patch"]["value"]).upper()
                assert p["match"]["context"] == context
                assert p["patch"]["operation"] == "INSERT_BEFORE"
                sub = p["match"]["listener"]["filterChain"]["filter"]["subFilter"]
                assert sub == {"name": filters.ROUTER}
        assert not [p for p in patches if p["applyTo"] == "CLUSTER"]
        services = {
            v["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] for v in inserted
        }
        assert services == {"outbound|9192||meshward.meshward.svc.cluster.local"} | (
            {"outbound|9191||meshward.meshward.svc.cluster.local"} if mode == "enforce" else set()
        )
        vhosts = [p for p in patches if p["applyTo"] == "VIRTUAL_HOST"]
        assert len(vhosts) == (1 if mode == "enforce" else 0)
    # the tap's lag settings reach the EnvoyFilter too
    obj, _window = envoyfilter.render(
        "shop", "learn", tap_close_timeout_ms=9000, tap_stream_window=32
    )["objects"]
    patches = obj["spec"]["configPatches"]
    taps = [p["patch"]["value"] for p in patches if p["applyTo"] == "HTTP_FILTER"]
    assert {t["typed_config"]["deferred_close_timeout"] for t in taps} == {"9s"}
    # the extension-provider style leaves ext_authz to Istio
    (tap_only,) = envoyfilter.render("shop", "enforce", style="extension-provider")["objects"][:1]
    names = [p["patch"]["value"].get("name") for p in tap_only["spec"]["configPatches"]]
    assert filters.EXT_AUTHZ not in names and MESH_CLUSTERS["authz_cluster"] not in str(tap_only)


def _direction(http_filter: dict[str, Any]) -> str:
    metadata = http_filter["typed_config"]["grpc_service"]["initial_metadata"]
    return next(h["value"] for h in metadata if h["key"] == "x-meshward-direction")


def _listener(
    patches: list[dict[str, Any]], context: str, port: int, cluster: str
) -> dict[str, Any]:
    """An Istio-like listener of `context` with the HTTP_FILTER and VIRTUAL_HOST patches in."""
    mine = [p for p in patches if p["match"].get("context") == context]
    http_filters = [p["patch"]["value"] for p in mine if p["applyTo"] == "HTTP_FILTER"]
    vhost: dict[str, Any] = {
        "name": f"{context.lower()}|http|{port}",
        "domains": ["*"],
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
    }
    for p in mine:
        if p["applyTo"] == "VIRTUAL_HOST":
            vhost.update(p["patch"]["value"])  # MERGE into Istio's virtual host
    hcm = {
        "@type": (
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager"
        ),
        "stat_prefix": f"{context.lower()}_{port}",
        "route_config": {"name": cluster, "virtual_hosts": [vhost]},
        "http_filters": [
            *http_filters,
            {"name": filters.ROUTER, "typed_config": {"@type": ROUTER_CONFIG}},
        ],
    }
    return {
        "name": f"{context.lower()}_{port}",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [{"filters": [{"name": envoyfilter.HCM, "typed_config": hcm}]}],
    }


def bootstrap_from_patches(obj: dict[str, Any]) -> dict[str, Any]:
    """An Envoy bootstrap that embeds every patch value as Istio would apply it, with the mesh's
    outbound clusters for meshward's Service the filters call (Istio makes those)."""
    patches = obj["spec"]["configPatches"]
    clusters = [
        filters.grpc_cluster(name, "127.0.0.1", port)
        for name, port in (
            (MESH_CLUSTERS["authz_cluster"], 9191),
            (MESH_CLUSTERS["tap_cluster"], 9192),
        )
    ]
    inbound = _listener(patches, "SIDECAR_INBOUND", 15006, "inbound|8080||")
    outbound = _listener(patches, "SIDECAR_OUTBOUND", 15001, "outbound|8080||app.shop")
    apps = [
        upstream_cluster("127.0.0.1:8080", name="inbound|8080||"),
        upstream_cluster("127.0.0.1:8081", name="outbound|8080||app.shop"),
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [inbound, outbound], "clusters": [*apps, *clusters]},
    }


@pytest.mark.integration
@pytest.mark.parametrize(("mode", "style", "workload"), variants())
def test_patch_values_load_in_envoy(envoy_bin: str, mode: str, style: str, workload: str) -> None:
    for obj in envoyfilter.render("shop", mode, style=style, workload=workload)["objects"]:
        if obj["kind"] == "EnvoyFilter":
            validate(bootstrap_from_patches(obj), envoy=envoy_bin)


@pytest.mark.integration
def test_envoy_rejects_a_broken_patch(envoy_bin: str) -> None:
    obj, _window = envoyfilter.render("shop", "enforce")["objects"]
    for p in obj["spec"]["configPatches"]:
        if p["applyTo"] == "HTTP_FILTER":
            p["patch"]["value"]["typed_config"]["with_request_body"] = {"max_request_bytes": -1}
    with pytest.raises(EnvoyError):
        validate(bootstrap_from_patches(obj), envoy=envoy_bin)


# -- the commands -------------------------------------------------------------------------------


def run_command(module: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="meshward")
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(module).register(sub)
    args = parser.parse_args([module.rsplit(".", 1)[1], *argv])
    return int(args.func(args))


BOOT = [
    "bootstrap",
    "--listen",
    "15006",
    "--upstream",
    "127.0.0.1:8080",
    "--namespace",
    "shop",
    "--workload",
    "web",
    "--server-plaintext",  # compared with render_bootstrap's plaintext default below
    "--mode",
]


def test_envoy_bootstrap_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("meshward.app.commands.envoy", [*BOOT, "enforce"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == render_bootstrap(15006, "127.0.0.1:8080", "shop", "web", "enforce")
    assert run_command("meshward.app.commands.envoy", [*BOOT, "learn", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == render_bootstrap(15006, "127.0.0.1:8080", "shop", "web", "learn")


@pytest.mark.integration
def test_envoy_bootstrap_validate_says_it_passed_and_what(
    envoy_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--validate was silent on success: it now says on stderr which Envoy loaded what (stdout
    stays the configuration alone), and a rejection exits 1 with Envoy's reason."""
    assert run_command("meshward.app.commands.envoy", [*BOOT, "enforce", "--validate"]) == 0
    out, err = capsys.readouterr()
    expected = render_bootstrap(15006, "127.0.0.1:8080", "shop", "web", "enforce")
    assert yaml.safe_load(out) == expected
    assert err == (
        "meshward envoy bootstrap: valid: Envoy 1.40.0 loaded it (envoy --mode validate): "
        "listener 127.0.0.1:15006 (ext_authz -> ext_proc -> router); "
        "clusters app, meshward-authz, meshward-tap\n"
    )
    argv = [*BOOT, "learn", "--validate", "--listen-host", "999.1.1.1"]
    assert run_command("meshward.app.commands.envoy", argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("meshward envoy bootstrap: envoy rejected the config: ")
    assert "malformed IP address: 999.1.1.1" in err


@pytest.mark.usefixtures("openssl")
def test_envoy_bootstrap_command_wires_the_workload_certificate(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """By default the command issues the workload's certificate from meshward's CA (created if
    absent) and both meshward clusters present it, pinning serve's SPIFFE id; Envoy reads it
    through file-based SDS, so reissuing the files rotates it (tests/app/serve/test_rotation)."""
    boot = [b for b in BOOT if b != "--server-plaintext"]
    argv = [*boot, "enforce", "--ca-dir", str(tmp_path / "ca"), "--format", "json"]
    argv += ["--service-account", "web-sa"]
    assert run_command("meshward.app.commands.envoy", argv) == 0
    clusters = json.loads(capsys.readouterr().out)["static_resources"]["clusters"]
    mine = [c for c in clusters if c["name"] in (filters.AUTHZ_CLUSTER, filters.TAP_CLUSTER)]
    assert len(mine) == 2
    for cluster in mine:
        context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        sds = context["tls_certificate_sds_secret_configs"][0]["sds_config"]
        sds_file = Path(sds["path_config_source"]["path"])
        secret = json.loads(sds_file.read_text())["resources"][0]["tls_certificate"]
        cert = secret["certificate_chain"]["filename"]
        assert cert == str(tmp_path / "ca" / "issued" / "shop.web-sa.crt")
        validation = context["combined_validation_context"]
        trust = Path(
            validation["validation_context_sds_secret_config"]["sds_config"]["path_config_source"][
                "path"
            ]
        )
        trusted = json.loads(trust.read_text())["resources"][0]["validation_context"]
        assert trusted["trusted_ca"]["filename"] == str(tmp_path / "ca" / "ca.crt")
        assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
            {
                "san_type": "URI",
                "matcher": {"exact": "spiffe://cluster.local/ns/meshward/sa/meshward"},
            }
        ]
    san = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", cert],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "URI:spiffe://cluster.local/ns/shop/sa/web-sa" in san
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0


def test_envoy_bootstrap_bad_input() -> None:
    with pytest.raises(UsageError, match="HOST:PORT"):
        run_command("meshward.app.commands.envoy", [*BOOT[:4], "nonsense", *BOOT[5:], "learn"])
    with pytest.raises(UsageError, match="tap-port"):
        run_command("meshward.app.commands.envoy", [*BOOT, "learn", "--tap-port", "70000"])


@pytest.mark.integration
def test_envoy_bootstrap_command_validates(
    envoy_bin: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command("meshward.app.commands.envoy", [*BOOT, "enforce", "--validate"]) == 0
    assert "ext_authz" in capsys.readouterr().out


def test_istio_render_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["render", "--namespace", "shop", "--mode", "enforce"]
    assert run_command("meshward.app.commands.istio", argv) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["kind"] for d in docs] == ["EnvoyFilter", "DestinationRule"]
    mesh = tmp_path / "mesh.yaml"
    argv += ["--style", "extension-provider", "--mesh-config", str(mesh)]
    assert run_command("meshward.app.commands.istio", argv) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert [d["kind"] for d in docs] == ["EnvoyFilter", "DestinationRule", "AuthorizationPolicy"]
    assert yaml.safe_load(mesh.read_text())["meshConfig"]["extensionProviders"][0]["name"]
    with pytest.raises(UsageError):
        run_command("meshward.app.commands.istio", ["render", "--namespace", "", "--mode", "learn"])
    argv = ["render", "--namespace", "shop", "--mode", "learn", "--no-outbound-tap"]
    assert run_command("meshward.app.commands.istio", [*argv, "--format", "json"]) == 0
    obj, _window = json.loads(capsys.readouterr().out)
    contexts = {p["match"]["context"] for p in obj["spec"]["configPatches"]}
    assert contexts == {"SIDECAR_INBOUND"}  # the mesh's own cluster to meshward: none added
    assert [p["applyTo"] for p in obj["spec"]["configPatches"]] == ["HTTP_FILTER"]


def test_render_names_the_workload_as_serve_checks_it(capsys: pytest.CaptureFixture[str]) -> None:
    """--workload is the owner-reference name sent to serve; --selector picks its pods when
    their labels say otherwise (the pod index checks the name, never the label)."""
    argv = ["render", "--namespace", "shop", "--mode", "enforce", "--workload", "web"]
    assert run_command("meshward.app.commands.istio", [*argv, "--selector", "app=frontend"]) == 0
    obj, window = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert obj["spec"]["workloadSelector"] == {"labels": {"app": "frontend"}}
    assert window["spec"]["workloadSelector"] == {"matchLabels": {"app": "frontend"}}
    text = json.dumps(obj)
    assert '"workload": "web"' in text and "frontend" not in text.replace('"app": "frontend"', "")
    assert run_command("meshward.app.commands.istio", argv) == 0
    obj, _window = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert obj["spec"]["workloadSelector"] == {"labels": {"app": "web"}}
    for bad in (["--selector", "app"], ["--selector", "=x"]):
        with pytest.raises(UsageError):
            run_command("meshward.app.commands.istio", [*argv, *bad])
    with pytest.raises(UsageError):
        run_command("meshward.app.commands.istio", [*argv[:5], "--selector", "app=x"])


def test_istio_render_off_prints_no_objects(capsys: pytest.CaptureFixture[str]) -> None:
    """`--mode off`: nothing to apply (an empty stream, or [] in JSON), and a note on stderr."""
    for style in envoyfilter.STYLES:
        argv = ["render", "--namespace", "shop", "--mode", "off", "--style", style]
        assert run_command("meshward.app.commands.istio", argv) == 0
        out, err = capsys.readouterr()
        assert out == "" and "nothing to install in shop" in err and "kubectl delete" in err
        assert run_command("meshward.app.commands.istio", [*argv, "--format", "json"]) == 0
        assert json.loads(capsys.readouterr().out) == []


def test_envoy_bootstrap_off_has_no_meshward_filters() -> None:
    """A sidecar of an `off` namespace is a plain proxy: only the router, no meshward cluster."""
    boot = render_bootstrap(15006, "127.0.0.1:8080", "shop", "web", "off")
    text = json.dumps(boot)
    assert filters.EXT_PROC not in text and filters.EXT_AUTHZ not in text
    assert [c["name"] for c in boot["static_resources"]["clusters"]] == [
        upstream_cluster("127.0.0.1:8080")["name"]
    ]


def test_tap_lag_flags_reach_both_renderers(capsys: pytest.CaptureFixture[str]) -> None:
    """--tap-close-timeout-ms and --tap-stream-window: one pair of flags, every renderer."""
    lag = ["--tap-close-timeout-ms", "12000", "--tap-stream-window", "64"]
    argv = [*BOOT, "learn", *lag, "--format", "json"]
    assert run_command("meshward.app.commands.envoy", argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == render_bootstrap(
        15006,
        "127.0.0.1:8080",
        "shop",
        "web",
        "learn",
        tap_close_timeout_ms=12000,
        tap_stream_window=64,
    )
    text = json.dumps(printed)
    assert '"deferred_close_timeout": "12s"' in text and '"max_concurrent_streams": 64' in text
    argv = ["render", "--namespace", "shop", "--mode", "monitor", *lag, "--format", "json"]
    assert run_command("meshward.app.commands.istio", argv) == 0
    text = capsys.readouterr().out
    assert '"deferred_close_timeout": "12s"' in text
    assert '"maxConcurrentStreams": 64' in text  # the window: a DestinationRule (docs/envoy.md)
    with pytest.raises(UsageError, match="stream window"):
        run_command("meshward.app.commands.envoy", [*BOOT, "learn", "--tap-stream-window", "0"])
    with pytest.raises(UsageError, match="close timeout"):
        run_command("meshward.app.commands.istio", [*argv[:5], "--tap-close-timeout-ms", "-1"])
