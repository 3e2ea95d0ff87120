"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does it.

The Python client ships only a ConfigMap lock; meshward's controller runs as several replicas and
exactly one may write (statuses, EnvoyFilters), so it needs the Lease lock Kubernetes components
use. The protocol (client-go semantics, so `kubectl get lease` reads naturally):

* The Lease spec holds `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`
  (MicroTime) and `leaseTransitions`. Writes are replace calls carrying the read
  `resourceVersion`, so two candidates racing for one Lease cannot both win: the loser gets 409.
* A candidate takes the Lease when it is free (no holder, e.g. released) or expired. Expiry is
  judged on the local monotonic clock: the holder's record must stay unchanged for
  `leaseDurationSeconds` since *we first saw it*, never by comparing clocks across machines.
* The leader renews every `retry_period`; if no renewal succeeded for `renew_deadline` (< the
  lease duration, so it stops before anyone else may start) it steps down, and runs for the Lease
  again as a candidate. If the Lease shows another holder it steps down at once.
* A clean `stop()` releases the Lease (empty holder), so a standby takes over within one
  `retry_period` instead of a whole lease duration.

Leadership is reported by `leading` (a threading.Event) and the optional callbacks
`on_started_leading()` / `on_stopped_leading()`, called from the elector's thread (keep them short:
set an Event, start or stop a worker).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from meshward.kube.errors import describe

log = logging.getLogger("meshward.kube")


def micro_time(t: datetime.datetime | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC): what Lease times must be."""
    t = t or datetime.datetime.now(datetime.UTC)
    return t.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Run for leadership of Lease `namespace/name` as `identity` (unique per process: pod name).

    Defaults are client-go's (15 s lease, 10 s renew deadline, 2 s retry). `start()` runs the
    election in a daemon thread; `stop()` ends it and releases the Lease if held.
    """

    def __init__(
        self,
        api_client: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None] | None = None,
        on_stopped_leading: Callable[[], None] | None = None,
    ) -> None:
        if not identity:
            raise ValueError("leader election needs a non-empty identity")
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        # Any: the generated client takes plain dicts as bodies, its annotations want models
        self._api: Any = client.CoordinationV1Api(api_client)
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_duration = lease_duration
        self.renew_deadline, self.retry_period = renew_deadline, retry_period
        self.on_started_leading, self.on_stopped_leading = on_started_leading, on_stopped_leading
        self.leading = threading.Event()
        """Set while this elector holds the Lease."""
        self.transitions = 0
        """How often this elector became leader (for tests and metrics)."""
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._observed: tuple[Any, ...] | None = None  # the other holder's record as last seen
        self._observed_at = 0.0  # monotonic time that record was first seen
        t = max(0.5, min(self.retry_period, self.renew_deadline / 2))
        self._timeout = (t, t)

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    # ---- control -------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name=f"leader-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, release: bool = True, timeout: float | None = 10.0) -> None:
        """End the election; with `release` (default) give the Lease up so failover is fast."""
        self._release_on_stop = release
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """The election loop (blocking); `start()` runs it in a thread."""
        self._release_on_stop = True
        while not self._stop.is_set():
            if self._try_acquire_or_renew() == "ok":
                self._lead()
            else:
                self._stop.wait(self.retry_period * random.uniform(1.0, 1.2))

    def _lead(self) -> None:
        self.leading.set()
        self.transitions += 1
        log.info(
            "leader election %s/%s: %s became leader", self.namespace, self.name, self.identity
        )
        self._callback(self.on_started_leading)
        last_renew = time.monotonic()
        try:
            while not self._stop.wait(self.retry_period):
                result = self._try_acquire_or_renew()
                if result == "ok":
                    last_renew = time.monotonic()
                elif result == "lost":
                    log.warning(
                        "leader election %s/%s: %s lost the lease to another holder",
                        self.namespace,
                        self.name,
                        self.identity,
                    )
                    return
                elif time.monotonic() - last_renew > self.renew_deadline:
                    log.warning(
                        "leader election %s/%s: %s could not renew for %.1f s (%s); stepping down",
                        self.namespace,
                        self.name,
                        self.identity,
                        self.renew_deadline,
                        self.last_error,
                    )
                    return
            if self._release_on_stop:
                self._release()
        finally:
            self.leading.clear()
            log.info(
                "leader election %s/%s: %s stopped leading",
                self.namespace,
                self.name,
                self.identity,
            )
            self._callback(self.on_stopped_leading)

    def _callback(self, fn: Callable[[], None] | None) -> None:
        if fn is None:
            return
        try:
            fn()
        except Exception:
            log.exception("leader election %s/%s: callback failed", self.namespace, self.name)

    # ---- one round -----------------------------------------------------------------------
    def _get(self) -> dict[str, Any] | None:
        try:
            resp = self._api.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return json.loads(resp.data)

    def _spec(self, *, acquire_time: str, transitions: int, now: str) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.lease_duration)),
            "acquireTime": acquire_time,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    def _try_acquire_or_renew(self) -> str:
        """'ok' (we hold the Lease now), 'held' (someone else does), 'lost' (we held it and
        another holder shows) or 'error' (API unreachable, 409 race: try again later)."""
        now = micro_time()
        try:
            lease = self._get()
            if lease is None:
                body = {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(acquire_time=now, transitions=0, now=now),
                }
                self._api.create_namespaced_lease(
                    self.namespace, body, _preload_content=False, _request_timeout=self._timeout
                )
                return "ok"
            spec = lease.get("spec") or {}
            holder = spec.get("holderIdentity") or ""
            if holder and holder != self.identity:
                record = (
                    holder,
                    spec.get("renewTime"),
                    spec.get("acquireTime"),
                    spec.get("leaseDurationSeconds"),
                )
                mono = time.monotonic()
                if record != self._observed:
                    self._observed, self._observed_at = record, mono
                duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
                if mono < self._observed_at + duration:
                    return "lost" if self.leading.is_set() else "held"
                log.info(
                    "leader election %s/%s: lease of %s expired; %s takes it",
                    self.namespace,
                    self.name,
                    holder,
                    self.identity,
                )
            transitions = int(spec.get("leaseTransitions") or 0)
            if holder == self.identity:
                new_spec = self._spec(
                    acquire_time=spec.get("acquireTime") or now, transitions=transitions, now=now
                )
            else:
                new_spec = self._spec(acquire_time=now, transitions=transitions + 1, now=now)
            lease["spec"] = new_spec
            self._api.replace_namespaced_lease(
                self.name,
                self.namespace,
                lease,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            return "ok"
        except ApiException as exc:
            self.last_error = (
                "conflict (another candidate wrote first)" if exc.status == 409 else describe(exc)
            )
        except Exception as exc:
            self.last_error = describe(exc)
        log.debug(
            "leader election %s/%s: %s: %s",
            self.namespace,
            self.name,
            self.identity,
            self.last_error,
        )
        return "error"

    def _release(self) -> None:
        """Empty holder, 1 s duration: standbys see a free Lease on their next try."""
        with contextlib.suppress(Exception):
            lease = self._get()
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            now = micro_time()
            lease["spec"].update(
                {"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": now}
            )
            self._api.replace_namespaced_lease(
                self.name,
                self.namespace,
                lease,
                _preload_content=False,
                _request_timeout=self._timeout,
            )
            log.info(
                "leader election %s/%s: %s released the lease",
                self.namespace,
                self.name,
                self.identity,
            )
