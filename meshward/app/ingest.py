"""Ingest off the Check loop: a batch is parsed, decoded, inspected and judged in a worker
process; serve's event loop only decides what needs its own state and adds the results.

One 13-16 MB `POST /api/v1/observations` held the event loop that also answers ext_authz for
hundreds of milliseconds (JSON parsing, building observations, the threat detectors, then
judging 10,000 observations: 0.2-0.4 CPU-s), past the sidecar's 200 ms timeout; cut into 0.1 ms
slices it still raised Check p99 1.5-2.4x (docs/benchmarks.md). On two cores and one GIL a thread
does not help: it holds the same lock the loop needs. So the work runs in another process
(`Ingestor`, one worker, started on the first ingest, below serve's priority), in two calls per
batch (`Ingestor.ingest`; the batch stays in the worker between them, keyed by a batch id):

1. `parse_file`: parsing (JSON array or JSON Lines), building Observations, counting the
   verdict fields a caller sent (meshward.core.claims), `Engine.prepare` (the body's plaintext,
   features and shape, the detectors' findings) and the batch's outline (meshward.app.batchjudge).
2. On the loop, `BatchDoor.snapshot` (meshward.app.batchapply): node scope, the destination cap,
   the callers' pods, the modes, the touched profiles.
3. `judge_kept`: the batch judged through serve's own pipeline steps on an engine of serve's
   config and detector loaded with that snapshot; aggregates come back, and `BatchDoor.apply`
   adds them on the loop (milliseconds, not 0.2 s: bench/ingest_loop.py).

While Checks are being answered (one in the last `ANSWERING` seconds), the worker uses at most
`share` of one CPU (`serve --ingest-share`, default a quarter): it works `WORK` (1 ms) and rests,
between items, a JSON array read an item at a time for that. On the 2-vCPU machine any CPU
another process spends during the Checks, whatever its priority (the worker runs `SCHED_IDLE`),
shows in their p99; serve's loop now spends 0.35 ms per batch. With two CPUs or more the worker
runs on one of its own and serve's threads keep off it while a batch is in (`cpus`,
meshward.app.cpusplit). Measured in docs/benchmarks.md.

The body reaches the worker through a private temporary file (mode 0600), written a received
chunk at a time with yields in between (handing 16 MB to the executor pickled it in one piece
with the GIL held) and kept until the batch is judged: a worker that died between the calls
(or during either) is replaced and the batch parsed again, once; then the caller hears
BrokenProcessPool (serve answers 503, "send the batch again").

What stays on the loop is judged there in `SLICE`s with `PAUSE`s between them (Checks are
answered in between): a batch's envoy-tap items (the both-ends join and judged-by-Check are loop
state), after the rest of the batch; and every item when serve's engine has a detector the
worker cannot rebuild (`config` None: the worker only parses, `parse`, handing back chunks of
(observation, prepared) pairs pickled with constructor reducers).
"""

from __future__ import annotations

import asyncio
import contextlib
import copyreg
import dataclasses
import io
import itertools
import json
import multiprocessing
import os
import pickle
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from meshward.app import batchjudge
from meshward.app.batchapply import BatchDoor
from meshward.app.batchjudge import Judged, Outline, Snapshot
from meshward.app.cpusplit import OFF, CpuSplit
from meshward.core.claims import verdict_fields
from meshward.core.engine import Engine, EngineConfig, Prepared
from meshward.core.observation import Identity, Observation, Threat, observation_from_dict
from meshward.core.scoring import Features
from meshward.core.threats.inspection import Inspection

MAX_ITEMS = 10_000  # observations per ingest request
CHUNK = 64  # observations per pickled chunk the worker hands back
# While Checks are being answered (one in the last ANSWERING seconds), the loop judges `SLICE`
# seconds at a time and then rests `PAUSE` (blocks, judging nothing). A Check takes several loop
# turns and each may wait behind a slice, so its p99 grows with the slice: on the quiet 2-vCPU
# machine 0.5 ms slices raised Check p99 2.34x, 0.2 ms 1.78x, 0.1 ms 1.50x, while a batch's
# judging then takes about 4 s instead of 1.8 s (bench/ingest_load.py; docs/benchmarks.md).
# uvloop's timers have 1 ms resolution: a shorter rest would not block.
SLICE = 0.0001
PAUSE = 0.001
# With no Check for ANSWERING seconds (a cluster without Istio sidecars, a quiet night), nobody
# waits: the loop judges FREE_SLICE at a time and only yields, so ingest keeps its throughput.
# The first Check after such a quiet spell waits at most one FREE_SLICE.
ANSWERING = 1.0
FREE_SLICE = 0.005
WORKER_NICE = 10  # the worker's niceness, added to serve's
# While Checks are being answered the worker works WORK seconds, then rests so as to use at most
# `share` of a CPU (serve --ingest-share, DEFAULT_SHARE): on the 2-vCPU machine any CPU another
# process spends, however low its priority, shows in the Checks' tail (docs/benchmarks.md).
# A quarter: Check p99 1.05-1.15x under back-to-back 16 MB batches, each judged in 3.7 s while
# Checks flow; half: 1.00-1.27x from run to run, 2.4 s a batch
WORK = 0.001
DEFAULT_SHARE = 0.25
IN_FLIGHT = 2  # batches in the worker at once (at most batchjudge.KEPT)


def loads(raw: bytes | str) -> Any:
    """json.loads with every way hostile input makes it fail as ValueError: besides invalid
    JSON and UTF-8, too deep nesting (RecursionError) and integers of over 4300 digits (a plain
    ValueError, not a JSONDecodeError)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def parse_batch(raw: bytes, pace: Callable[[], None] = lambda: None) -> tuple[list[Any], int]:
    """JSON array or JSON Lines -> (items, lines that were not JSON); `pace()` between items
    (one `json.loads` of 16 MB held the worker's CPU for a quarter of a second)."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return [], 0
    if text.startswith("["):
        items = []
        try:
            for item in _array_items(text):
                items.append(item)
                pace()
        except ValueError:
            return [], 1
        return items, 0
    items, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            items.append(loads(line))
        except ValueError:
            bad += 1
        pace()
    return items, bad


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace


def _skip(text: str, i: int) -> int:
    """The index of the first non-whitespace character at or after `i`."""
    m = _SPACE.match(text, i)
    return m.end() if m else i


def _array_items(text: str) -> Iterator[Any]:
    """The items of the JSON array `text` (which starts with `[`), one at a time; ValueError
    where `json.loads` would raise one (too deep included)."""
    end = len(text)
    i = _skip(text, 1)
    if i < end and text[i] == "]":
        if _skip(text, i + 1) != end:
            raise ValueError("extra data after the array")
        return
    while True:
        try:
            item, i = _DECODER.raw_decode(text, i)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None
        yield item
        i = _skip(text, i)
        if i < end and text[i] == ",":
            i = _skip(text, i + 1)
        elif i < end and text[i] == "]" and _skip(text, i + 1) == end:
            return
        else:
            raise ValueError(f"expected ',' or ']' at character {i}")


def _by_fields(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """A pickle reducer for dataclass `cls`: its constructor and its fields' values, in order.
    The default for a slotted dataclass (a state list set attribute by attribute) costs the
    loop twice as much to unpickle."""
    names = [f.name for f in dataclasses.fields(cls)]
    assert all(f.init for f in dataclasses.fields(cls)) and not hasattr(cls, "__post_init__")
    return lambda obj: (cls, tuple([getattr(obj, n) for n in names]))


# how the worker pickles what it hands the loop (its own table: nothing else pickles this way)
_REDUCERS = copyreg.dispatch_table.copy()
for _cls in (Observation, Identity, Threat, Prepared, Features, Inspection):
    _REDUCERS[_cls] = _by_fields(_cls)


def _dumps(pairs: list[tuple[Observation, Prepared | None]]) -> bytes:
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _REDUCERS
    pickler.dump(pairs)
    return buf.getvalue()


@dataclass
class Parsed:
    """One batch, parsed (and inspected) by the worker."""

    chunks: list[bytes] = field(default_factory=list)  # pickled [(Observation, Prepared|None)]
    not_json: int = 0  # lines that were not JSON
    too_many: int = 0  # items past MAX_ITEMS
    bad: list[tuple[int, str]] = field(default_factory=list)  # (index, error), the first 20
    bad_count: int = 0
    claimed: int = 0  # verdict fields the caller sent (ignored)
    outline: Outline | None = None  # kept in the worker, to be judged there (chunks empty)


_engine: Engine | None = None  # the worker's own engine: `prepare` only (never learns)
_last_check: Any = None  # shared with serve: time.monotonic() of its latest Check
_rest = 0.0  # seconds the worker rests after each WORK while Checks flow
_worked = 0.0  # perf_counter() when the worker's current slice of work began


def rest_for(share: float) -> float:
    """The rest after each `WORK` that keeps the worker at `share` of one CPU."""
    return WORK * (1 - share) / share


def pace() -> None:
    """Called by the worker between items: while serve answers Checks (one came in the last
    `ANSWERING` seconds), rest after each `WORK` of work."""
    global _worked
    now = time.perf_counter()
    if now - _worked < WORK:
        return
    if _rest and _last_check is not None and time.monotonic() - _last_check.value < ANSWERING:
        time.sleep(_rest)
        now = time.perf_counter()
    _worked = now


def _start_worker(
    config: EngineConfig | None,
    last_check: Any = None,
    share: float = DEFAULT_SHARE,
    cpus: CpuSplit | None = None,
) -> None:
    global _engine, _last_check, _rest
    _last_check, _rest = last_check, rest_for(share)
    if cpus is not None:
        cpus.pin_worker()
    # below the loop's priority: on a busy machine the Checks' process gets the CPU first.
    # SCHED_IDLE (Linux) runs the worker only on CPU time nothing else wants, so a Check's wakeup
    # preempts it at once; niceness is the fallback where the policy is missing
    os.nice(WORKER_NICE)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    if config is not None:
        from meshward.app import sigcache

        _engine = Engine(config, sigcache.detector(config))


def _ready() -> bool:
    return True


def parse(raw: bytes, batch: int | None = None) -> Parsed:
    """The worker's first part of one batch (also callable in-process): with `batch` and an
    engine, kept here to be judged (`judge_kept`), else handed back in chunks."""
    keep = batch is not None and _engine is not None
    failed_before = _engine.counters["inspection_failed"] if _engine is not None else 0
    items, not_json = parse_batch(raw, pace)
    out = Parsed(not_json=not_json, too_many=max(0, len(items) - MAX_ITEMS))
    pairs: list[tuple[Observation, Prepared | None]] = []
    for i, item in enumerate(items[:MAX_ITEMS]):
        try:
            obs = observation_from_dict(item)
        except (ValueError, TypeError) as exc:
            out.bad_count += 1
            if len(out.bad) < 20:
                out.bad.append((i, str(exc)[:200]))
            continue
        out.claimed += verdict_fields(item)  # a dict: observation_from_dict accepted it
        pairs.append((obs, _engine.prepare(obs) if _engine is not None else None))
        pace()
        if len(pairs) == CHUNK and not keep:
            out.chunks.append(_dumps(pairs))
            pairs = []
    if keep:
        assert batch is not None and _engine is not None
        failed = _engine.counters["inspection_failed"] - failed_before
        out.outline = batchjudge.outline(batch, pairs, failed)
    elif pairs:
        out.chunks.append(_dumps(pairs))
    return out


def parse_file(path: str, batch: int | None = None) -> Parsed:
    """`parse` of the body written to `path` (the worker's entry point)."""
    with open(path, "rb") as f:
        return parse(f.read(), batch)


def judge_kept(batch: int, snapshot: Snapshot) -> Judged:
    """The worker's second part: the kept batch judged (meshward.app.batchjudge); its
    envoy-tap items handed back in chunks for the loop."""
    assert _engine is not None
    judged, tapped = batchjudge.judge(batch, snapshot, _engine.config, _engine.detector, pace)
    judged.tapped = [_dumps(tapped[i : i + CHUNK]) for i in range(0, len(tapped), CHUNK)]
    return judged


class Ingestor:
    """The worker process (started on first use, started again if it dies) and the sliced
    judging on the loop. `config`: the engine settings the worker's detectors follow; None
    when serve's engine has a detector the worker cannot rebuild (then only parsing moves)."""

    def __init__(
        self,
        config: EngineConfig | None,
        spool: str | None = None,
        last_check: Any = None,
        share: float = DEFAULT_SHARE,
        cpus: CpuSplit | None = None,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share {share} is not a fraction of one CPU (0 < share <= 1)")
        self.config = config
        self.spool = spool  # where bodies wait for the worker (None: the system's temp dir)
        # the Check service's `last_check` in shared memory (a "d" RawValue): while Checks flow
        # the worker uses at most `share` of one CPU
        self.last_check = last_check
        self.share = share
        # the worker on a CPU of its own, serve's threads off it while a batch is in the worker
        self.cpus = cpus if cpus is not None else CpuSplit(OFF)
        self._pool: ProcessPoolExecutor | None = None
        self._batches = itertools.count()
        # batches between their first and last call: one parsed while another is judged; more
        # wait here (the one worker would take them in turn anyway), so the worker never holds
        # more than it keeps (batchjudge.KEPT) however many node taps post at once
        self._in_flight = asyncio.Semaphore(IN_FLIGHT)
        self._judging = asyncio.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, never fork: serve runs gRPC's threads, which a forked child must not inherit
            self._pool = ProcessPoolExecutor(
                1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(self.config, self.last_check, self.share, self.cpus),
            )
        return self._pool

    async def _spool(self, parts: list[bytes]) -> str:
        """The body (its received chunks) in a private file, for the worker to read."""
        fd, path = tempfile.mkstemp(prefix="meshward-ingest-", dir=self.spool)  # mode 0600
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                for part in parts:
                    view = memoryview(part)
                    while view:  # the copy happens in the kernel, the GIL released
                        view = view[f.write(view) or 0 :]
                    await asyncio.sleep(0)
        except BaseException:
            os.unlink(path)
            raise
        return path

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor(), fn, *args)

    async def ingest(self, parts: list[bytes], door: BatchDoor) -> tuple[Parsed, Judged | None]:
        """The body parsed, inspected and judged in the worker, `door` deciding on the loop
        between the two calls and applying the result (meshward.app.batchapply). The spool
        file stays until the batch is judged: a worker that died (or lost the batch) meanwhile
        is replaced and the batch parsed again, once. Judged None: the worker cannot judge
        (serve's detector is its own), the loop judges the chunks (`judge`)."""
        async with self._in_flight:  # the worker keeps what it parsed until it is judged
            self.cpus.begin()
            try:
                return await self._ingest(parts, door)
            except BaseException:
                door.abandon()  # no empty profile of a failed batch keeps a cap place
                raise
            finally:
                self.cpus.end()
                door.close()  # however it ends: no journal left open

    async def _ingest(self, parts: list[bytes], door: BatchDoor) -> tuple[Parsed, Judged | None]:
        path = await self._spool(parts)
        try:
            for attempt in (1, 2):
                batch = next(self._batches)
                try:
                    parsed: Parsed = await self._call(parse_file, path, batch)
                    if parsed.outline is None:
                        return parsed, None
                    # one batch at a time from its snapshot until its results are in: a batch
                    # snapshotted while another was out would find its profiles replaced by
                    # that one's and be learned again on the loop. The next batch's parsing
                    # still overlaps (the one worker takes the calls in turn anyway)
                    async with self._judging:
                        snapshot = door.snapshot(parsed.outline)
                        judged: Judged = await self._call(judge_kept, batch, snapshot)
                        await self._apply(door, batch, judged)
                    return parsed, judged
                except (BrokenProcessPool, batchjudge.Forgotten) as exc:
                    if isinstance(exc, BrokenProcessPool):
                        self._drop_pool()
                    if attempt == 2:
                        raise BrokenProcessPool("the ingest worker lost the batch") from None
        finally:
            os.unlink(path)
        raise AssertionError("unreachable")

    async def _apply(self, door: BatchDoor, batch: int, judged: Judged) -> None:
        """The batch's results added on the loop (and its learning redone here where a touched
        profile was replaced while it was out); the worker then forgets it."""
        try:
            redo = door.apply(judged)
            if redo:  # rare: a replica's sync or a review edit replaced a touched profile
                try:
                    learned = await self._call(batchjudge.learned_of, batch, redo)
                except BrokenProcessPool:
                    self._drop_pool()
                    learned = {}
                door.relearn(redo, learned)
        finally:
            if self._pool is not None:
                with contextlib.suppress(RuntimeError, BrokenProcessPool):
                    self._pool.submit(batchjudge.forget, batch)

    async def judge(
        self,
        parsed: Parsed,
        take: Callable[[Observation, Prepared | None], bool],
        failed: Callable[[int, Exception], None],
    ) -> int:
        """Feed every observation to `take` on the loop, resting `PAUSE` after each `SLICE` of
        work while Checks are being answered (one came in the last `ANSWERING` seconds: the
        shared `last_check`; without it, always), else yielding after each `FREE_SLICE`;
        returns how many it took
        (True; False: refused, counted by `take`); `failed(index, exc)` hears of those it
        raised on."""
        taken = index = 0
        start = time.perf_counter()
        answering = time.monotonic() - self._last_check() < ANSWERING
        for chunk in parsed.chunks:
            for obs, prepared in pickle.loads(chunk):
                try:
                    if take(obs, prepared):
                        taken += 1
                except Exception as exc:  # one bad item never stops the batch or the server
                    failed(index, exc)
                index += 1
                if time.perf_counter() - start >= (SLICE if answering else FREE_SLICE):
                    answering = time.monotonic() - self._last_check() < ANSWERING
                    await asyncio.sleep(PAUSE if answering else 0)
                    start = time.perf_counter()
        return taken

    def _last_check(self) -> float:
        """time.monotonic() of serve's latest Check; without the shared value (in-process
        tests and benches) as if one had just come."""
        return float(self.last_check.value) if self.last_check is not None else time.monotonic()

    def _drop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        self._drop_pool()
