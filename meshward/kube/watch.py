"""Watch-with-relist: a consistent, self-healing view of any list endpoint (core or custom objects).

The consumer interface is one stream of `Event`s:

* ``SYNC``: the full current set (``event.objects``, keyed by (namespace, name)). The first
  event is always a SYNC; another one follows every relist (after 410 Gone, a dropped stream or an
  API error). A consumer *replaces* its view with it, which prunes whatever vanished meanwhile.
* ``ADDED`` / ``MODIFIED`` / ``DELETED``: one object (``event.object``), applied on top.

Objects are plain dicts exactly as the API server sent them (camelCase keys; list items get the
``kind``/``apiVersion`` the list omitted), so core objects and custom objects look alike and no
model class can reject a field it does not know.

    w = Watcher(core.list_namespaced_pod, "prod", field_selector="spec.nodeName=node-1")
    for ev in w:              # or w.start(handler) for a thread; w.stop() from anywhere
        ...

Why not `kubernetes.watch.Watch`: it retries a 410 only once, silently, without a relist, so a
consumer misses deletions; it deserializes into models (custom objects become dicts, core ones
don't); and a stopped watch can sit in a read until the server's timeout.

Behaviour: the list gives a resourceVersion; the watch starts there with bookmarks on and a
server-side timeout (``timeout_seconds``, jittered); a clean end of that timeout resumes from the
last resourceVersion without a relist. 410 Gone relists at once; any other failure (connection
refused, reset, read timeout, 5xx, 403 ...) is logged as one line, then retried after an
exponential backoff with jitter capped at ``backoff_max``, and is followed by a relist.
Malformed lines or objects (no JSON, no metadata.name) are counted in `stats.malformed`, logged
and skipped.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from meshward.kube.errors import describe

log = logging.getLogger("meshward.kube")

Key = tuple[str, str]
"""(namespace, name); namespace is "" for cluster-scoped objects."""


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    SYNC = "SYNC"


@dataclass(frozen=True)
class Event:
    """One change (ADDED/MODIFIED/DELETED: `object`) or a full resync (SYNC: `objects`)."""

    type: EventType
    object: dict[str, Any] | None = None
    objects: Mapping[Key, dict[str, Any]] | None = None
    resource_version: str = ""

    @property
    def key(self) -> Key | None:
        return object_key(self.object) if self.object is not None else None


@dataclass
class WatchStats:
    """Counters for metrics and tests; written only by the watching thread."""

    lists: int = 0
    watches: int = 0
    events: int = 0
    gone: int = 0
    errors: int = 0
    malformed: int = 0
    handler_errors: int = 0
    last_error: str = ""
    resource_version: str = ""


class _Gone(Exception):
    """The resourceVersion we hold is too old (410 / Expired): relist."""


class _StreamError(Exception):
    """The watch stream reported an ERROR other than 410."""


def object_key(obj: Mapping[str, Any]) -> Key | None:
    """(namespace, name) of an object dict, or None when it has no usable metadata."""
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return None
    ns = meta.get("namespace") or ""
    return (ns if isinstance(ns, str) else "", name)


class Watcher:
    """Watch-with-relist over `list_fn(*args, **kwargs)`; iterate it, or `start(handler)`.

    `list_fn` is any generated list method that takes ``watch=``/``resource_version=``: e.g.
    ``CoreV1Api.list_namespaced_pod``, ``CoreV1Api.list_pod_for_all_namespaces``,
    ``CustomObjectsApi.list_namespaced_custom_object`` (with group, version, namespace, plural).
    `label_selector` / `field_selector` pass through to the server. One consumer per Watcher.
    """

    def __init__(
        self,
        list_fn: Callable[..., Any],
        *args: Any,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self._fn, self._args, self._kwargs = list_fn, args, dict(kwargs)
        if label_selector:
            self._kwargs["label_selector"] = label_selector
        if field_selector:
            self._kwargs["field_selector"] = field_selector
        self.timeout_seconds = timeout_seconds
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.connect_timeout = connect_timeout
        self.name = name or getattr(list_fn, "__name__", "watch")
        self.stats = WatchStats()
        self.synced = threading.Event()
        """Set once the first SYNC was handed to the consumer."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._resp: Any = None
        self._rv = ""
        self._failures = 0
        self._thread: threading.Thread | None = None

    # ---- control -------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop from any thread: the iterator ends promptly, even inside a blocking read."""
        self._stop.set()
        self._interrupt()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def reconnect(self, resource_version: str | None = None) -> None:
        """Cut the current stream (tests, config reloads); with `resource_version`, resume there.

        A too-old `resource_version` makes the server answer 410, which exercises the relist path.
        """
        if resource_version is not None:
            self._rv = resource_version
        self._interrupt(resume=True)

    def start(self, handler: Callable[[Event], None]) -> threading.Thread:
        """Run `handler(event)` for every event in a daemon thread; returns the thread."""
        self._thread = threading.Thread(
            target=self.run, args=(handler,), name=f"watch-{self.name}", daemon=True
        )
        self._thread.start()
        return self._thread

    def run(self, handler: Callable[[Event], None]) -> None:
        """Feed `handler` until stop(); a raising handler is logged and counted, not fatal."""
        for ev in self:
            try:
                handler(ev)
            except Exception:
                self.stats.handler_errors += 1
                log.exception("watch %s: handler failed on %s event", self.name, ev.type)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the loop ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        need_list = True
        self._resume_requested = False
        while not self._stop.is_set():
            try:
                if need_list:
                    sync = self._list()
                    need_list = False
                    yield sync
                    self.synced.set()
                    if self._stop.is_set():
                        return
                yield from self._watch_once()
                # Clean end (server-side timeout or reconnect()): resume from the last version.
                self._resume_requested = False
            except _Gone:
                self.stats.gone += 1
                log.info(
                    "watch %s: resourceVersion %s expired (410); relisting", self.name, self._rv
                )
                need_list = True
            except ApiException as exc:
                if self._stop.is_set():
                    return
                self._resume_requested = False
                need_list = True
                if exc.status == 410:
                    self.stats.gone += 1
                    log.info("watch %s: 410 Gone at %s; relisting", self.name, self._rv)
                else:
                    self._failed(exc)
            except Exception as exc:
                if self._stop.is_set():
                    return
                if self._resume_requested:
                    self._resume_requested = False
                    continue
                need_list = True
                self._failed(exc)
        return

    def _failed(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = describe(exc)
        delay = min(self.backoff_max, self.backoff_initial * 2 ** min(self._failures, 30))
        delay = delay / 2 + random.uniform(0, delay / 2)
        self._failures += 1
        log.warning("watch %s: %s; retrying in %.1f s", self.name, self.stats.last_error, delay)
        log.debug("watch %s failure", self.name, exc_info=exc)
        self._stop.wait(delay)

    def _call(self, **extra: Any) -> Any:
        kwargs = {**self._kwargs, **extra, "_preload_content": False}
        return self._fn(*self._args, **kwargs)

    def _list(self) -> Event:
        resp = self._call(_request_timeout=(self.connect_timeout, 60))
        try:
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        if not isinstance(body, dict):
            raise ValueError("list response is not a JSON object")
        meta = body.get("metadata") or {}
        rv = str(meta.get("resourceVersion") or "")
        if not rv:
            raise ValueError("list response has no metadata.resourceVersion")
        item_kind = str(body.get("kind") or "").removesuffix("List")
        api_version = body.get("apiVersion")
        objects: dict[Key, dict[str, Any]] = {}
        for item in body.get("items") or []:
            key = object_key(item)
            if key is None:
                self._malformed("list item without metadata.name", item)
                continue
            if item_kind:
                item.setdefault("kind", item_kind)
            if api_version:
                item.setdefault("apiVersion", api_version)
            objects[key] = item
        self._rv = rv
        self.stats.lists += 1
        self.stats.resource_version = rv
        self._failures = 0
        log.debug("watch %s: listed %d objects at %s", self.name, len(objects), rv)
        return Event(EventType.SYNC, objects=objects, resource_version=rv)

    def _watch_once(self) -> Iterator[Event]:
        timeout = max(1, int(self.timeout_seconds * random.uniform(1.0, 1.25)))
        resp = self._call(
            watch=True,
            resource_version=self._rv,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout,
            _request_timeout=(self.connect_timeout, timeout + 30),
        )
        with self._lock:
            self._resp = resp
        if self._stop.is_set():
            self._interrupt()
        self.stats.watches += 1
        try:
            for line in iter_resp_lines(resp):
                ev = self._parse(line)
                if ev is not None:
                    self.stats.events += 1
                    yield ev
                    self._failures = 0
                if self._stop.is_set():
                    return
        finally:
            with self._lock:
                self._resp = None
            with contextlib.suppress(Exception):
                resp.release_conn()

    def _parse(self, line: str) -> Event | None:
        if not line.strip():
            return None
        try:
            data = json.loads(line)
        except ValueError:
            self._malformed("watch line is not JSON", line[:200])
            return None
        if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
            self._malformed("watch event without an object", data)
            return None
        kind, obj = data.get("type"), data["object"]
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise _Gone()
            raise _StreamError(f"watch error {code} {obj.get('reason')}: {obj.get('message')}")
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if kind == "BOOKMARK":
            if isinstance(rv, str) and rv:
                self._rv = self.stats.resource_version = rv
            return None
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            self._malformed(f"unknown watch event type {kind!r}", data)
            return None
        if object_key(obj) is None or not isinstance(rv, str) or not rv:
            self._malformed("watch object without metadata.name/resourceVersion", obj)
            return None
        self._rv = self.stats.resource_version = rv
        return Event(EventType(kind), object=obj, resource_version=rv)

    def _malformed(self, what: str, sample: Any) -> None:
        self.stats.malformed += 1
        log.warning("watch %s: skipped malformed data (%s): %.200r", self.name, what, sample)

    def _interrupt(self, resume: bool = False) -> None:
        """Unblock a read in progress by shutting the socket down under it."""
        with self._lock:
            resp = self._resp
            if resp is not None and resume:
                self._resume_requested = True
        if resp is None:
            return
        sock = None
        with contextlib.suppress(Exception):
            sock = resp.connection.sock
        if sock is None:
            with contextlib.suppress(Exception):
                sock = resp._fp.fp.raw._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` until true or `timeout` s passed (a helper for tests and startup)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


__all__ = ["Event", "EventType", "Key", "WatchStats", "Watcher", "object_key", "wait_for"]
