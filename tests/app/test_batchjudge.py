"""An ingest batch judged in the worker process (meshward.app.batchjudge) and applied on serve's
loop (meshward.app.batchapply) leaves serve exactly as judging it on the loop would."""

from __future__ import annotations

import asyncio
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshward.app import batchjudge, ingest, sigcache
from meshward.app.batchapply import BatchDoor
from meshward.app.ingest import Ingestor
from meshward.app.nodescope import NodeScope
from meshward.app.pipeline import Pipeline
from meshward.app.podindex import PodInfo
from meshward.app.recent import RecentCalls
from meshward.core.allowlist import Limits
from meshward.core.engine import Engine, EngineConfig
from meshward.core.observation import Observation, observation_from_dict
from meshward.linkerd.pods import PodIdentity
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner
from tests.support.ingest import item, mixed_batch

NODE = "node-1"


class Pods:
    """The pod index as the node scope and CallerByIp read it: every pod on NODE but those
    of namespace `elsewhere`; 10.9.0.5 is a pod's, 10.9.0.6 nobody's."""

    def by_ip(self, ip: str) -> PodInfo | None:
        if ip != "10.9.0.5":
            return None
        who = PodIdentity("shop", "web-7f9c", "web", "web", ip, NODE, "Running")
        return PodInfo(who, "uid-1", False)

    def on_node(self, node: str, namespace: str, workload: str) -> bool:
        return node == NODE and namespace != "elsewhere"


def _batch() -> list[dict[str, Any]]:
    """The mixed batch, plus: callers known only by IP, destinations outside the node, new
    destinations past the destination cap, a control-plane connection report."""
    items = mixed_batch()
    for i in range(6):
        items.append(item("learnns", 950 + i, source={"ip": f"10.9.0.{5 + i % 2}"}))
        items.append(item("elsewhere", 960 + i))
        items.append(item(f"new{i % 4}", 970 + i))
        items.append(item("mon", 980 + i, request_id=f"req-{i}", path="/admin"))  # noted
    items.append(
        {
            "seen_by": "node-tap",
            "protocol": "tcp",
            "time": 1_700_000_500.0,
            "source": {"namespace": "shop", "workload": "web0"},
            "destination": {"namespace": "istio-system", "workload": "istiod"},
            "extra": {"control_plane": "connection", "mesh": "istio", "component": "istiod"},
        }
    )
    return items


@dataclass
class Serve:
    engine: Engine
    metrics: Metrics
    joiner: Joiner
    pipeline: Pipeline
    scope: NodeScope


def _serve(items: list[dict[str, Any]], threats: bool, max_destinations: int) -> Serve:
    """serve's state after learning half of `items`, some namespaces in monitor and enforce."""
    limits = Limits(max_destinations=max_destinations)
    config = EngineConfig(max_body=2048, threats=threats, limits=limits)
    engine = Engine(config, sigcache.detector(config))
    metrics, joiner = Metrics(), Joiner()
    recent = RecentCalls(copies_per_second=1e9)  # no token bucket: timing decides nothing
    pipeline = Pipeline(engine, metrics, joiner, Pods(), recent)
    for it in items[::2]:
        if not it["destination"]["namespace"].startswith("new"):
            pipeline.take_ingested(observation_from_dict(it))
    engine.set_mode("mon", "monitor")
    engine.set_mode("enf", "enforce")
    engine.drain()
    return Serve(engine, metrics, joiner, pipeline, NodeScope(Pods()))  # type: ignore[arg-type]


def _on_loop(serve: Serve, items: list[dict[str, Any]]) -> int:
    """Today's path: every item judged on the loop, the envoy-tap copies last (the one order
    the worker's path changes)."""
    pairs = [observation_from_dict(it) for it in items]
    pairs.sort(key=lambda obs: obs.seen_by == "envoy-tap")
    outside = 0
    for obs in pairs:
        if not serve.scope.allows(obs, NODE):
            outside += 1
            continue
        serve.pipeline.take_ingested(obs)
    return outside


def _in_worker(serve: Serve, items: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> int:
    """The worker's two calls (in this process, everything crossing pickled) and the loop's
    part between and after them."""
    monkeypatch.setattr(ingest, "_engine", Engine(serve.engine.config, serve.engine.detector))
    raw = b"\n".join(json.dumps(it).encode() for it in items)
    parsed = pickle.loads(pickle.dumps(ingest.parse(raw, batch=7)))
    door = BatchDoor(serve.engine, serve.metrics, serve.joiner, serve.pipeline, serve.scope, NODE)
    snapshot = pickle.loads(pickle.dumps(door.snapshot(parsed.outline)))
    judged = pickle.loads(pickle.dumps(ingest.judge_kept(7, snapshot)))
    assert door.apply(judged) == []
    for chunk in judged.tapped:
        for obs, prepared in pickle.loads(chunk):
            serve.pipeline.take_tap(obs, prepared)
    door.close()
    batchjudge.forget(7)
    assert judged.taken + judged.outside == len(items) and not judged.failed
    return judged.outside


def _state(serve: Serve) -> dict[str, Any]:
    """Everything a batch changes in serve, latencies as counts (timing differs)."""
    engine = serve.engine
    changes = engine.drain()
    counted = {}
    for name, labels, value in serve.metrics.counts():
        counted[(name, labels)] = sum(value[0]) if isinstance(value, tuple) else value
    recent = {
        ns: sorted(
            (k.obs.source.key, k.obs.destination.key, k.obs.path, k.calls, k.first, k.last)
            for k in serve.pipeline.recent.calls(ns)
        )
        for ns in serve.pipeline.recent.namespaces_kept()
    }
    return {
        "alerts": changes.alerts,
        "profiles": changes.profiles,
        "allowlist": engine.allowlist.export_doc(),
        "edges": sorted(
            (e.bucket, e.source, e.destination, e.allowed, e.alerted, e.denied)
            for e in changes.edges
        ),
        "counters": dict(engine.counters),
        "refused": dict(engine.refused),
        "metrics": counted,
        "recent": recent,
        "notes": {k: list(v) for k, v in serve.joiner._verdicts.items()},
        "components": list(serve.pipeline.control_plane.components.items()),
    }


@pytest.mark.parametrize("threats", [True, False], ids=["detectors", "no-detectors"])
def test_a_batch_judged_in_the_worker_leaves_serve_as_judging_it_on_the_loop(
    threats: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learn, monitor and enforce; threats found and claimed; callers known only by IP;
    destinations outside the node tap's node; new destinations past the cap; a control-plane
    report; envoy-tap copies: the same verdict counts, alerts (in order), learned profiles,
    counters, refusals, edges, recent-call sample, joiner notes and metrics."""
    items = _batch()
    before = _serve(items, threats, 0)
    cap = len(before.engine.allowlist.services) + 2  # two of the four new destinations fit
    loop, worker = _serve(items, threats, cap), _serve(items, threats, cap)
    assert _on_loop(loop, items) == _in_worker(worker, items, monkeypatch) == 6
    expected, got = _state(loop), _state(worker)
    assert expected["refused"].get("destination-cap")  # the cap was hit
    assert expected["alerts"] and expected["profiles"] and expected["components"]
    assert ("meshward_callers_by_ip", ("resolved",)) in expected["metrics"]
    assert {s["verdict"] for s in expected["alerts"]} == {"alert", "deny"}
    assert expected["notes"]
    for key in expected:
        assert got[key] == expected[key], key


def test_what_a_check_learns_while_the_batch_is_out_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Check learning a destination the batch learns too, between the worker's calls: the
    batch's learning installed, the Check's replayed onto it."""
    items = [item("learnns", i) for i in range(30)]
    check = Observation(
        "extauthz",
        observation_from_dict(items[0]).source,
        observation_from_dict(items[0]).destination,
        time=1_700_000_900.0,
        method="DELETE",
        path="/admin/purge",
    )
    loop, worker = _serve([], True, 2000), _serve([], True, 2000)
    _on_loop(loop, items)
    loop.pipeline.judge_check(check)
    monkeypatch.setattr(ingest, "_engine", Engine(worker.engine.config, worker.engine.detector))
    raw = b"\n".join(json.dumps(it).encode() for it in items)
    parsed = ingest.parse(raw, batch=3)
    door = BatchDoor(worker.engine, worker.metrics, worker.joiner, worker.pipeline)
    snapshot = door.snapshot(parsed.outline)
    worker.pipeline.judge_check(check)  # answered while the batch is in the worker
    assert door.apply(ingest.judge_kept(3, snapshot)) == []
    door.close()
    profiles = worker.engine.drain().profiles
    assert "/admin/purge" in json.dumps(profiles)
    assert profiles == loop.engine.drain().profiles


def test_a_profile_replaced_meanwhile_is_learned_again_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A replica's sync (or a review edit) replaces a touched profile while the batch is out:
    the worker's learning of it is dropped and the batch's observations learned on the loop
    into the new profile (a third call), nothing lost."""
    items = [item("learnns", i) for i in range(30)]
    serve = _serve(items, True, 2000)
    dest = "learnns/api"
    synced = serve.engine.allowlist.services[dest].to_doc()
    synced["endpoints"].append({"method": "PUT", "path": "/from/replica"})

    async def main() -> list[str]:
        ingestor = Ingestor(serve.engine.config)
        door = BatchDoor(serve.engine, serve.metrics, serve.joiner, serve.pipeline)
        real_snapshot = door.snapshot

        def snapshot(outline: batchjudge.Outline) -> batchjudge.Snapshot:
            snap = real_snapshot(outline)
            serve.engine.replace_profile(dest, synced)  # the sync lands meanwhile
            return snap

        monkeypatch.setattr(door, "snapshot", snapshot)
        more = [item("learnns", i, path=f"/new/{chr(97 + i)}") for i in range(3)]
        raw = b"\n".join(json.dumps(it).encode() for it in more)
        try:
            _parsed, judged = await ingestor.ingest([raw], door)
        finally:
            ingestor.close()
        assert judged is not None and door.lost == []
        return [e["path"] for e in serve.engine.allowlist.services[dest].to_doc()["endpoints"]]

    paths = asyncio.run(main())
    assert "/from/replica" in paths
    assert {"/new/a", "/new/b", "/new/c"} <= set(paths)


def test_a_worker_killed_between_the_calls_parses_the_batch_again_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool file stays until the batch is judged: a worker killed between the two calls
    (or during the second) is replaced and the batch parsed again; killed again, the caller
    hears BrokenProcessPool (serve answers 503 "send the batch again")."""
    items = [item("learnns", i) for i in range(20)]
    raw = b"\n".join(json.dumps(it).encode() for it in items)

    async def run(serve: Serve, kills: int) -> tuple[int, list[int]]:
        ingestor = Ingestor(serve.engine.config, spool=str(tmp_path))
        door = BatchDoor(serve.engine, serve.metrics, serve.joiner, serve.pipeline)
        real_snapshot = door.snapshot
        killed: list[int] = []

        def snapshot(outline: batchjudge.Outline) -> batchjudge.Snapshot:
            if len(killed) < kills:
                pool = ingestor._pool
                assert pool is not None
                for proc in list(pool._processes.values()):  # type: ignore[attr-defined]
                    proc.kill()
                    proc.join()
                    killed.append(outline.batch)
            return real_snapshot(outline)

        monkeypatch.setattr(door, "snapshot", snapshot)
        try:
            _parsed, judged = await ingestor.ingest([raw], door)
            assert judged is not None
            return judged.taken, killed
        finally:
            ingestor.close()

    serve = _serve([], False, 2000)
    assert asyncio.run(run(serve, 1)) == (20, [0])
    assert list(tmp_path.iterdir()) == []
    assert serve.engine.allowlist.get("learnns/api") is not None
    serve = _serve([], False, 2000)
    with pytest.raises(ingest.BrokenProcessPool):
        asyncio.run(run(serve, 2))
    assert list(tmp_path.iterdir()) == []
    assert serve.engine._journals == {}
    # the failed batch's new destination holds no place under the cap (its snapshots made
    # an empty profile for it, removed again)
    assert serve.engine.allowlist.get("learnns/api") is None


def test_many_node_taps_posting_at_once_are_all_judged() -> None:
    """Eight batches at once: they take turns through the one worker (at most IN_FLIGHT
    between their two calls), none is dropped from what the worker keeps."""
    serve = _serve([], False, 2000)

    async def main() -> list[int]:
        ingestor = Ingestor(serve.engine.config)

        async def post(n: int) -> int:
            raw = b"\n".join(json.dumps(item(f"ns{n}", i)).encode() for i in range(10 + n))
            door = BatchDoor(serve.engine, serve.metrics, serve.joiner, serve.pipeline)
            _parsed, judged = await ingestor.ingest([raw], door)
            assert judged is not None
            return judged.taken

        try:
            taken = list(await asyncio.gather(*(post(n) for n in range(8))))
            assert next(ingestor._batches) == 8  # each parsed once: none forgotten
            return taken
        finally:
            ingestor.close()

    assert asyncio.run(main()) == [10 + n for n in range(8)]
    assert ingest.IN_FLIGHT <= batchjudge.KEPT
    assert len(serve.engine.allowlist.services) == 8 and serve.engine._journals == {}


def test_node_taps_posting_to_one_service_at_once_never_relearn_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches teaching the same service at once take turns from snapshot to install, so none
    finds its snapshotted profile replaced by another batch's and is learned again on the loop;
    what they learned adds up."""
    serve = _serve([], False, 2000)
    relearned: list[str] = []
    monkeypatch.setattr(serve.engine, "relearn", lambda dest, learned: relearned.append(dest))

    async def main() -> None:
        ingestor = Ingestor(serve.engine.config)

        async def post(n: int) -> None:
            items = [dict(item("shop", i), path=f"/p{n}/{i}") for i in range(5)]
            raw = b"\n".join(json.dumps(it).encode() for it in items)
            door = BatchDoor(serve.engine, serve.metrics, serve.joiner, serve.pipeline)
            await ingestor.ingest([raw], door)

        try:
            await asyncio.gather(*(post(n) for n in range(4)))
        finally:
            ingestor.close()

    asyncio.run(main())
    assert relearned == []
    (profile,) = serve.engine.allowlist.services.values()
    assert profile.seen.count == 20


def test_a_failed_batch_gives_back_the_places_its_new_destinations_took() -> None:
    """The snapshot admits a batch's new learn-mode destinations (an empty profile each, under
    the destination cap); the batch failing removes those nothing learned into meanwhile."""
    serve = _serve([], False, 2000)
    allowlist = serve.engine.allowlist
    door = BatchDoor(serve.engine, serve.metrics, serve.joiner, serve.pipeline)
    learners = [(f"{ns}/api", ns, ("", ns, "api")) for ns in ("newns", "otherns")]
    door.snapshot(batchjudge.Outline(7, [d for d, _, _ in learners], learners))
    assert allowlist.get("newns/api") is not None and allowlist.get("otherns/api") is not None
    serve.engine.evaluate(observation_from_dict(item("otherns", 1)), mode="learn")  # a Check
    door.abandon()
    door.close()
    assert allowlist.get("newns/api") is None
    kept = allowlist.get("otherns/api")
    assert kept is not None and kept.endpoints == 1
