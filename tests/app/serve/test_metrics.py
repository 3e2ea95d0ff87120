"""serve's metrics: plain numbers on the event loop, exported in Prometheus' text format."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshward.core.observation import Threat, Verdict
from meshward.runtime.metrics import Metrics, Problems
from tests.support.metrics import sample


def families(m: Metrics) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """Parsed by prometheus_client's own parser: name -> {(sample name, labels): value}."""
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def test_counters_gauges_and_labels() -> None:
    m = Metrics()
    m.checks.labels("ok").inc()
    m.checks.labels("ok").inc()
    m.drops.labels("tap", "x").inc(3)
    m.tap_active.inc()
    m.tap_active.inc()
    m.tap_active.dec()
    text = m.exposition().decode()
    assert sample(text, 'meshward_checks_total{result="ok"}') == 2.0
    assert sample(text, 'meshward_drops_total{reason="x",where="tap"}') == 3.0
    assert sample(text, "meshward_tap_streams_active") == 1.0
    assert "# TYPE meshward_verdicts_total counter" in text  # declared before any sample
    with pytest.raises(ValueError, match="labels"):
        m.drops.labels("tap")


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    m = Metrics()
    for v in (5e-6, 1e-4, 1e-4, 3e-4, 2.0):  # 1e-4 sits exactly on a bound: counted there
        m.check_latency.observe(v)
    m.evaluate_latency.labels("extauthz").observe(2e-5)
    got = families(m)["meshward_check_seconds"]
    bucket = {
        dict(labels)["le"]: v for (name, labels), v in got.items() if name.endswith("_bucket")
    }
    assert bucket["1e-05"] == 1 and bucket["5e-05"] == 1 and bucket["0.0001"] == 3
    assert bucket["0.00025"] == 3 and bucket["0.0005"] == 4 and bucket["1.0"] == 4
    assert bucket["+Inf"] == 5
    assert got[("meshward_check_seconds_count", ())] == 5
    assert got[("meshward_check_seconds_sum", ())] == pytest.approx(2.000505)
    ev = families(m)["meshward_evaluate_seconds"]
    assert ev[("meshward_evaluate_seconds_count", (("source", "extauthz"),))] == 1


def test_verdict_and_problem_counts_fold_unbounded_labels() -> None:
    m = Metrics()
    for i in range(300):
        v = Verdict("alert", 0.9, [f"reason-{i}"], [Threat(f"Name.{i}", "query:x", "e")])
        m.count_verdict("extauthz", v)
    m.count_verdict("extauthz", Verdict("alert", 1.0, [], [Threat("SQL.Injection", "q", "e")]))
    text = m.exposition().decode()
    # threat names label only from the registry: 300 forged names are one bucket, and a real
    # name still gets its own label after them
    assert sample(text, 'meshward_threats_total{name="unregistered"}') == 300.0
    assert sample(text, 'meshward_threats_total{name="SQL.Injection"}') == 1.0
    assert text.count("meshward_threats_total{") == 2
    assert 'reason="other"' in text
    problems = Problems(m, __import__("logging").getLogger("test"))
    problems("tap", "junk")
    assert sample(m.exposition().decode(), 'meshward_errors_total{kind="junk",where="tap"}') == 1
