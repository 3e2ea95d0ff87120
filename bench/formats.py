"""Offline readers: HAR and Envoy tap JSON Lines to Observations, against plain JSON decoding.

One run on a generated sample (the same requests in both formats; best of 3 timings each).
Baseline: `json.loads` of the same bytes (line by line, or the whole HAR document), measured in
the same run because the machine is shared and noisy; the readers are reported as a ratio to it.
Also the peak memory of reading each file (tracemalloc is off during the timing runs).

    PYTHONPATH=. .venv/bin/python bench/formats.py [N]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from meshward.formats import read_observations
from tests.support.samples import har_doc, har_entry, tap_trace

API = "http://api.shop.svc.cluster.local"


def _write(d: Path, n: int) -> tuple[Path, Path]:
    har, tap = d / "sample.har", d / "sample.jsonl"
    body = json.dumps({"item": 7, "qty": 2, "note": "gift wrap"})
    hdrs = {"content-type": "application/json", "user-agent": "app/1.0", "x-request-id": "r"}
    head = json.dumps(har_doc([]))
    entry = json.dumps(
        har_entry("POST", f"{API}/users/42/orders?x=1", body=body, headers=hdrs, source="web/a")
    )
    with har.open("w") as f:
        f.write(head[: head.index("[") + 1] + ",".join([entry] * n) + head[head.index("]") :])
    line = json.dumps(tap_trace("POST", "/users/42/orders?x=1", body=body.encode(), headers=hdrs))
    tap.write_text((line + "\n") * n)
    return har, tap


def _each_line(path: Path) -> None:
    with path.open("rb") as f:
        for line in f:
            json.loads(line)


def _rate(fn: object, n: int, runs: int = 3) -> float:
    """Best of `runs`: on a shared machine the fastest run is the least disturbed one."""
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t)
    return n / best


def _peak(path: Path) -> int:
    tracemalloc.start()
    try:
        for _ in read_observations([str(path)]):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    with tempfile.TemporaryDirectory(prefix="meshward-bench-") as tmp:
        har, tap = _write(Path(tmp), n)
        for name, path, baseline in [
            ("HAR", har, lambda p=har: json.loads(p.read_bytes())),
            ("tap JSON Lines", tap, lambda p=tap: _each_line(p)),
        ]:
            base = _rate(baseline, n)
            read = _rate(lambda p=path: sum(1 for _ in read_observations([str(p)])), n)
            mb = path.stat().st_size / 1e6
            print(
                f"{name:15s} {n} requests, {mb:.1f} MB: json.loads {base:,.0f}/s, "
                f"read_observations {read:,.0f}/s ({read / base:.2f}x of json.loads), "
                f"peak memory while reading {_peak(path) / 1e6:.2f} MB"
            )


if __name__ == "__main__":
    main()
