"""`meshward serve --store kubernetes`: one replica of several sharing the cluster store.

What serve needs beyond the `Store` protocol when the store is shared (`app/kubestore.py`):

- **the replica id**: the pod name (`POD_NAME`, from the downward API in the install's
  Deployment), under which this replica's counters are kept;
- **the first sync**: the API server may be unreachable when serve starts. Serve then answers
  `/readyz` 503 and does not open its gRPC ports (sidecars apply their fail mode) until both
  watches listed once (the namespace modes are known: an enforce namespace must never be judged
  in the default learn mode) and the Allowlist objects are loaded into the engine. Afterwards an
  outage changes nothing for the sidecars: the engine keeps the last known allowlist, learning
  waits in the flusher's retried batch;
- **adopting others' changes**: after every batch the flusher takes the other writers' changes
  (other replicas, people with kubectl) and this module applies them to the engine on its
  thread, so they are in effect within a flush interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from kubernetes import client

from meshward.app.alertevents import AlertEvents
from meshward.app.flusher import Flusher, Sharing
from meshward.app.kubestore import Change, KubeStore, KubeStoreUnavailable
from meshward.app.store import AlertStore, StoreError
from meshward.core.allowlist import Limits
from meshward.core.allowlist_merge import rebase
from meshward.core.engine import Engine
from meshward.core.log import event
from meshward.kube.config import load_client
from meshward.kube.errors import KubeError, describe

log = logging.getLogger("meshward.app.replica")

SERVE_SELECTOR = "app.kubernetes.io/name=meshward-serve"  # the install's serve pods
FIRST_SYNC_BACKOFF = (0.5, 5.0)  # seconds between attempts while the API server is away


def replica_id(explicit: str | None = None) -> str:
    """This replica's id: the flag, else `POD_NAME` (the downward API), else the host name."""
    return explicit or os.environ.get("POD_NAME") or socket.gethostname()


def open_cluster_store(
    *,
    kubeconfig: str | None,
    replica: str,
    namespace: str,
    alerts: AlertStore,
    limits: Limits | None = None,
) -> KubeStore:
    """The cluster store for one serve replica (no I/O yet: `first_sync` starts it).

    In a pod (`POD_NAME` and `POD_NAMESPACE` set, as the install does) the counters of serve
    pods that no longer exist are folded (`KubeStore.live_replicas`); elsewhere every id is kept.
    """
    try:
        api = load_client(kubeconfig)
    except KubeError as exc:
        raise StoreError(f"cluster store: {exc}") from exc
    live: Callable[[], set[str]] | None = None
    pod_ns = os.environ.get("POD_NAMESPACE")
    if pod_ns and os.environ.get("POD_NAME") == replica:
        live = _serve_pods(api, pod_ns, replica)
    return KubeStore(
        api,
        replica=replica,
        alerts=alerts,
        namespace=namespace,
        limits=limits,
        live_replicas=live,
        alert_events=AlertEvents(api, replica, namespace),
    )


def _serve_pods(api: client.ApiClient, namespace: str, replica: str) -> Callable[[], set[str]]:
    core = client.CoreV1Api(api)

    def live() -> set[str]:
        pods = core.list_namespaced_pod(
            namespace, label_selector=SERVE_SELECTOR, _request_timeout=(5, 30)
        )
        names = {str(p.metadata.name) for p in pods.items if p.metadata is not None}
        if replica not in names:  # not what we think it is: fold nothing
            raise KubeError(f"pod {replica} is not among the serve pods of {namespace}")
        return names

    return live


def sharing(store: KubeStore, engine: Engine, changed: Callable[[], None]) -> Sharing:
    """The flusher's hooks for a shared store: take the changes on the writer thread, adopt
    them on the engine's thread, then `changed()` (serve drops cached decisions)."""

    def apply(changes: Any) -> None:
        if adopt(engine, store.replica, changes):
            changed()

    return Sharing(take=store.take_changes, apply=apply)


def adopt(engine: Engine, replica: str, changes: list[Change]) -> int:
    """Apply other writers' changes to the engine; how many profiles changed.

    The store's version replaces the engine's profile, except when this engine holds learning
    the store has not seen yet (learned since the last drain, or still queued for a write): then
    the two are joined (`rebase`), so nothing this replica learned is lost and nothing is
    counted twice. A deleted object drops the profile.
    """
    n = 0
    for c in changes:
        dest = c.destination
        try:
            if c.new is None or c.doc is None:
                engine.replace_profile(dest, None)
            elif engine.learning_pending(dest) or c.unwritten:
                profile = engine.allowlist.get(dest)
                doc = c.doc if profile is None else rebase(profile.to_doc(), replica, c.old, c.new)
                engine.replace_profile(dest, doc)
            else:
                engine.replace_profile(dest, c.doc)
        except ValueError as exc:  # the store parsed it; the engine refusing it is a bug
            event(log, "change not adopted", logging.ERROR, destination=dest, error=str(exc))
            continue
        n += 1
    if n:
        event(log, "adopted changes", logging.DEBUG, profiles=n)
    return n


async def first_sync(flusher: Flusher, store: KubeStore, stop: asyncio.Event) -> bool:
    """Start the watches and load the engine, retrying with backoff until the API server
    answers; False when `stop` was set first. Every failed attempt is one log line."""
    store.start()
    delay, most = FIRST_SYNC_BACKOFF
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            await flusher.load_off_loop(lambda: _synced(store))
            event(log, "cluster store synced", attempts=attempt, replica=store.replica)
            return True
        except (StoreError, KubeError) as exc:
            event(
                log,
                "cluster store not reachable yet",
                logging.WARNING,
                attempt=attempt,
                error=describe(exc)[:300],
                retry_in=round(delay, 1),
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(most, delay * 2)
    return False


def _synced(store: KubeStore) -> None:
    """Both watches listed once (the modes are known), or KubeStoreUnavailable."""
    if not store.wait_synced(1.0):
        raise KubeStoreUnavailable("cluster store: the watches have not listed yet")
