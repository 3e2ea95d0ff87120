"""A real Kubernetes API server (v1.20.2) for tests: etcd, kube-apiserver, kube-controller-manager.

`scripts/kube-apiserver.sh` (run by `make setup`) builds and caches the binaries; this module only
starts them. Use from a test package's conftest.py::

    from tests.support.apiserver import kube_cluster, kube_namespace  # noqa: F401

and mark the test modules `pytestmark = pytest.mark.integration`. One cluster per pytest session
(ready in ~5 s); tests isolate themselves with the function-scoped `kube_namespace` (a fresh
namespace, deleted afterwards). Tokens are static (`tokens.csv`): an admin in system:masters and
a handful of unprivileged users in `KubeCluster.users` for RBAC tests.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

KUBE_DIR = Path(os.environ.get("MESHWARD_KUBE_DIR", Path.home() / ".cache/meshward/kube"))
BIN_DIR = KUBE_DIR / "bin"
KUBE_VERSION = "v1.20.2"

# Unprivileged users in tokens.csv: no RBAC bindings at all (tests grant what they need).
# "viewer" is in the group "meshward:viewers", so a test can bind a role to the group instead.
USERS: dict[str, tuple[str, ...]] = {
    "alice": (),
    "bob": (),
    "carol": (),
    "viewer": ("meshward:viewers",),
    "agent": ("meshward:agents",),
}


def _free_port() -> int:
    """A port the kernel calls free now (tiny race with other processes; fine on a test box)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_death_signal(argv: list[str]) -> list[str]:
    """Prefix `setpriv --pdeathsig KILL` so no server outlives pytest, even a SIGKILLed one.

    (Not preexec_fn: it is unsafe once tests run threads.) The signal fires when the *thread*
    that started the process exits, so start and restart servers from the main test thread.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--", *argv] if setpriv else argv


def missing_reason() -> str | None:
    """Why the cluster cannot start here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (the Kubernetes test cluster is built and run as root: make setup)"
    for name in ("kube-apiserver", "kube-controller-manager"):
        if not (BIN_DIR / name).is_file():
            return (
                f"{BIN_DIR / name} is missing: run `make kube-apiserver` "
                "(scripts/kube-apiserver.sh builds it in ~5 min, once)"
            )
    if shutil.which("etcd") is None:
        return "etcd is missing: run `make kube-apiserver` (installs Debian's etcd-server)"
    if shutil.which("openssl") is None:
        return "openssl is missing (makes the service-account signing key)"
    return None


class _Proc:
    """One server process with its log file in the cluster's temp dir."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    def start(self) -> None:
        self._log_fh = self.log.open("ab")
        self.popen = subprocess.Popen(
            _with_death_signal(self.argv),
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
        )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 10.0, kill: bool = False) -> None:
        """SIGTERM (SIGKILL now with `kill`, or after `timeout`); always reaps, closes the log."""
        p = self.popen
        if p is not None and p.poll() is None:
            if kill:
                p.kill()
            else:
                p.terminate()
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.popen = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager on loopback ports, all state in `tmp`.

    Attributes tests use: `url` (https://127.0.0.1:PORT), `admin_token`, `kubeconfig` (admin),
    `ca_file` (verifies the API server's self-signed serving certificate), `users` (name ->
    token for the unprivileged users of `USERS`), `tmp` (logs: etcd.log, kube-apiserver.log,
    kube-controller-manager.log).
    """

    GONE_RESOURCE = "podtemplates"
    """Served from etcd, not the watch cache: an old resourceVersion there really expires (410)."""

    def __init__(
        self,
        tmp: Path,
        *,
        audit_policy: str | None = None,
        audit_webhook: str | None = None,
        audit_webhook_mode: str = "batch",
        audit_batch_max_wait: str = "1s",
    ) -> None:
        """`audit_policy` (an audit.k8s.io/v1 Policy, YAML) and `audit_webhook` (the webhook
        backend's kubeconfig, YAML) switch the API server's audit webhook on; by default there
        is no audit at all, as before."""
        self.tmp = tmp
        self.etcd_port, self.etcd_peer_port = _free_port(), _free_port()
        self.port = _free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.admin_token = secrets.token_hex(16)
        self.users = {name: secrets.token_hex(16) for name in USERS}
        self.cert_dir = tmp / "certs"
        self.ca_file = self.cert_dir / "apiserver.crt"
        self.kubeconfig = tmp / "admin.kubeconfig"
        self._write_credentials()
        self.etcd = _Proc(
            "etcd",
            [
                shutil.which("etcd") or "etcd",
                "--name",
                "meshward-test",
                "--data-dir",
                str(tmp / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{self.etcd_peer_port}",
                "--initial-cluster",
                f"meshward-test=http://127.0.0.1:{self.etcd_peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
            tmp / "etcd.log",
        )
        self.apiserver = _Proc(
            "kube-apiserver",
            [
                str(BIN_DIR / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={self.cert_dir}",
                f"--token-auth-file={tmp / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={tmp / 'sa.pub'}",
                f"--service-account-signing-key-file={tmp / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                # No default ServiceAccount exists until the controller manager made one; pods of
                # tests name their ServiceAccount explicitly or go without.
                "--disable-admission-plugins=ServiceAccount",
                "--allow-privileged=true",
                "--shutdown-delay-duration=0s",
                # PodTemplates bypass the watch cache and etcd is compacted every 2 s, so a
                # watch from an old resourceVersion on podtemplates gets a real 410 Gone (the
                # watch cache would replay it instead): see KubeCluster.GONE_RESOURCE and
                # tests/kube/test_watch.py.
                "--watch-cache-sizes=podtemplates#0",
                "--etcd-compaction-interval=2s",
                "-v=1",
                *self._audit_args(
                    audit_policy, audit_webhook, audit_webhook_mode, audit_batch_max_wait
                ),
            ],
            tmp / "kube-apiserver.log",
        )
        self.controller_manager = _Proc(
            "kube-controller-manager",
            [
                str(BIN_DIR / "kube-controller-manager"),
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                f"--service-account-private-key-file={tmp / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle",
                "-v=1",
            ],
            tmp / "kube-controller-manager.log",
        )

    # ---- setup ---------------------------------------------------------------------------
    def _audit_args(
        self, policy: str | None, webhook: str | None, mode: str, max_wait: str
    ) -> list[str]:
        """The API server's audit webhook backend (v1.20 flags): the policy file, the webhook's
        kubeconfig, its mode (batch: events posted as EventLists every `max_wait` at most)."""
        if policy is None and webhook is None:
            return []
        if policy is None or webhook is None:
            raise ValueError("the audit webhook needs both a policy and a kubeconfig")
        (self.tmp / "audit-policy.yaml").write_text(policy)
        hook = self.tmp / "audit-webhook.kubeconfig"
        hook.write_text(webhook)
        hook.chmod(0o600)
        args = [
            f"--audit-policy-file={self.tmp / 'audit-policy.yaml'}",
            f"--audit-webhook-config-file={hook}",
            f"--audit-webhook-mode={mode}",
            "--audit-webhook-version=audit.k8s.io/v1",
            "--audit-webhook-initial-backoff=1s",
        ]
        if mode == "batch":
            args.append(f"--audit-webhook-batch-max-wait={max_wait}")
        return args

    def _write_credentials(self) -> None:
        rows = [f'{self.admin_token},admin,uid-admin,"system:masters"']
        rows += [
            f'{tok},{name},uid-{name},"{",".join(USERS[name])}"' for name, tok in self.users.items()
        ]
        (self.tmp / "tokens.csv").write_text("\n".join(rows) + "\n")
        key, pub = self.tmp / "sa.key", self.tmp / "sa.pub"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True
        )
        subprocess.run(
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
            check=True,
            capture_output=True,
        )
        # The controller manager needs the kubeconfig before the CA exists: it goes insecure.
        self.write_kubeconfig(self.admin_token, self.kubeconfig, verify=False)

    def start(self, timeout: float = 60.0) -> None:
        """Start etcd, the API server (wait for /readyz) and the controller manager."""
        self.etcd.start()
        self._wait_etcd(timeout)
        self.start_apiserver(timeout)
        self.write_kubeconfig(self.admin_token, self.kubeconfig)
        self.controller_manager.start()

    def _wait_etcd(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.etcd.alive():
                raise ClusterStartError(self, "etcd exited")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.etcd_port}/health", timeout=1
                ) as r:
                    if r.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise ClusterStartError(self, f"etcd not healthy within {timeout:.0f} s")

    def ready(self) -> bool:
        """GET /readyz as admin is 200."""
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        req = urllib.request.Request(
            f"{self.url}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                return r.status == 200
        except (OSError, urllib.error.URLError):
            return False

    # ---- fault injection -----------------------------------------------------------------
    def start_apiserver(self, timeout: float = 60.0) -> float:
        """Start the API server on its old port and data; returns seconds until /readyz."""
        t0 = time.monotonic()
        self.apiserver.start()
        while time.monotonic() - t0 < timeout:
            if not self.apiserver.alive():
                raise ClusterStartError(self, "kube-apiserver exited")
            if self.ready():
                return time.monotonic() - t0
            time.sleep(0.1)
        raise ClusterStartError(self, f"kube-apiserver not ready within {timeout:.0f} s")

    def stop_apiserver(self, graceful: bool = False) -> None:
        """Stop the API server (etcd keeps the data): clients then see connection refused.

        Default SIGKILL, a crash: open streams break at once. `graceful` sends SIGTERM, and
        the server then drains long-running requests (watches) for ~10 s before exiting.
        """
        self.apiserver.stop(timeout=20.0, kill=not graceful)

    def restart(self, down_for: float = 0.0, graceful: bool = False) -> float:
        """Stop the API server, wait `down_for` s, start it again (same port, same etcd data).

        Returns seconds until it was ready again. Watches are cut and must relist or resume.
        """
        self.stop_apiserver(graceful)
        if down_for:
            time.sleep(down_for)
        return self.start_apiserver()

    @contextlib.contextmanager
    def apiserver_down(self) -> Iterator[None]:
        """`with cluster.apiserver_down():` the API server is stopped inside the block."""
        self.stop_apiserver()
        try:
            yield
        finally:
            self.start_apiserver()

    def stop(self) -> None:
        """Controller manager, API server, then etcd (etcd first hangs the API server >10 s)."""
        for proc in (self.controller_manager, self.apiserver, self.etcd):
            with contextlib.suppress(Exception):
                proc.stop(kill=proc is not self.etcd)  # state is thrown away: no need to drain

    # ---- clients -------------------------------------------------------------------------
    def kubeconfig_dict(self, token: str, verify: bool = True) -> dict[str, Any]:
        cluster: dict[str, Any] = {"server": self.url}
        if verify and self.ca_file.exists():
            cluster["certificate-authority"] = str(self.ca_file)
        else:
            cluster["insecure-skip-tls-verify"] = True
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "clusters": [{"name": "test", "cluster": cluster}],
            "users": [{"name": "user", "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        }

    def write_kubeconfig(self, token: str, path: Path | None = None, verify: bool = True) -> Path:
        """A kubeconfig file for `token` (a new file in `tmp` unless `path` is given)."""
        path = path or self.tmp / f"kubeconfig-{uuid.uuid4().hex[:8]}"
        path.write_text(yaml.safe_dump(self.kubeconfig_dict(token, verify)))
        path.chmod(0o600)
        return path

    def api_client(self, token: str | None = None) -> Any:
        """A `kubernetes.client.ApiClient` for `token` (admin by default), CA-verified.

        Not the library's global default configuration: tests never share client state.
        """
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.url
        cfg.ssl_ca_cert = str(self.ca_file)
        cfg.api_key = {"BearerToken": token or self.admin_token}
        cfg.api_key_prefix = {"BearerToken": "Bearer"}
        return client.ApiClient(cfg)

    def user_client(self, name: str) -> Any:
        """ApiClient for one of the unprivileged `USERS` (no RBAC grants until a test adds some)."""
        return self.api_client(self.users[name])

    def kubectl(
        self, *args: str, token: str | None = None, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run /usr/bin/kubectl against this cluster (admin unless `token`)."""
        kc = self.kubeconfig if token is None else self.write_kubeconfig(token)
        return subprocess.run(
            ["kubectl", f"--kubeconfig={kc}", *args],
            check=check,
            capture_output=True,
            text=True,
            input=input,
            timeout=60,
        )

    def logs(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {p.name} ({p.log}) ---\n{p.tail(lines)}"
            for p in (self.etcd, self.apiserver, self.controller_manager)
        )


class ClusterStartError(RuntimeError):
    """The test cluster did not come up; the message carries the tail of every log."""

    def __init__(self, cluster: KubeCluster, what: str) -> None:
        super().__init__(f"{what}\n{cluster.logs()}")


@contextlib.contextmanager
def running_cluster(**options: Any) -> Iterator[KubeCluster]:
    """A real API server started for the block (skipped where it cannot run), all of its
    state thrown away after; `options` go to KubeCluster (the audit webhook)."""
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="meshward-kube-"))
    cluster = KubeCluster(tmp, **options)
    try:
        t0 = time.monotonic()
        try:
            cluster.start()
        except ClusterStartError as exc:
            pytest.fail(f"test Kubernetes cluster did not start: {exc}", pytrace=False)
        cluster.start_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
        yield cluster
    finally:
        cluster.stop()
        if os.environ.get("MESHWARD_KEEP_KUBE_TMP"):
            print(f"kept test cluster state in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    """One real API server for the session; skipped (with the reason) where it cannot run."""
    with running_cluster() as cluster:
        yield cluster


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (not waited for)."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    with kube_cluster.api_client() as api:
        core = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": name}})
        try:
            yield name
        finally:
            with contextlib.suppress(Exception):
                core.delete_namespace(name)


ISTIO_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "istio"
ISTIO_CRDS = ISTIO_DATA / "crds.yaml"
ISTIO_MESH_CRDS = ISTIO_DATA / "crds-mesh-security.yaml"  # DestinationRule among them


@pytest.fixture(scope="session")
def istio_crds(kube_cluster: KubeCluster) -> None:
    """Istio's EnvoyFilter, DestinationRule and AuthorizationPolicy types (and the other
    security-relevant ones) on the test API server (skipped where ../shared is not checked
    out)."""
    for crds in (ISTIO_CRDS, ISTIO_MESH_CRDS):
        if not crds.exists():
            pytest.skip(f"Istio CRDs not found at {crds}")
    # 1.20 drops the CEL rules (x-kubernetes-validations); kubectl's client-side check refuses
    # them, so validation is left to the server (docs/kubernetes.md)
    for crds in (ISTIO_CRDS, ISTIO_MESH_CRDS):
        kube_cluster.kubectl("apply", "--validate=false", "-f", str(crds))
    for name in (
        "envoyfilters.networking.istio.io",
        "destinationrules.networking.istio.io",
        "authorizationpolicies.security.istio.io",
    ):
        kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s")


SHARED_DATA = ISTIO_CRDS.parents[1]
MESH_CRDS = (
    SHARED_DATA / "istio" / "crds.yaml",
    SHARED_DATA / "istio" / "crds-mesh-security.yaml",
    SHARED_DATA / "linkerd" / "crds.yaml",
)


@pytest.fixture(scope="session")
def mesh_crds(kube_cluster: KubeCluster) -> None:
    """Every Istio and Linkerd policy type the mesh guard watches, on the test API server."""
    apply_mesh_crds(kube_cluster)


def apply_mesh_crds(kube_cluster: KubeCluster) -> None:
    """Istio's CRDs with validate=false (1.20 drops their CEL rules), Linkerd's without the
    `default: ""` lines 1.20 rejects ("must be of type string: null"); see docs/kubernetes.md.
    Skips the test where ../shared is not checked out."""
    for path in MESH_CRDS:
        if not path.exists():
            pytest.skip(f"mesh CRDs not found at {path}")
    for path in MESH_CRDS:
        text = path.read_text()
        if "linkerd" in path.parts:
            text = "\n".join(ln for ln in text.splitlines() if ln.strip() != 'default: ""')
        kube_cluster.kubectl("apply", "--validate=false", "-f", "-", input=text)
    names = [
        d["metadata"]["name"]
        for path in MESH_CRDS
        for d in yaml.safe_load_all(path.read_text())
        if d and d.get("kind") == "CustomResourceDefinition"
    ]
    kube_cluster.kubectl(
        "wait", "--for=condition=Established", *[f"crd/{n}" for n in names], "--timeout=30s"
    )
