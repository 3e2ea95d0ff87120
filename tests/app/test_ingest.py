"""The ingest worker's hand-over: the body goes through a private spool file, gone afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from meshward.app import ingest
from meshward.app.ingest import Ingestor


def test_the_body_is_spooled_privately_parsed_in_the_worker_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    real_mkstemp = ingest.tempfile.mkstemp

    def mkstemp(**kw: object) -> tuple[int, str]:
        fd, path = real_mkstemp(**kw)  # type: ignore[arg-type]
        seen.append(stat.S_IMODE(os.stat(path).st_mode))
        return fd, path

    item = {
        "source": {"namespace": "a", "workload": "b"},
        "destination": {"namespace": "shop", "workload": "api"},
        "request": {"method": "GET", "path": "/items"},
    }
    line = json.dumps(item).encode() + b"\n"
    body = line * 3 + b"not json\n"
    ingestor = Ingestor(None, spool=str(tmp_path))

    async def main() -> ingest.Parsed:
        try:
            # chunks cut mid-line: the worker sees the body whole
            return await ingestor.parse([body[:10], body[10:100], body[100:]])
        finally:
            ingestor.close()

    monkeypatch.setattr(ingest.tempfile, "mkstemp", mkstemp)
    parsed = asyncio.run(main())
    assert parsed.not_json == 1 and parsed.bad_count == 0
    assert sum(len(ingest.pickle.loads(c)) for c in parsed.chunks) == 3
    assert seen == [0o600]
    assert list(tmp_path.iterdir()) == []  # removed once parsed


def test_judging_rests_the_loop_between_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """After each SLICE of judging the loop blocks for PAUSE (at least uvloop's 1 ms timer
    resolution, so it really sleeps rather than only yielding), so a batch's judging never holds
    the Checks' loop for long nor takes its CPU in one run; every item is still judged once."""
    rests: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        rests.append(delay)
        await real_sleep(0)

    def busy(_obs: object, _inspected: object) -> bool:
        end = ingest.time.perf_counter() + ingest.SLICE / 4
        while ingest.time.perf_counter() < end:
            pass
        return True

    items = [(i, None) for i in range(40)]
    parsed = ingest.Parsed(
        chunks=[ingest.pickle.dumps(items[:25]), ingest.pickle.dumps(items[25:])]
    )
    monkeypatch.setattr(ingest.asyncio, "sleep", sleep)
    taken = asyncio.run(Ingestor(None).judge(parsed, busy, lambda i, e: None))  # type: ignore[arg-type]
    assert taken == 40
    assert 7 <= len(rests) <= 40  # one per slice: 4 items of a quarter slice or fewer
    assert set(rests) == {ingest.PAUSE} and ingest.PAUSE >= 0.001
