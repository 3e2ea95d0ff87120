"""Per-edge verdict counts: buckets, kinds, the memory bound, merging a retried batch."""

from __future__ import annotations

from meshward.core.edges import OTHER, EdgeCount, EdgeCounts, add_pending, merge_counts


def test_counts_per_bucket_edge_and_kind() -> None:
    c = EdgeCounts(bucket_seconds=60)
    c.add("shop/web", "shop/api", "allow", 120.5)
    c.add("shop/web", "shop/api", "allow", 179.9)
    c.add("shop/web", "shop/api", "deny", 150.0)
    c.add("shop/web", "shop/api", "alert", 180.0)  # the next bucket
    got = {(e.bucket, e.source): (e.allowed, e.alerted, e.denied) for e in c.drain()}
    assert got == {(120, "shop/web"): (2, 0, 1), (180, "shop/web"): (0, 1, 0)}
    assert c.drain() == [] and len(c) == 0


def test_new_keys_past_the_bound_fold_into_other() -> None:
    c = EdgeCounts(max_edges=3)
    for i in range(10):
        c.add(f"ns/caller{i}", "shop/api", "allow", 0.0)
    c.add("ns/caller0", "shop/api", "allow", 0.0)  # a key it holds still counts as itself
    got = {e.source: e.allowed for e in c.drain()}
    assert got == {"ns/caller0": 2, "ns/caller1": 1, "ns/caller2": 1, OTHER: 7}
    assert c.folded == 7


def test_a_retried_batch_merges_and_pending_adds_to_stored() -> None:
    a = [EdgeCount(0, "x/a", "y/b", 1, 0, 0)]
    b = [EdgeCount(0, "x/a", "y/b", 2, 1, 0), EdgeCount(60, "x/a", "y/b", 0, 0, 4)]
    merged = {(e.bucket): (e.allowed, e.alerted, e.denied) for e in merge_counts(a, b)}
    assert merged == {0: (3, 1, 0), 60: (0, 0, 4)}
    stored = [EdgeCount(0, "x/a", "y/b", 5, 0, 0).as_dict()]
    out = add_pending(stored, [*b, EdgeCount(0, "q/r", "s/t", 1, 0, 0)], since=0, namespace="y")
    assert [(r["time"], r["allowed"], r["denied"]) for r in out] == [(0, 7, 0), (60, 0, 4)]
    assert add_pending([], b, since=61) == [EdgeCount(60, "x/a", "y/b", 0, 0, 4).as_dict()]


def test_counts_merged_from_elsewhere_add_and_fold_as_added_ones() -> None:
    """An ingest batch's edges, drained in the worker, merge as if added here one by one."""
    calls = [("a/x", "b/api", "allow"), ("a/x", "b/api", "deny"), ("c/y", "b/api", "alert")]
    calls += [(f"n/{i}", "b/api", "allow") for i in range(5)]
    calls += [("n/0", "b/api", "deny"), ("n/4", "b/api", "alert")]  # folded keys called twice
    one_by_one, merged, worker = EdgeCounts(max_edges=4), EdgeCounts(max_edges=4), EdgeCounts()
    one_by_one.add("z/z", "b/api", "allow", 61.0)
    merged.add("z/z", "b/api", "allow", 61.0)
    for source, dest, verdict in calls:
        one_by_one.add(source, dest, verdict, 62.0)
        worker.add(source, dest, verdict, 62.0)
    merged.merge(worker.drain())
    assert sorted(merged.peek(), key=str) == sorted(one_by_one.peek(), key=str)
    assert merged.folded == one_by_one.folded > 0
    assert any(e.source == OTHER for e in merged.peek())
