"""The revocation list file as serve follows it: re-read on change, a missing file is empty, and
never fail open: whatever the file goes through, a certificate the last written *good* list
revokes is refused, and any bad file refuses everyone until it is good again."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.peer import SpiffeId
from meshward.core.revocation import RevocationError, parse
from meshward.runtime.revocations import Revocations

API = SpiffeId("cluster.local", "shop", "api")
BORN = datetime(2026, 12, 1, tzinfo=UTC)
GOOD = b"serial 1f 2026-12-06T10:00:00Z\n"


def _write(path: Path, data: bytes | None, n: int) -> None:
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.write_bytes(data)
    os.utime(path, ns=(n * 10**9, n * 10**9))  # a new signature even within one clock tick


def test_follows_the_file(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    rev = Revocations(path)
    rev.load()
    assert not rev.active and rev.refusal(API, 0x1F, BORN) is None  # missing: empty
    _write(path, GOOD, 1)
    assert rev.refresh() and not rev.refresh()  # changed once, then a stat only
    refused = rev.refusal(API, 0x1F, BORN)
    assert refused is not None and refused.reason == "revoked"
    assert rev.refusal(API, 0x20, BORN) is None
    _write(path, b"serial 1f\n", 2)
    rev.refresh()
    assert rev.broken.startswith(f"{path}: line 1")
    refused = rev.refusal(API, 0x20, BORN)
    assert refused is not None and refused.reason == "revocation-list-unreadable"
    _write(path, None, 3)
    rev.refresh()
    assert not rev.active


def test_a_bad_list_at_start_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "revoked"
    path.write_bytes(GOOD + b"id nobody 2026-12-06T10:00:00Z\n")
    with pytest.raises(RevocationError, match=rf"{path}: line 2: 'nobody' is not a SPIFFE id"):
        Revocations(path).load()
    path.write_bytes(b"")
    path.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(OSError, match="revoked"):
            Revocations(path).load()


contents = st.one_of(
    st.none(),
    st.just(GOOD),
    st.just(b""),
    st.just(b"serial 2a 2026-12-06T10:00:00Z\n" + GOOD),
    st.binary(max_size=60),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(contents, min_size=1, max_size=8))
def test_never_fails_open(
    tmp_path_factory: pytest.TempPathFactory, steps: list[bytes | None]
) -> None:
    path = tmp_path_factory.mktemp("rev") / "revoked"
    rev = Revocations(path)
    rev.load()
    for n, data in enumerate(steps, 1):
        _write(path, data, n)
        rev.refresh()
        refused = rev.refusal(API, 0x1F, BORN)
        try:
            good = parse(data) if data is not None else None
        except RevocationError:
            assert refused is not None and refused.reason == "revocation-list-unreadable"
            continue
        if good is not None and 0x1F in good.serials:
            assert refused is not None and refused.reason == "revoked"
        else:
            assert refused is None
