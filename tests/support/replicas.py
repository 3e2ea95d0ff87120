"""Fixtures for serve replicas on the cluster store: the Allowlist CRD on the test API server,
replicas (in-process `ServerThread`s or `meshward serve` processes), Checks over gRPC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2_grpc

from meshward.app.install import crds
from meshward.app.kubestore import object_ref
from meshward.istio.certs import MeshCA
from meshward.istio.tls import SidecarTLS
from meshward.kube.watch import wait_for
from meshward.runtime.client import ApiClient
from tests.support.apiserver import KubeCluster
from tests.support.envoy_http import ServerThread, free_port
from tests.support.grpcmtls import credentials
from tests.support.serve import API_TOKEN, check_request

FLUSH = 0.2  # the replicas' flush interval in these tests (seconds)


@pytest.fixture(scope="module")
def allowlist_crd(kube_cluster: KubeCluster) -> None:
    """meshward's CRDs, applied once per module (idempotent; another module's uninstall may
    have deleted them)."""
    kube_cluster.kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds()})
    )
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", "crd/allowlists.meshward.io", "--timeout=30s"
    )


@pytest.fixture
def replica(kube_cluster: KubeCluster, allowlist_crd: None, tmp_path: Path) -> Iterator[Any]:
    """`replica(name, **config)`: a started in-process serve on the cluster store (admin
    kubeconfig); stopped at the end. Wait for it with `wait_ready`."""
    kubeconfig = kube_cluster.write_kubeconfig(kube_cluster.admin_token)
    made: list[ServerThread] = []

    def make(name: str, **config: Any) -> ServerThread:
        config.setdefault("flush_interval", FLUSH)
        srv = ServerThread(
            str(tmp_path / f"{name}.db"),
            store="kubernetes",
            kubeconfig=str(kubeconfig),
            replica=name,
            **config,
        )
        made.append(srv)
        return srv.start()

    yield make
    for srv in made:
        srv.stop()


def wait_ready(srv: ServerThread, timeout: float = 30.0) -> None:
    assert wait_for(lambda: srv.server is not None and srv.server.ready, timeout), (
        "replica never became ready"
    )


def check(
    port: int,
    path: str,
    namespace: str,
    method: str = "GET",
    workload: str = "api",
    tls: SidecarTLS | None = None,
) -> int:
    """One Check to a serve's ext_authz port (as the sidecar whose certificate `tls` is, else
    plaintext): the gRPC status code of the answer (0: allowed)."""
    target = f"127.0.0.1:{port}"
    if tls is None:
        channel = grpc.insecure_channel(target)
    else:
        options = [("grpc.ssl_target_name_override", "localhost")]
        channel = grpc.secure_channel(target, credentials(tls), options=options)
    with channel as ch:
        r = external_auth_pb2_grpc.AuthorizationStub(ch).Check(
            check_request(method, path, namespace=namespace, workload=workload), timeout=5
        )
    return int(r.status.code)


def stored_paths(kube: KubeCluster, dest: str) -> set[str]:
    """The rule paths of a destination's Allowlist object (empty when there is none)."""
    ns, name = object_ref(dest, "meshward")
    out = kube.kubectl("get", "allowlists.meshward.io", name, "-n", ns, "-o", "json", check=False)
    if out.returncode != 0:
        return set()
    return {r["path"] for r in json.loads(out.stdout)["spec"].get("rules", [])}


def served_paths(srv: ServerThread, dest: str) -> set[str]:
    """The rule paths a running replica's engine holds for `dest` (its HTTP API)."""
    for s in srv.api("GET", "/api/v1/allowlist")["services"]:
        if s["destination"] == dest:
            return {e["path"] for e in s["endpoints"]}
    return set()


class ServeProcess:
    """`meshward serve --store kubernetes` as its own process (kill -9 tests, benchmarks). Its
    gRPC ports require mTLS, as serve's do by default, with one CA for every replica of the
    same `workdir`: `tls(namespace)` issues a sidecar certificate for the `api` workload."""

    def __init__(
        self,
        kubeconfig: Path,
        name: str,
        workdir: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        ports: tuple[int, int, int] | None = None,
    ) -> None:
        self.authz, self.tap, self.http = ports or (free_port(), free_port(), free_port())
        self.workdir = workdir
        self.ca = MeshCA(workdir / "meshward-ca")  # made before any replica starts: shared
        self.log = workdir / f"{name}.log"
        argv = [
            sys.executable,
            "-m",
            "meshward",
            "serve",
            "--store",
            "kubernetes",
            "--kubeconfig",
            str(kubeconfig),
            "--replica",
            name,
            "--db",
            str(workdir / f"{name}.db"),
            "--listen-host",
            "127.0.0.1",
            "--authz-port",
            str(self.authz),
            "--tap-port",
            str(self.tap),
            "--http-port",
            str(self.http),
            "--grpc-ca-dir",
            str(self.ca.dir),
            *extra,
        ]
        environ = {**os.environ, "MESHWARD_API_TOKEN": API_TOKEN, **(env or {})}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=environ)

    def tls(self, namespace: str, workload: str = "api") -> SidecarTLS:
        return self.ca.issue(namespace, workload, out=self.workdir / f"issued-{namespace}")

    @property
    def client(self) -> ApiClient:
        """The HTTP API client, carrying the token the process runs with."""
        return ApiClient(f"http://127.0.0.1:{self.http}", API_TOKEN)

    def mode(self, namespace: str) -> str | None:
        """The mode this serve applies to `namespace` (its HTTP API)."""
        return self.client.request("GET", "/api/v1/modes")["modes"].get(namespace)

    def ready(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve not ready:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
