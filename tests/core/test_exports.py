"""What the native-policy exports share: which keys name workloads and callers."""

from __future__ import annotations

import pytest

from meshward.core.allowlist import Allowlist, EndpointRule
from meshward.core.exports import (
    Note,
    Workload,
    caller_account,
    destination_workload,
    enforced,
    rule_callers,
    targets,
)


def test_destination_and_caller_keys() -> None:
    assert destination_workload("shop/api") == Workload("shop", "api")
    assert caller_account("shop/web.v2") == Workload("shop", "web.v2")  # accounts may hold dots
    for bad in (
        "api",
        "shop/",
        "/api",
        "Shop/api",
        "shop/a b",
        "a/b/c",
        "shop/" + "x" * 64,
        "unknown",
        "10.0.0.1",
        "spiffe://cluster.local/ns/a/sa/b",
    ):
        assert destination_workload(bad) is None, bad
    assert destination_workload("shop/web.v2") is None  # a label value, not a subdomain


def test_targets_skip_and_note_and_refuse_unknown() -> None:
    allowlist = Allowlist()
    for key in ("shop/api", "api.example.com", "b/x"):
        allowlist.profile(key)
    notes: list[Note] = []
    assert [w.key for w, _ in targets(allowlist, None, notes)] == ["b/x", "shop/api"]
    assert [n.line() for n in notes] == [
        "api.example.com: not a namespace/workload of Kubernetes names"
    ]
    assert [w.key for w, _ in targets(allowlist, "shop/api", [])] == ["shop/api"]
    with pytest.raises(KeyError):
        targets(allowlist, "shop/nope", [])


def test_rule_callers_fall_back_to_the_services() -> None:
    allowlist = Allowlist()
    profile = allowlist.profile("shop/api")
    profile.learn_source("shop/web", 1.0)
    own = EndpointRule("GET", "/a", sources={"shop/mobile": 2})
    assert rule_callers(profile, own) == ["shop/mobile"]
    assert rule_callers(profile, EndpointRule("GET", "/b")) == ["shop/web"]


def test_only_enforce_enforces() -> None:
    assert [m for m in ("off", "learn", "monitor", "enforce") if enforced(m)] == ["enforce"]
