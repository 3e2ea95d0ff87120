"""The audit log's side of the mesh guard, pure: reading `audit.k8s.io/v1` Events (as the v1.20
webhook backend posts them), what is skipped and why, and joining a change with its write."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.kubeaudit import (
    MAX_BATCH,
    Authors,
    Change,
    Skip,
    events_of,
    record_of,
    timestamp,
)
from tests.support.kubeaudit import T0, audit_event


def change(**over: Any) -> Change:
    values: dict[str, Any] = dict(
        group="security.istio.io",
        resource="peerauthentications",
        namespace="x",
        name="d",
        deleted=False,
        seen=timestamp(T0) + 0.01,
        resource_version="288",
    )
    values.update(over)
    return Change(**values)


def test_an_event_is_read_with_who_where_and_how() -> None:
    r = record_of(audit_event())
    assert (r.group, r.resource, r.namespace, r.name, r.verb) == (
        "security.istio.io",
        "peerauthentications",
        "x",
        "d",
        "patch",
    )
    assert r.who == "admin as carol" and r.resource_version == "288"
    line = r.describe()
    assert line.startswith("admin as carol (groups system:masters,system:authenticated;")
    assert (
        "from 127.0.0.1; agent kubectl/v1.32.4" in line
        and "patch at 2026-12-06T10:14:06.987" in line
    )
    assert abs(r.at - timestamp(T0)) < 1e-6


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"verb": "get"}, "not-a-write"),
        ({"verb": "watch"}, "not-a-write"),
        ({"stage": "RequestReceived"}, "stage"),
        ({"responseStatus": {"code": 403}}, "failed"),
        ({"responseStatus": {}}, "failed"),
        ({"requestURI": "/apis/x/v1/namespaces/x/p/d?dryRun=All"}, "dry-run"),
        ({"objectRef": {"resource": "pods", "name": "p", "subresource": "status"}}, "subresource"),
        ({"objectRef": None}, "malformed"),
        ({"user": {"groups": ["x"]}}, "malformed"),
        ({"verb": 7}, "malformed"),
        ({"stageTimestamp": "yesterday"}, "malformed"),
        ({"requestReceivedTimestamp": None, "stageTimestamp": None}, "malformed"),
    ],
)
def test_what_the_guard_does_not_join_is_skipped_with_its_reason(
    over: dict[str, Any], reason: str
) -> None:
    with pytest.raises(Skip) as skip:
        record_of(audit_event(**over))
    assert skip.value.reason == reason


def test_a_delete_answered_with_a_status_has_no_resource_version() -> None:
    r = record_of(
        audit_event(verb="delete", responseObject={"kind": "Status", "metadata": {}, "code": 200})
    )
    assert r.resource_version == "" and r.verb == "delete"


def test_batches_are_event_lists_or_arrays_and_bounded() -> None:
    assert events_of({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": [1]}) == [1]
    assert events_of({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": None}) == []
    assert events_of([1, 2]) == [1, 2]
    for bad in ({"kind": "List", "items": []}, {"kind": "EventList", "items": []}, "x", 3, None):
        with pytest.raises(ValueError):
            events_of(bad)
    with pytest.raises(ValueError):
        events_of([{}] * (MAX_BATCH + 1))


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "verb",
                        "stage",
                        "user",
                        "username",
                        "objectRef",
                        "resource",
                        "responseStatus",
                        "code",
                        "stageTimestamp",
                        "requestReceivedTimestamp",
                        "responseObject",
                        "metadata",
                        "resourceVersion",
                        "impersonatedUser",
                        "sourceIPs",
                        "groups",
                        "requestURI",
                    ]
                ),
                inner,
                max_size=8,
            )
        ),
        max_leaves=20,
    )
)
def test_any_input_is_a_record_or_a_skip(doc: Any) -> None:
    try:
        r = record_of(doc)
    except Skip:
        return
    assert r.user and r.resource and r.describe()


def test_an_exact_resource_version_wins_over_time() -> None:
    authors = Authors()
    now = timestamp(T0)
    earlier = record_of(
        audit_event(
            user={"username": "alice"},
            impersonatedUser=None,
            responseObject={"metadata": {"resourceVersion": "287"}},
        )
    )
    authors.add(earlier, now)
    authors.add(record_of(audit_event()), now)
    record, how = authors.find(change())
    assert record is not None and record.who == "admin as carol" and how == "resourceVersion"
    record, how = authors.find(change(resource_version="287"))
    assert record is not None and record.who == "alice"
    # a change whose write has not arrived yet: another write's record is never taken for it
    assert authors.find(change(resource_version="289")) == (None, "")


def test_a_deletion_is_joined_by_verb_and_time() -> None:
    authors = Authors(skew=5.0)
    now = timestamp(T0)
    authors.add(record_of(audit_event()), now)  # the patch before: not a deletion
    deleted = audit_event(
        verb="delete",
        impersonatedUser=None,
        responseObject={"kind": "Status"},
        stageTimestamp="2026-12-06T10:14:08.000000Z",
    )
    authors.add(record_of(deleted), now)
    record, how = authors.find(change(deleted=True, resource_version="290", seen=now + 2.05))
    assert record is not None and record.verb == "delete" and record.who == "admin"
    assert how == "time"
    # outside the clock skew allowed: nobody
    assert authors.find(change(deleted=True, seen=now + 60)) == (None, "")


def test_a_deletecollection_names_no_object_but_joins_its_deletions() -> None:
    authors = Authors()
    ref = {"resource": "peerauthentications", "namespace": "x", "apiGroup": "security.istio.io"}
    authors.add(record_of(audit_event(verb="deletecollection", objectRef=ref)), 0.0)
    record, _ = authors.find(change(deleted=True, resource_version=""))
    assert record is not None and record.verb == "deletecollection"


def test_a_pod_is_joined_with_its_latest_write_whenever() -> None:
    authors = Authors()
    ref = {"resource": "pods", "namespace": "x", "name": "web-1"}
    authors.add(record_of(audit_event(objectRef=ref, verb="create", responseObject=None)), 0.0)
    pod = change(group="", resource="pods", name="web-1", resource_version="", any_time=True)
    record, how = authors.find(dataclass_replace(pod, seen=timestamp(T0) + 300))
    assert record is not None and record.verb == "create" and how == "time"


def dataclass_replace(c: Change, **over: Any) -> Change:
    import dataclasses

    return dataclasses.replace(c, **over)


def test_memory_is_bounded_by_object_count_and_age() -> None:
    authors = Authors(size=100, per_object=4, retention=60.0)
    now = timestamp(T0)
    for i in range(1000):  # a flood of writes to distinct objects
        ref = {"resource": "pods", "namespace": "x", "name": f"p{i}"}
        authors.add(record_of(audit_event(objectRef=ref)), now)
    assert len(authors) <= 100 and authors.counters["evicted"] >= 900
    for _ in range(10):  # many writes to one object keep its latest few
        authors.add(record_of(audit_event()), now)
    assert len(authors._by_object[("security.istio.io", "peerauthentications", "x", "d")]) == 4
    later = record_of(audit_event(stageTimestamp="2026-12-06T10:20:00Z"))
    authors.add(later, now + 400)  # everything older than the retention goes
    assert len(authors) == 1 and authors.counters["expired"] > 0


def test_a_record_older_than_the_retention_is_dropped_at_once() -> None:
    authors = Authors(retention=60.0)
    authors.add(record_of(audit_event()), timestamp(T0) + 3600)  # replayed, or a clock far off
    assert len(authors) == 0 and authors.counters["expired"] == 1
    assert authors.find(change()) == (None, "")


def test_a_namespace_is_its_own_namespace_in_the_log_but_has_none() -> None:
    ref = {"resource": "namespaces", "namespace": "shop", "name": "shop", "apiVersion": "v1"}
    r = record_of(audit_event(objectRef=ref))
    assert (r.group, r.resource, r.namespace, r.name) == ("", "namespaces", "", "shop")
