"""The ingest worker's CPU kept apart from the Checks: while a batch is in the worker, serve's
threads run on the other CPUs and the worker on its own one.

On the 2-vCPU machine the Checks' p99 rose 1.4-1.6x while 16 MB batches were in the worker,
though the worker runs SCHED_IDLE and serve's loop spends 0.35 ms per batch; the worker's own
code, run on the same batches in a process that is not serve, cost 1.0-1.24x (an A/A run of the
bench: 0.90-1.01x). A Check's threads woke on the CPU the worker was running on (a CPU that
runs only SCHED_IDLE work counts as idle to the scheduler), its caches full of the batch. Kept
apart, the same batches cost the Checks 1.14-1.40x, against 1.37-1.56x, at the worker's share
of half a CPU; at a quarter (the default since) 1.05-1.15x (docs/benchmarks.md,
bench/ingest_load.py).

Serve keeps every CPU while no batch is in the worker. Linux only (`sched_setaffinity`); with one
CPU, or where affinity cannot be set, nothing is split.
"""

from __future__ import annotations

import contextlib
import os

AUTO = "auto"
OFF = "off"


class CpuSplit:
    """Which CPU the ingest worker gets (`worker_cpu`, None: no split) and, while batches are
    in the worker (`begin` ... `end`, nested), serve's threads kept on the rest."""

    def __init__(self, choice: str = AUTO, allowed: set[int] | None = None) -> None:
        """`choice`: `auto` (the highest CPU serve may use, when it may use two or more), `off`,
        or a CPU number among `allowed` (serve's own CPUs by default)."""
        if allowed is None:
            allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self.allowed = frozenset(allowed)
        self.worker_cpu: int | None = None
        self._busy = 0  # batches in the worker
        if choice == OFF or len(self.allowed) < 2:
            return
        if choice == AUTO:
            self.worker_cpu = max(self.allowed)
            return
        try:
            cpu = int(choice)
        except ValueError:
            raise ValueError(f"{choice!r} is not auto, off or a CPU number") from None
        if cpu not in self.allowed:
            raise ValueError(f"CPU {cpu} is not one serve may run on ({sorted(self.allowed)})")
        self.worker_cpu = cpu

    @property
    def serve_cpus(self) -> frozenset[int]:
        """Where serve's threads run while a batch is in the worker."""
        if self.worker_cpu is None:
            return self.allowed
        return self.allowed - {self.worker_cpu}

    def pin_worker(self) -> None:
        """In the worker process: onto its CPU."""
        if self.worker_cpu is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {self.worker_cpu})

    def begin(self) -> None:
        """A batch went into the worker: serve's threads off its CPU (the first of several)."""
        if self.worker_cpu is None:
            return
        self._busy += 1
        if self._busy == 1:
            _pin_threads(self.serve_cpus)

    def end(self) -> None:
        """A batch is out of the worker: serve's threads back on every CPU (the last one)."""
        if self.worker_cpu is None or self._busy == 0:
            return
        self._busy -= 1
        if self._busy == 0:
            _pin_threads(self.allowed)

    def __getstate__(self) -> dict[str, object]:  # handed to the worker process at its start
        return {"allowed": self.allowed, "worker_cpu": self.worker_cpu, "_busy": 0}


def _pin_threads(cpus: frozenset[int]) -> None:
    """Every thread of this process onto `cpus` (threads started later inherit their
    creator's). A thread that ended meanwhile is skipped."""
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cpus)
