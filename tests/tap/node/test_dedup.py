"""AlertDedup, the one deduplication of the node tap's alerts (network threats, mesh guard)."""

from __future__ import annotations

from collections import Counter

from meshward.core.observation import Identity, Observation, Threat
from meshward.tap.node.dedup import AlertDedup


def alert(t: float, evidence: str) -> Observation:
    return Observation(
        seen_by="node-tap",
        source=Identity(ip="10.0.0.1"),
        destination=Identity(ip="10.0.0.2"),
        time=t,
        threats=[Threat("ICMP.Flood", "network", evidence)],
        extra={"count": "1"},
    )


def test_repeats_refresh_the_window_alert_and_summaries_are_copies() -> None:
    stats: Counter[str] = Counter()
    d = AlertDedup(10.0, 2, stats)
    out: list[Observation] = []
    assert d.repeat("k") is None  # no window: the caller builds and reports the alert
    d.report("k", alert(0.0, "first"), out)
    assert [o.extra["repeats"] for o in out] == ["0"] and out[0].extra["dedup_window_s"] == "10"
    last = d.repeat("k")
    assert last is not None
    last.extra["count"], last.threats[0].evidence = "7", "newest"  # refreshed in place
    assert out[0].threats[0].evidence == "first"  # what was sent is a copy
    assert d.tick(5.0) == []  # window still open
    (summary,) = d.tick(10.0)
    assert (summary.time, summary.extra["repeats"], summary.extra["summary"]) == (10.0, "1", "true")
    assert (summary.extra["count"], summary.threats[0].evidence) == ("7", "newest")
    again = d.repeat("k")  # the summary opened the next window
    assert again is not None
    again.threats[0].evidence = "later"
    assert summary.threats[0].evidence == "newest"  # a summary sent stays as sent
    assert d.tick(20.0)[0].threats[0].evidence == "later"
    assert d.tick(30.0) == [] and len(d) == 0  # a quiet window closes silently
    assert stats == Counter(alerts=3, suppressed=2)


def test_keys_past_the_cap_are_reported_each_time_and_counted() -> None:
    stats: Counter[str] = Counter()
    d = AlertDedup(10.0, 1, stats)
    out: list[Observation] = []
    for key in ("a", "b", "b"):
        if d.repeat(key) is None:
            d.report(key, alert(0.0, key), out)
    assert [o.threats[0].evidence for o in out] == ["a", "b", "b"] and len(d) == 1
    assert stats["untracked"] == 2
