"""Watcher logic with a fake list function: malformed data, 410 in the stream, backoff."""

from __future__ import annotations

import json
import threading
from typing import Any

from kubernetes.client.exceptions import ApiException

from meshward.kube import EventType, Watcher


class FakeResponse:
    def __init__(self, data: bytes = b"", lines: list[str] | None = None) -> None:
        self.data = data
        self._lines = lines or []

    def stream(self, amt: Any = None, decode_content: Any = None) -> Any:
        for line in self._lines:
            yield (line + "\n").encode()

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


def cm(name: str, rv: str) -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "n", "resourceVersion": rv},
    }


class FakeApi:
    """Scripted answers: each call pops the next one (an exception is raised)."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.done = threading.Event()

    def list_fn(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        if not self.script:
            self.done.set()
            raise ApiException(status=500, reason="script over")
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def listing(rv: str, *items: dict[str, Any]) -> FakeResponse:
    return FakeResponse(
        json.dumps(
            {
                "kind": "ConfigMapList",
                "apiVersion": "v1",
                "metadata": {"resourceVersion": rv},
                "items": list(items),
            }
        ).encode()
    )


def test_malformed_is_counted_and_410_relists() -> None:
    bad_item = {"metadata": {}}
    api = FakeApi(
        [
            listing("10", cm("a", "9"), bad_item),
            FakeResponse(
                lines=[
                    "not json",
                    json.dumps({"type": "ADDED", "object": cm("b", "11")}),
                    json.dumps({"type": "ADDED", "object": {"metadata": {"name": "x"}}}),  # no rv
                    json.dumps({"type": "WHAT", "object": cm("c", "12")}),
                    json.dumps(
                        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "13"}}}
                    ),
                    json.dumps(
                        {
                            "type": "ERROR",
                            "object": {"kind": "Status", "code": 410, "reason": "Expired"},
                        }
                    ),
                ]
            ),
            listing("20", cm("b", "11")),
        ]
    )
    w = Watcher(
        api.list_fn, "n", field_selector="spec.nodeName=x", backoff_initial=0.01, backoff_max=0.02
    )
    events = []
    for ev in w:
        events.append(ev)
        if len(events) == 3:
            w.stop()
    assert [e.type for e in events] == [EventType.SYNC, EventType.ADDED, EventType.SYNC]
    assert set(events[0].objects or {}) == {("n", "a")}
    assert events[0].objects[("n", "a")]["apiVersion"] == "v1"  # type: ignore[index]
    assert set(events[2].objects or {}) == {("n", "b")}
    assert w.stats.malformed == 4 and w.stats.gone == 1
    assert api.calls[1]["resource_version"] == "10" and api.calls[1]["watch"] is True
    assert all(c["field_selector"] == "spec.nodeName=x" for c in api.calls)


def test_errors_back_off_then_relist() -> None:
    api = FakeApi(
        [
            ApiException(status=503, reason="Unavailable"),
            ConnectionError("refused"),
            listing("5"),
        ]
    )
    w = Watcher(api.list_fn, backoff_initial=0.01, backoff_max=0.05)
    first = next(iter(w))
    assert first.type == EventType.SYNC and first.resource_version == "5"
    assert w.stats.errors == 2 and "refused" in w.stats.last_error
    w.stop()
