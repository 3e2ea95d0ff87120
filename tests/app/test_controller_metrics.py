"""The controller's metrics port on a real kube-apiserver: the reconcile counters, the managed
object count and the last success time move when a namespace's labels change; leadership shows;
/healthz is open; /metrics wants a Kubernetes token for audience `meshward` allowed by the
install's `meshward-metrics-reader` (reviewed with the install's controller ClusterRole);
`public_metrics` opens it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from meshward.app.controller import Controller, ControllerConfig
from meshward.app.controllermetrics import MetricsPort, kubernetes_guard
from meshward.app.install import API_ROLES, PERMISSIONS
from meshward.kube.config import load_client
from meshward.kube.watch import wait_for
from tests.support.apiserver import KubeCluster
from tests.support.envoy_http import free_port
from tests.support.kubeauth import grant, sa_token, service_account
from tests.support.metrics import sample

pytestmark = pytest.mark.integration
AUD = ["meshward"]


def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def metered(
    kube_cluster: KubeCluster, kube_namespace: str, istio_crds: None
) -> Iterator[dict[str, Any]]:
    """A controller leading under the install's controller ClusterRole (a ServiceAccount's
    token), with its metrics port on a free port."""
    ns = kube_namespace
    service_account(kube_cluster, ns, "meshward-controller")
    grant(kube_cluster, PERMISSIONS["controller"], ns, "meshward-controller")
    kubeconfig = kube_cluster.write_kubeconfig(sa_token(kube_cluster, ns, "meshward-controller"))
    api = load_client(str(kubeconfig))
    ctl = Controller(api, ControllerConfig(resync=0.5))
    leading, stop = threading.Event(), threading.Event()
    leading.set()
    port = MetricsPort(ctl, kubernetes_guard(api, public_metrics=False), leading, "127.0.0.1", 0)
    port.start()
    ctl.start_watches()
    thread = threading.Thread(target=ctl.run, args=(stop, leading), daemon=True)
    thread.start()
    try:
        assert wait_for(ctl.synced, 20)
        yield {"ns": ns, "ctl": ctl, "port": port.port, "leading": leading}
    finally:
        stop.set()
        ctl.wake.set()
        thread.join(10)
        ctl.stop_watches()
        port.stop()
        api.close()


def test_counters_move_and_scrapes_are_guarded(
    kube_cluster: KubeCluster, metered: dict[str, Any]
) -> None:
    ns, port = metered["ns"], metered["port"]
    service_account(kube_cluster, ns, "prom")
    service_account(kube_cluster, ns, "nobody")
    grant(kube_cluster, API_ROLES["meshward-metrics-reader"], ns, "prom")
    prom = sa_token(kube_cluster, ns, "prom", AUD)

    assert _get(port, "/healthz") == (200, "ok\n")  # the liveness probe needs nothing
    assert _get(port, "/metrics")[0] == 401
    assert _get(port, "/metrics", "not-a-token-at-all-really")[0] == 401
    assert _get(port, "/metrics", sa_token(kube_cluster, ns, "prom"))[0] == 401  # audience
    assert _get(port, "/metrics", sa_token(kube_cluster, ns, "nobody", AUD))[0] == 403

    def scrape() -> str:
        status, body = _get(port, "/metrics", prom)
        assert status == 200, body
        return body

    first = scrape()
    assert sample(first, "meshward_controller_leader ") == 1.0
    applied = sample(first, "meshward_controller_applied_total ")
    passes = sample(first, "meshward_controller_passes_total ")

    watched = f"m-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": watched, "labels": {"istio-injection": "enabled"}},
            }
        ),
    )
    t0 = time.time()

    def moved(field: str, more_than: float) -> bool:
        return sample(scrape(), f"meshward_controller_{field} ") > more_than

    assert wait_for(lambda: moved("applied_total", applied), 15)
    kube_cluster.kubectl("label", "namespace", watched, "meshward.io/mode=enforce")
    assert wait_for(lambda: moved("applied_total", applied + 1), 15)
    body = scrape()
    assert sample(body, "meshward_controller_passes_total ") > passes
    assert sample(body, "meshward_controller_errors_total ") == 0
    assert sample(body, "meshward_controller_events_total ") >= 2  # FiltersApplied, twice
    assert sample(body, 'meshward_controller_managed_objects{kind="EnvoyFilter"}') >= 1
    assert sample(body, "meshward_controller_namespaces ") >= 2
    assert sample(body, "meshward_controller_last_success_timestamp_seconds ") >= t0 - 1
    assert sample(body, 'meshward_controller_http_refused_total{why="unauthenticated"}') == 3
    assert sample(body, 'meshward_controller_http_refused_total{why="forbidden"}') == 1

    metered["leading"].clear()  # stepped down: the gauge says so
    assert sample(scrape(), "meshward_controller_leader ") == 0.0
    kube_cluster.kubectl("delete", "namespace", watched, "--wait=false")


def test_public_metrics_opens_only_metrics(kube_cluster: KubeCluster) -> None:
    api = kube_cluster.api_client()
    ctl = Controller(api)
    port = MetricsPort(ctl, kubernetes_guard(api, public_metrics=True), None, "127.0.0.1", 0)
    port.start()
    try:
        status, body = _get(port.port, "/metrics")
        assert status == 200
        assert sample(body, "meshward_controller_leader ") == 1.0  # no election: it leads
        assert sample(body, "meshward_controller_last_success_timestamp_seconds ") == 0.0
        assert _get(port.port, "/api/v1/alerts")[0] == 401  # nothing else is open
    finally:
        port.stop()
        api.close()


def test_the_command_serves_the_port_and_stops_cleanly(
    kube_cluster: KubeCluster, kube_namespace: str, istio_crds: None
) -> None:
    """`meshward controller --metrics-port`: the probe answers, /metrics is guarded, SIGTERM
    stops it (0 would disable the port; out of range is a usage error)."""
    kubeconfig = str(kube_cluster.write_kubeconfig(kube_cluster.admin_token))
    base = [sys.executable, "-m", "meshward", "controller", "--kubeconfig", kubeconfig]
    bad = subprocess.run([*base, "--metrics-port", "70000"], capture_output=True, text=True)
    assert bad.returncode != 0 and "--metrics-port" in bad.stderr
    port = free_port()
    args = ["--namespace", kube_namespace, "--identity", "t", "--lease-duration", "3"]
    args += ["--metrics-host", "127.0.0.1", "--metrics-port", str(port)]
    proc = subprocess.Popen([*base, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            try:
                return _get(port, "/healthz")[0] == 200
            except OSError:
                return False

        assert wait_for(healthy, 20), proc.stdout.read1().decode() if proc.stdout else ""
        assert _get(port, "/metrics")[0] == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
