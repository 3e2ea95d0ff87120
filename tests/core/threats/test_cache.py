"""Compiled Hyperscan databases: the core keys and (de)serialises them, the app's file cache
keeps them, and a bad or unsafe cache only costs a compile."""

from __future__ import annotations

import os
from pathlib import Path

from meshward.app.sigcache import FileCache
from meshward.core.threats import signatures


def hits(db: object, data: bytes) -> list[int]:
    found: list[int] = []
    db.scan(data, match_event_handler=lambda i, *_: found.append(i))  # type: ignore[attr-defined]
    return found


def test_cache_round_trip_and_corruption(tmp_path: Path) -> None:
    cache = FileCache(tmp_path / "c")
    patterns = [b"union\\s+select", b"<script"]
    first = signatures._compile(patterns, 0, cache)
    files = list((tmp_path / "c").glob("hs-*.db"))
    assert len(files) == 1
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "c").stat().st_mode & 0o777) == "0o700"
    loaded = signatures._compile(patterns, 0, cache)  # from the cache this time
    assert hits(loaded, b"1 UNION  SELECT x <script>") == hits(first, b"1 UNION  SELECT x <script>")
    assert hits(loaded, b"1 UNION  SELECT x <script>") == [0, 1]
    files[0].write_bytes(b"garbage")
    again = signatures._compile(patterns, 0, cache)
    assert hits(again, b"<SCRIPT") == [1]
    assert files[0].read_bytes() != b"garbage"  # rewritten
    other = signatures._compile([b"union\\s+select"], 0, cache)  # another set: another file
    assert hits(other, b"<script") == [] and len(list((tmp_path / "c").glob("hs-*.db"))) == 2


def test_no_cache_and_unwritable_cache_still_compile() -> None:
    assert hits(signatures._compile([b"abc"], 0), b"xabc") == [0]
    cache = FileCache(Path("/proc/meshward-cannot-write-here"))
    assert hits(signatures._compile([b"abc"], 0, cache), b"xabc") == [0]


def test_a_cache_others_may_write_is_not_loaded(tmp_path: Path) -> None:
    """A database is native code's input: a file someone else could have written is ignored."""
    cache = FileCache(tmp_path)
    signatures._compile([b"abc"], 0, cache)
    (path,) = tmp_path.glob("hs-*.db")
    key = path.name[3:-3]
    assert cache.load(key) is not None
    os.chmod(path, 0o666)
    assert cache.load(key) is None
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o777)
    assert cache.load(key) is None
    os.chmod(tmp_path, 0o700)


def test_env_chooses_the_directory(tmp_path: Path) -> None:
    assert FileCache.from_env({"MESHWARD_CACHE": str(tmp_path)}).directory == tmp_path
    xdg = FileCache.from_env({"XDG_CACHE_HOME": str(tmp_path)}).directory
    assert xdg == tmp_path / "meshward"
