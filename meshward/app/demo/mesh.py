"""The demo's mini-mesh: `meshward serve`, one mTLS sidecar per service and direction.

One CA signs every sidecar's certificate; the sidecars use it for mTLS between each other and to
serve's gRPC ports, where serve takes whose traffic it is from it.

Each sidecar is a real Envoy rendered by `istio.bootstrap.render_bootstrap`, the same filter
config `meshward istio render` puts into an EnvoyFilter. A mode change works as a real install
does: the namespace's mode is set in meshward and the sidecars' filters are re-rendered for the
new mode (Istio would push the re-rendered EnvoyFilter over xDS; here each inbound sidecar is
restarted on its port with the new bootstrap, which takes a fraction of a second).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.certs import MeshCA
from meshward.istio.envoyproc import EnvoyProcess, die_with_parent
from meshward.istio.tls import SidecarTLS
from meshward.runtime.client import ApiClient, ApiError

ROOT = Path(__file__).resolve().parents[3]  # the checkout (meshward is not always installed)


class DemoError(RuntimeError):
    """Something the demo needs did not work; the message says what."""


@dataclass
class Sidecar:
    """One Envoy: the inbound sidecar of a service, or a caller's outbound sidecar to one."""

    namespace: str
    workload: str
    direction: str
    upstream: str
    h2: bool
    tls: SidecarTLS
    callee: str = ""  # outbound: the service it leads to
    port: int = 0
    mode: str = "learn"
    proc: EnvoyProcess | None = None

    @property
    def name(self) -> str:
        if self.direction == "inbound":
            return self.workload
        return f"{self.workload}->{self.callee}"

    def bootstrap(self, server: ServeProcess) -> dict[str, Any]:
        return render_bootstrap(
            self.port,
            self.upstream,
            self.namespace,
            self.workload,
            self.mode,
            authz_port=server.authz_port,
            tap_port=server.tap_port,
            direction=self.direction,
            upstream_h2=self.h2,
            tls=self.tls,
            meshward_tls=self.tls,  # the sidecar's own certificate is its identity to serve
        )

    async def start(self, server: ServeProcess) -> None:
        self.proc = EnvoyProcess(self.bootstrap(server), name=f"sidecar {self.name}")
        await self.proc.astart()
        self.port = self.proc.port

    def stats(self) -> dict[str, int]:
        return self.proc.stats("http.") if self.proc is not None and self.proc.running else {}


@dataclass
class ServeProcess:
    """`meshward serve` as a subprocess with a temp SQLite store.

    It binds port 0 for all three services and the ports are read from its "serving" log
    line, so no other process on this busy machine can take them between choosing and binding.
    """

    workdir: Path
    authz_port: int = 0
    tap_port: int = 0
    http_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "serve.log"

    @property
    def ca_dir(self) -> Path:
        """The mesh CA: it signs the sidecars' certificates, and serve requires one from it."""
        return self.workdir / "ca"

    def log_tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def launch(self) -> None:
        """Spawn it (from the main thread: its parent-death signal follows this thread)."""
        cmd = [
            sys.executable,
            "-m",
            "meshward",
            "serve",
            "--db",
            str(self.workdir / "meshward.db"),
            "--listen-host",
            "127.0.0.1",
            "--authz-port",
            str(self.authz_port),
            "--tap-port",
            str(self.tap_port),
            "--http-port",
            str(self.http_port),
            "--grpc-ca-dir",
            str(self.ca_dir),
            "--log-level",
            "info",  # the "serving" line names the bound ports
        ]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                die_with_parent(cmd),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )

    def _bound_ports(self) -> bool:
        """Read the ports from the "serving" log line, once it is there."""
        with contextlib.suppress(OSError):
            for line in self.log_path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    doc = json.loads(line)
                    if doc.get("msg") == "serving":
                        self.authz_port = int(doc["authz"])
                        self.tap_port = int(doc["tap"])
                        self.http_port = int(doc["http"])
                        return True
        return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until it serves (/readyz 200); DemoError with its log tail if it dies or hangs."""
        if self.proc is None:
            raise DemoError("meshward serve was not launched")
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DemoError(
                    f"meshward serve exited with status {self.proc.returncode}:\n" + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise DemoError(f"meshward serve not ready in {timeout:g}s:\n{self.log_tail()}")
            if not self.http_port and not self._bound_ports():
                time.sleep(0.05)
                continue
            if self.client.ready():
                return
            time.sleep(0.05)

    def stop(self, grace: float = 3.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    # -- its HTTP API ------------------------------------------------------------------------
    @property
    def client(self) -> ApiClient:
        """serve's API, with the token serve generated beside its store (authentication is on
        by default; the demo uses the file just as an operator would)."""
        return ApiClient(self.url, timeout=5, token_file=str(self.workdir / "api-token"))

    def api(self, method: str, path: str, body: object = None) -> Any:
        try:
            return self.client.request(method, path, body)
        except ApiError as exc:
            raise DemoError(f"meshward API {exc}") from None

    def metrics(self, by_label: bool = False) -> dict[str, float]:
        """Prometheus samples: name -> value summed over labels (`by_label`: name{labels})."""
        try:
            text = self.client.metrics_text()
        except ApiError as exc:
            raise DemoError(f"meshward {exc}") from None
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels if by_label else name_labels.split("{", 1)[0]
            with contextlib.suppress(ValueError):
                out[name] = out.get(name, 0.0) + float(value)
        return out


class MiniMesh:
    """The sidecars of the shop (namespace `namespace`) and the ingress gateway's."""

    def __init__(self, namespace: str, server: ServeProcess, workdir: Path) -> None:
        self.namespace = namespace
        self.server = server
        self.ca = MeshCA(server.ca_dir)
        self.sidecars: dict[str, Sidecar] = {}
        self._certs: dict[tuple[str, str], SidecarTLS] = {}

    def _tls(self, namespace: str, workload: str) -> SidecarTLS:
        key = (namespace, workload)
        if key not in self._certs:
            self._certs[key] = self.ca.issue(namespace, workload)
        return self._certs[key]

    async def inbound(self, workload: str, app_port: int, *, h2: bool = False) -> Sidecar:
        """The service's own sidecar: mTLS in, plain to the app on loopback."""
        sc = Sidecar(
            self.namespace,
            workload,
            "inbound",
            f"127.0.0.1:{app_port}",
            h2,
            self._tls(self.namespace, workload),
        )
        await sc.start(self.server)
        self.sidecars[sc.name] = sc
        return sc

    async def outbound(self, caller: str, callee: str, *, namespace: str = "") -> Sidecar:
        """The caller's sidecar for calls to `callee`: the app talks plain HTTP to it."""
        target = self.sidecars[callee]
        ns = namespace or self.namespace
        sc = Sidecar(
            ns,
            caller,
            "outbound",
            f"127.0.0.1:{target.port}",
            target.h2,
            self._tls(ns, caller),
            callee=callee,
        )
        await sc.start(self.server)
        self.sidecars[sc.name] = sc
        return sc

    async def set_mode(self, mode: str) -> None:
        """Re-render the inbound sidecars for `mode` (outbound ones only tap, in every mode)."""
        for sc in self.sidecars.values():
            if sc.direction != "inbound" or sc.mode == mode:
                continue
            if sc.proc is not None:
                await sc.proc.astop()
            sc.mode = mode
            await sc.start(self.server)  # same port: callers' sidecars keep pointing at it

    def stop(self) -> None:
        """Stop every sidecar: SIGTERM all first, then wait (fast even with many)."""
        procs = [sc.proc for sc in self.sidecars.values() if sc.proc is not None]
        for p in procs:
            if p.proc is not None and p.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.proc.terminate()
        for p in procs:
            p.stop()


def make_workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="meshward-demo-")
