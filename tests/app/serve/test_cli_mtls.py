"""Today's flow from the README, with mTLS on by default and no extra step: `meshward serve`
creates its CA beside the store, `meshward envoy bootstrap` issues the workload's certificate
from it and wires it in, and the sidecar's traffic reaches serve with a verified identity."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshward.istio.envoyproc import EnvoyProcess
from meshward.runtime.client import ApiClient, ApiError
from tests.support.envoy_http import free_port, http

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("openssl")]
ROOT = Path(__file__).resolve().parents[3]


def _meshward(cwd: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "meshward", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_serve_and_bootstrap_speak_mtls_by_default(
    envoy_bin: str, echo_app: int, tmp_path: Path
) -> None:
    authz, tap, web = free_port(), free_port(), free_port()
    ports = ["--authz-port", str(authz), "--tap-port", str(tap), "--http-port", str(web)]
    serve = _meshward(tmp_path, "serve", "--listen-host", "127.0.0.1", *ports)
    # serve generates its API token beside the store (the auth guard, on by default)
    client = ApiClient(f"http://127.0.0.1:{web}", token_file=str(tmp_path / "api-token"))
    try:
        deadline = time.monotonic() + 30
        while True:
            assert serve.poll() is None, serve.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
            try:
                if client.ready():
                    break
            except ApiError:
                pass
            assert time.monotonic() < deadline, "serve not ready"
            time.sleep(0.1)
        key = tmp_path / "meshward-ca" / "ca.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        # the operator's command, run where serve keeps its state: no certificate flags
        flags = (
            f"--listen 0 --upstream 127.0.0.1:{echo_app} --namespace shop --workload web "
            f"--mode learn --authz-port {authz} --tap-port {tap} --format json"
        )
        done = subprocess.run(
            [sys.executable, "-m", "meshward", "envoy", "bootstrap", *flags.split()],
            cwd=tmp_path,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            capture_output=True,
            timeout=60,
            check=True,
        )
        boot = json.loads(done.stdout)
        with EnvoyProcess(boot, envoy=envoy_bin, name="cli-sidecar") as envoy:
            for i in range(3):
                assert http(envoy.port, f"/api/items/{i}")[0] == 200
            deadline = time.monotonic() + 15
            while not client.request("GET", "/api/v1/allowlist")["services"]:
                assert time.monotonic() < deadline, "nothing learned over mTLS"
                time.sleep(0.1)
        services = client.request("GET", "/api/v1/allowlist")["services"]
        assert [s["destination"] for s in services] == ["shop/web"]
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=15)
    logs = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    serving = next(entry for entry in logs if entry["msg"] == "serving")
    assert serving["grpc"] == "mtls"
