"""The exported AuthorizationPolicy enforced by a real Envoy 1.40: its RBAC filter, as istiod
translates the policy (tests/support/istio_rbac.py), in a sidecar under Istio's mTLS. Callers
present their SPIFFE certificates from the test mesh CA; what meshward learned passes, other
callers, methods and paths get Envoy's 403, and in dry-run nothing is denied but the shadow
verdicts are counted."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from meshward.istio.authzexport import authorization_policies
from meshward.istio.certs import MeshCA
from meshward.istio.envoyproc import EnvoyProcess
from meshward.istio.tls import SidecarTLS
from tests.support.istio_rbac import DRY_RUN_PREFIX, rbac_sidecar
from tests.support.learned import sample_engine
from tests.support.openapi_traffic import Traffic

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("openssl")]
CALLERS = ("web", "mobile", "orders", "admin", "payments")


class Caller:
    """An HTTPS client holding one workload's mesh certificate."""

    def __init__(self, tls: SidecarTLS) -> None:
        self.ctx = ssl.create_default_context(cafile=tls.ca_cert)
        self.ctx.load_cert_chain(tls.cert_chain, tls.private_key)
        self.ctx.check_hostname = False  # the sidecar's certificate names its SPIFFE id

    def status(self, port: int, method: str, path: str) -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.ctx, timeout=5)
        try:
            conn.request(method, path)
            return conn.getresponse().status
        finally:
            conn.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ca = MeshCA(tmp_path_factory.mktemp("ca"))
    out: dict[str, Any] = {"api": ca.issue("shop", "api")}
    for name in CALLERS:
        out[name] = Caller(ca.issue("shop", name))
    out["attacker"] = Caller(ca.issue("shop", "attacker"))
    return out


@pytest.fixture
def sidecar(envoy_bin: str, mesh: dict[str, Any], request: Any) -> Iterator[EnvoyProcess]:
    mode, templates = request.param
    engine = sample_engine(mode=mode)
    policies = authorization_policies(
        engine.allowlist, engine.mode_of, path_templates=templates
    ).objects
    with EnvoyProcess(rbac_sidecar(mesh["api"], policies), envoy=envoy_bin, name="rbac") as envoy:
        yield envoy


@pytest.mark.parametrize(
    "sidecar", [("enforce", True), ("enforce", False)], ids=["templates", "prefixes"], indirect=True
)
def test_envoy_rbac_allows_what_was_learned_and_denies_the_rest(
    sidecar: EnvoyProcess, mesh: dict[str, Any], request: Any
) -> None:
    """With path templates (Istio 1.22+) and with the prefixes older Istio takes instead."""
    templates = "templates" in request.node.callspec.id
    port = sidecar.port
    held_out = Traffic(seed=99)
    for _ in range(150):
        obs = held_out.normal()
        caller = mesh[obs.source.workload]
        target = obs.path + (f"?{obs.query}" if obs.query else "")  # the query is not the path
        assert caller.status(port, obs.method, target) == 200, (obs.source.key, obs.method, target)
    assert mesh["web"].status(port, "HEAD", "/health") == 200
    bad = Traffic(seed=1234)
    for kind in ("unknown-endpoint", "wrong-method"):
        for _ in range(40):
            obs = bad.deviation(kind)
            assert mesh[obs.source.workload].status(port, obs.method, obs.path) == 403, (
                kind,
                obs.method,
                obs.path,
            )
    assert mesh["attacker"].status(port, "GET", "/health") == 403  # a mesh identity, unknown
    assert mesh["admin"].status(port, "GET", "/health") == 403  # known, not on this endpoint
    # a template's {*} is one segment, not more; a prefix is wider: what the notes say
    deeper = 403 if templates else 200
    assert mesh["web"].status(port, "GET", "/products/1/2/reviews") == deeper
    assert mesh["web"].status(port, "GET", "/products/../admin") == 403  # normalised: /admin
    stats = sidecar.stats("http.inbound.rbac.")
    assert stats["http.inbound.rbac.denied"] >= 83 and stats["http.inbound.rbac.allowed"] >= 151


@pytest.mark.parametrize("sidecar", [("monitor", True)], indirect=True)
def test_dry_run_denies_nothing_and_counts_what_it_would(
    sidecar: EnvoyProcess, mesh: dict[str, Any]
) -> None:
    port = sidecar.port
    assert mesh["web"].status(port, "GET", "/health") == 200
    assert mesh["attacker"].status(port, "DELETE", "/users") == 200  # shadow only
    shadow = f"http.inbound.rbac.{DRY_RUN_PREFIX}."
    stats = sidecar.stats("http.inbound.rbac")
    assert stats[f"{shadow}shadow_allowed"] == 1 and stats[f"{shadow}shadow_denied"] == 1
    assert stats["http.inbound.rbac.denied"] == 0
