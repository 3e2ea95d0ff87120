"""Compiled Hyperscan databases are cached on disk, and a bad cache only costs a compile."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshward.core.threats import signatures


def hits(db: object, data: bytes) -> list[int]:
    found: list[int] = []
    db.scan(data, match_event_handler=lambda i, *_: found.append(i))  # type: ignore[attr-defined]
    return found


def test_cache_round_trip_and_corruption(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHWARD_CACHE", str(tmp_path))
    patterns = [b"union\\s+select", b"<script"]
    first = signatures._compile(patterns, 0)
    files = list(tmp_path.glob("hs-*.db"))
    assert len(files) == 1
    loaded = signatures._compile(patterns, 0)  # from the cache this time
    assert hits(loaded, b"1 UNION  SELECT x <script>") == hits(first, b"1 UNION  SELECT x <script>")
    assert hits(loaded, b"1 UNION  SELECT x <script>") == [0, 1]
    files[0].write_bytes(b"garbage")
    again = signatures._compile(patterns, 0)
    assert hits(again, b"<SCRIPT") == [1]
    assert files[0].read_bytes() != b"garbage"  # rewritten
    other = signatures._compile([b"union\\s+select"], 0)  # another set: another file
    assert hits(other, b"<script") == [] and len(list(tmp_path.glob("hs-*.db"))) == 2


def test_unwritable_cache_still_compiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHWARD_CACHE", "/proc/meshward-cannot-write-here")
    assert hits(signatures._compile([b"abc"], 0), b"xabc") == [0]
