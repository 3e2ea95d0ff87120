"""The ingest worker's own CPU: serve's threads kept off it while a batch is in the worker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import threading
from pathlib import Path

import pytest

from meshward.app import batchjudge
from meshward.app.batchapply import BatchDoor
from meshward.app.commands import UsageError
from meshward.app.commands.serve import _ingest_cpu
from meshward.app.cpusplit import CpuSplit
from meshward.app.ingest import Ingestor
from meshward.app.pipeline import Pipeline
from meshward.core.engine import Engine, EngineConfig
from meshward.runtime.metrics import Metrics
from meshward.tap.envoy.join import Joiner
from tests.support.ingest import item

CPUS = frozenset(os.sched_getaffinity(0))
two_cpus = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs to split")


def affinities() -> set[frozenset[int]]:
    """The distinct CPU sets of this process's threads (one that just ended is skipped)."""
    out = set()
    for t in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            out.add(frozenset(os.sched_getaffinity(int(t))))
    return out


def every_cpu_back() -> None:
    for t in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(t), CPUS)


def test_the_worker_gets_the_highest_cpu_or_the_one_named_and_never_the_only_one() -> None:
    auto = CpuSplit("auto", {0, 1, 3})
    assert auto.worker_cpu == 3 and auto.serve_cpus == {0, 1}
    assert CpuSplit("1", {0, 1}).worker_cpu == 1
    assert CpuSplit("auto", {2}).worker_cpu is None  # one CPU: nothing to split
    assert CpuSplit("off", {0, 1}).worker_cpu is None
    assert CpuSplit("off", {0, 1}).serve_cpus == {0, 1}
    with pytest.raises(ValueError, match="not one serve may run on"):
        CpuSplit("5", {0, 1})
    with pytest.raises(ValueError, match="not auto, off or a CPU number"):
        CpuSplit("fast", {0, 1})


def test_serve_ingest_cpu_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHWARD_INGEST_CPU", raising=False)
    assert _ingest_cpu(None) == "auto"
    assert _ingest_cpu("off") == "off"
    monkeypatch.setenv("MESHWARD_INGEST_CPU", "fast")
    with pytest.raises(UsageError, match="--ingest-cpu: 'fast' is not auto"):
        _ingest_cpu(None)
    with pytest.raises(UsageError, match="not one serve may run on"):
        _ingest_cpu(str(max(CPUS) + 1))


@two_cpus
def test_serve_threads_leave_the_worker_cpu_while_batches_are_in_and_come_back() -> None:
    split = CpuSplit("auto")
    stop = threading.Event()
    before = threading.Thread(target=stop.wait)
    before.start()
    try:
        split.begin()
        assert affinities() == {split.serve_cpus}  # every thread, the one started before too
        during = threading.Thread(target=stop.wait)  # inherits its creator's CPUs
        during.start()
        split.begin()  # a second batch
        split.end()
        assert affinities() == {split.serve_cpus}  # one batch is still in
        split.end()
        assert affinities() == {CPUS}  # the thread started meanwhile too
        split.end()  # more ends than begins change nothing
        assert affinities() == {CPUS}
    finally:
        stop.set()
        every_cpu_back()


@two_cpus
def test_the_worker_runs_on_its_cpu_and_serve_off_it_during_a_batch(tmp_path: Path) -> None:
    config = EngineConfig(threats=False)
    engine = Engine(config)
    metrics, joiner = Metrics(), Joiner()
    door = BatchDoor(engine, metrics, joiner, Pipeline(engine, metrics, joiner))
    split = CpuSplit("auto")
    ingestor = Ingestor(config, spool=str(tmp_path), cpus=split)
    seen: list[set[int]] = []
    snapshot = door.snapshot

    def watched(outline: batchjudge.Outline) -> batchjudge.Snapshot:
        seen.append(os.sched_getaffinity(0))  # serve's loop thread, mid-batch
        return snapshot(outline)

    door.snapshot = watched  # type: ignore[method-assign]
    raw = b"\n".join(json.dumps(item("shop", i)).encode() for i in range(10))

    async def run() -> tuple[int, set[int]]:
        try:
            _parsed, judged = await ingestor.ingest([raw], door)
            assert judged is not None and ingestor._pool is not None
            (worker,) = ingestor._pool._processes.values()  # type: ignore[attr-defined]
            return judged.taken, os.sched_getaffinity(worker.pid)
        finally:
            ingestor.close()

    try:
        taken, worker_cpus = asyncio.run(run())
    finally:
        every_cpu_back()
    assert taken == 10
    assert worker_cpus == {split.worker_cpu}
    assert seen == [set(split.serve_cpus)]
    assert affinities() == {CPUS}  # serve has every CPU back once the batch is out
