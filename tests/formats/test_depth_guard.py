"""JSON nested deeper than any HAR or tap document is refused before ijson builds it: ijson
keeps a prefix per open level, so its memory grows with the square of the depth (a 60 KB file
of brackets took about 2 GB and got the process killed)."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshward.formats import EntryError, read_observations
from meshward.formats.common import MAX_JSON_DEPTH, DepthGuard, JSONTooDeep

# strings full of what a naive bracket count trips on: brackets, quotes, backslashes
TRICKY = st.text(alphabet='[]{}"\\\\ a\n', max_size=12)
DOCS = st.recursive(
    st.none() | st.integers() | TRICKY,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TRICKY, kids, max_size=3),
    max_leaves=25,
)


def _depth(doc: object) -> int:
    if isinstance(doc, dict):
        return 1 + max(map(_depth, doc.values()), default=0)
    if isinstance(doc, list):
        return 1 + max(map(_depth, doc), default=0)
    return 0


def _passes(data: bytes, limit: int, chunk: int) -> bool:
    guard = DepthGuard(io.BytesIO(data), max_depth=limit)
    try:
        while guard.read(chunk):
            pass
    except JSONTooDeep:
        return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=DOCS, chunk=st.integers(1, 50), indent=st.sampled_from([None, 1]))
def test_guard_tells_the_exact_depth_across_any_chunking(
    doc: object, chunk: int, indent: int | None
) -> None:
    data = json.dumps(doc, indent=indent).encode()
    depth = _depth(doc)
    assert _passes(data, max(depth, 1), chunk)
    if depth > 1:
        assert not _passes(data, depth - 1, chunk)


@pytest.mark.parametrize(
    "head",
    [
        b'{"log": {"entries": [',
        b'{"http_buffered_trace": {"request": {"headers": ',
        b"",
        b'{"log": {"entries": [{"request": {"postData": {"text": "[[[[[[\\"]]]"}}}, ',
    ],
)
def test_deep_files_are_an_entry_error_in_bounded_memory(tmp_path: Path, head: bytes) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(head + b"[" * 30_000 + b"]" * 30_000 + b"]}}")
    tracemalloc.start()
    try:
        items = list(read_observations([str(path)]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    errors = [i for i in items if isinstance(i, EntryError)]
    assert errors, items
    assert peak < 50 * 1024 * 1024, peak


def test_ordinary_nesting_is_read() -> None:
    doc = json.dumps({"a": [[[{"b": "[[[[" * 100}]]]}).encode()
    assert _passes(doc, 8, 3)
    assert _passes(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH, MAX_JSON_DEPTH, 7)
    assert not _passes(b"[" * (MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH, 7)
