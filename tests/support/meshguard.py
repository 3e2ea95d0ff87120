"""The configuration guard's test harness on the real API server: a real serve under Kubernetes
authentication, the controller (with its mesh guard) under the install's own ClusterRole, and
helpers that make changes and wait for the guard's Events and alerts
(tests/app/test_meshguard*.py)."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client

from meshward.app.auth import AuthConfig
from meshward.app.controller import Controller, ControllerConfig
from meshward.app.guardlearned import LearnedAllowlists
from meshward.app.install import API_ROLES, PERMISSIONS
from meshward.app.meshguard import MeshGuard
from meshward.kube.watch import wait_for
from meshward.runtime.client import ApiClient
from tests.support.apiserver import KubeCluster
from tests.support.browser import serve_in_thread
from tests.support.kubeauth import grant, sa_token, serve_kubeconfig, service_account

TYPES = {  # kind -> group, version, plural
    "PeerAuthentication": ("security.istio.io", "v1beta1", "peerauthentications"),
    "AuthorizationPolicy": ("security.istio.io", "v1beta1", "authorizationpolicies"),
    "EnvoyFilter": ("networking.istio.io", "v1alpha3", "envoyfilters"),
    "DestinationRule": ("networking.istio.io", "v1beta1", "destinationrules"),
    "Server": ("policy.linkerd.io", "v1beta3", "servers"),
    "LinkerdAuthorizationPolicy": ("policy.linkerd.io", "v1alpha1", "authorizationpolicies"),
    "MeshTLSAuthentication": ("policy.linkerd.io", "v1alpha1", "meshtlsauthentications"),
}
WITHIN = 10.0  # seconds a finding may take (measured: well under one; see `latency`)


@dataclass
class Guarded:
    kube: KubeCluster
    core: client.CoreV1Api  # the admin's: the "someone else" making changes
    custom: client.CustomObjectsApi
    ctl: Controller
    guard: MeshGuard
    viewer: ApiClient  # reads serve's alerts
    url: str
    findings_token: str
    viewer_token: str
    root: str
    call: Callable[..., Any]  # runs a function on serve's loop (its engine is the loop's)
    serve: Any
    made: list[str] = field(default_factory=list)
    latency: list[tuple[str, float, float]] = field(default_factory=list)  # what, to Event, alert

    def namespace(self, mode: str = "enforce", **labels: str) -> str:
        name = f"g-{uuid.uuid4().hex[:8]}"
        body = {"metadata": {"name": name, "labels": {"meshward.io/mode": mode, **labels}}}
        self.core.create_namespace(body)
        self.made.append(name)
        return name

    def apply(
        self,
        kind: str,
        ns: str,
        name: str,
        spec: dict[str, Any],
        manager: str,
        labels: dict[str, str] | None = None,
    ) -> None:
        group, version, plural = TYPES[kind]
        real = "AuthorizationPolicy" if kind.startswith("Linkerd") else kind
        body = {
            "apiVersion": f"{group}/{version}",
            "kind": real,
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": spec,
        }
        self.custom.patch_namespaced_custom_object(
            group,
            version,
            ns,
            plural,
            name,
            body,
            field_manager=manager,
            force=True,
            _content_type="application/apply-patch+yaml",
        )

    def delete(self, kind: str, ns: str, name: str) -> None:
        group, version, plural = TYPES[kind]
        self.custom.delete_namespaced_custom_object(group, version, ns, plural, name)

    def events(self, ns: str, name: str) -> list[Any]:
        items = self.core.list_namespaced_event(
            ns, field_selector=f"involvedObject.name={name}"
        ).items
        return [e for e in items if e.source and e.source.component == "meshward-controller"]

    def alerts(self, name: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.viewer.alerts(limit=1000)
            if a.get("seen_by") == "mesh-guard" and a["guard"]["name"] == name
        ]

    def expect(
        self,
        what: str,
        ns: str,
        name: str,
        threat: str,
        by: str,
        change: Callable[[], None],
        evidence: str = "",
    ) -> Any:
        """Make the change; the Warning Event and the alert must follow within WITHIN seconds,
        naming the manager `by`."""
        t0 = time.monotonic()
        change()
        event_at = alert_at = 0.0
        found: Any = None
        deadline = t0 + WITHIN
        while time.monotonic() < deadline and not (event_at and alert_at):
            if not event_at:
                hits = [
                    e
                    for e in self.events(ns, name)
                    if e.type == "Warning"
                    and e.reason == threat
                    and by in e.message
                    and evidence in e.message
                ]
                if hits:
                    found, event_at = hits[0], time.monotonic() - t0
            if not alert_at:
                got = [
                    a
                    for a in self.alerts(name)
                    if a["threats"][0]["name"] == threat and a["source"] == by
                ]
                if got:
                    alert_at = time.monotonic() - t0
            time.sleep(0.05)
        assert event_at, f"{what}: no {threat} Event by {by} on {name}: {self.events(ns, name)}"
        assert alert_at, f"{what}: no {threat} alert by {by} for {name}: {self.alerts(name)}"
        self.latency.append((what, event_at, alert_at))
        return found

    def normal(self, ns: str, name: str, reason: str) -> Any:
        def seen() -> bool:
            return any(e.type == "Normal" and e.reason == reason for e in self.events(ns, name))

        assert wait_for(seen, WITHIN), f"no Normal {reason} Event on {name}"

    def quiet(self, ns: str, name: str) -> None:
        """No Warning about `name`, after giving the guard time to see it."""
        time.sleep(1.0)
        warnings = [e for e in self.events(ns, name) if e.type == "Warning"]
        assert warnings == [], [e.message for e in warnings]


@contextlib.contextmanager
def guarded_env(kube: KubeCluster, **guard: Any) -> Iterator[Guarded]:
    """serve, the controller and its guard (`guard`: MeshGuard options, e.g. the audit log's
    `authors`) on `kube`, which has the mesh CRDs; everything made is removed after."""
    sys_ns = f"mg-{uuid.uuid4().hex[:6]}"
    root = f"mgroot-{uuid.uuid4().hex[:6]}"
    admin = kube.api_client()
    core = client.CoreV1Api(admin)
    for ns in (sys_ns, root):
        core.create_namespace({"metadata": {"name": ns}})
    serve_kc = serve_kubeconfig(kube, sys_ns, PERMISSIONS["serve"])
    for sa, rules in (
        ("meshward-controller", PERMISSIONS["controller"]),  # the install's, exactly
        ("viewer", API_ROLES["meshward-viewer"]),
    ):
        service_account(kube, sys_ns, sa)
        grant(kube, rules, sys_ns, sa)
    ctl_api = kube.api_client(sa_token(kube, sys_ns, "meshward-controller"))
    findings_token = sa_token(kube, sys_ns, "meshward-controller", ["meshward"])
    viewer_token = sa_token(kube, sys_ns, "viewer", ["meshward"])
    with serve_in_thread(auth=AuthConfig(kubernetes=True, kubeconfig=serve_kc)) as (srv, call):
        url = f"http://127.0.0.1:{srv.ports['http']}"
        ctl = Controller(ctl_api, ControllerConfig(resync=0.5))
        alerts = ApiClient(url, findings_token)
        mesh_guard = MeshGuard(
            ctl_api,
            root_namespace=root,
            alerts=alerts,
            learned=LearnedAllowlists(alerts, refresh=0.5),  # read with the controller's token
            **guard,
        )
        ctl.guard = mesh_guard
        stop = threading.Event()
        ctl.start_watches()
        thread = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
        thread.start()
        env = Guarded(
            kube,
            core,
            client.CustomObjectsApi(admin),
            ctl,
            mesh_guard,
            ApiClient(url, viewer_token),
            url,
            findings_token,
            viewer_token,
            root,
            call,
            srv,
        )
        try:
            assert wait_for(lambda: ctl.synced() and mesh_guard.synced(), 30), "never synced"
            yield env
        finally:
            stop.set()
            ctl.wake.set()
            thread.join(10)
            ctl.stop_watches()
            for ns in [*env.made, sys_ns, root]:
                with contextlib.suppress(Exception):
                    core.delete_namespace(ns)
            ctl_api.close()
            admin.close()


def latency_summary(latency: list[tuple[str, float, float]]) -> str:
    """change -> Event and change -> alert, p50 and max, of the findings `expect` timed."""
    events = sorted(e for _, e, _ in latency)
    alerts = sorted(a for _, _, a in latency)
    return (
        f"{len(latency)} findings; change -> Event p50 "
        f"{events[len(events) // 2]:.2f} s max {events[-1]:.2f} s; "
        f"change -> alert in serve p50 {alerts[len(alerts) // 2]:.2f} s max {alerts[-1]:.2f} s"
    )
