"""`meshward serve` and `meshward tap envoy-admin` as the processes the demo and operators run."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.envoyproc import EnvoyProcess
from meshward.runtime.client import ApiClient, ApiError
from meshward.tap.envoy.admin import TraceSplitter
from tests.support.envoy_http import free_port, http

ROOT = Path(__file__).resolve().parents[3]
TAP_FILTER = {
    "name": "envoy.filters.http.tap",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.tap.v3.Tap",
        "common_config": {"admin_config": {"config_id": "meshward-test"}},
    },
}


def _meshward(*args: str, **kw: object) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "meshward", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kw,
    )  # type: ignore[call-overload]


def _get(port: int, path: str, token_file: Path | None = None) -> Any:
    client = ApiClient(f"http://127.0.0.1:{port}", token_file=str(token_file or ""))
    return client.request("GET", path)


def _wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:] if proc.stderr else ""
        try:
            if _get(port, "/readyz")["ready"]:
                return
        except ApiError:  # not listening yet, or 503 while starting
            pass
        assert time.monotonic() < deadline, "meshward serve not ready"
        time.sleep(0.1)


def test_trace_splitter_cuts_concatenated_values() -> None:
    s = TraceSplitter(max_value=100)
    data = json.dumps({"a": "é" * 3}).encode() + b"\n" + json.dumps({"b": 2}, indent=2).encode()
    out = []
    for i in range(len(data)):  # byte by byte, splitting the UTF-8 character too
        out += s.feed(data[i : i + 1])
    assert out == [{"a": "ééé"}, {"b": 2}]


def test_serve_bad_flags_exit_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    db = str(tmp_path / "m.db")
    procs: list[subprocess.Popen[bytes]] = []
    for args in (
        ["--authz-port", "70000"],
        [
            "--db",
            str(tmp_path / "plain-file" / "x.db"),
            "--authz-port",
            "0",
            "--tap-port",
            "0",
            "--http-port",
            "0",
        ],
        [
            "--db",
            db,
            "--listen-host",
            "127.0.0.1",
            "--authz-port",
            "0",
            "--tap-port",
            str(busy.getsockname()[1]),
            "--http-port",
            "0",
        ],
        ["--flush-interval", "0"],
        ["--store", "kubernetes", "--kubeconfig", str(tmp_path / "none"), "--db", db + "2"],
        ["--alerts-dsn", "postgresql://x:y@[::1", "--db", db + "3", "--http-port", "0"],
    ):
        procs.append(_meshward("serve", *args))  # all at once: each start is mostly imports
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 2, err.decode()[-500:]
            assert err.decode().strip().splitlines()[-1].startswith("meshward serve:")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        busy.close()


@pytest.mark.integration
def test_serve_process_and_admin_tap(envoy_bin: str, echo_app: int, tmp_path: Path) -> None:
    authz, tap, web = free_port(), free_port(), free_port()
    serve = _meshward(
        "serve",
        "--db",
        str(tmp_path / "m.db"),
        "--listen-host",
        "127.0.0.1",
        "--authz-port",
        str(authz),
        "--tap-port",
        str(tap),
        "--http-port",
        str(web),
    )
    tapper = None
    try:
        _wait_http(web, serve)
        token_file = tmp_path / "api-token"  # generated beside the store, mode 0600
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        with pytest.raises(ApiError) as refused:
            _get(web, "/api/v1/allowlist")
        assert refused.value.status == 401
        boot = render_bootstrap(
            0, f"127.0.0.1:{echo_app}", "shop", "api", "learn", authz_port=authz, tap_port=tap
        )
        hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        filters = hcm["typed_config"]["http_filters"]
        filters[:] = [TAP_FILTER, filters[-1]]  # only the admin tap reports, then the router
        with EnvoyProcess(boot, envoy=envoy_bin, name="admin-tapped") as envoy:
            tapper = _meshward(
                "tap",
                "envoy-admin",
                "--admin",
                envoy.admin_url,
                "--config-id",
                "meshward-test",
                "--serve",
                f"http://127.0.0.1:{web}",
                "--api-token-file",
                str(token_file),
                "--namespace",
                "shop",
                "--workload",
                "api",
                "--count",
                "3",
                "--duration",
                "20",
            )
            deadline = time.monotonic() + 20
            while tapper.poll() is None:  # requests until the tap is attached and saw 3
                assert time.monotonic() < deadline, "admin tap saw nothing"
                assert http(envoy.port, "/api/tapped?x=1")[0] == 200
                time.sleep(0.1)
            assert tapper.returncode == 0, tapper.stderr.read().decode()[-2000:]
        doc = _get(web, "/api/v1/allowlist", token_file)
        assert [s["destination"] for s in doc["services"]] == ["shop/api"]  # type: ignore[index]
        assert "/api/tapped" in json.dumps(doc)
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=15) == 0
        logs = [
            json.loads(line)
            for line in serve.stderr.read().decode().splitlines()
            if line.startswith("{")
        ]
        assert {"serving", "stopped"} <= {entry["msg"] for entry in logs}
        # where the token is, never the token
        assert any(e["msg"] == "api token" and e["source"] == str(token_file) for e in logs)
        assert token_file.read_text().strip() not in json.dumps(logs)
    finally:
        for p in (tapper, serve):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
