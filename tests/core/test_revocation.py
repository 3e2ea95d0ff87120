"""The revocation list's format: what it refuses, and bad input rejected whole with the line
(never half a list, never a crash)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.revocation import (
    MAX_BYTES,
    RevocationError,
    RevocationList,
    entry,
    parse,
)

T0 = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)
API = "spiffe://cluster.local/ns/shop/sa/api"


def test_serials_and_identities() -> None:
    listed = parse(
        b"# comment\n\n"
        b"serial 00:5F:1c 2026-12-06T10:00:00Z leaked on node-3\n"
        b"id spiffe://cluster.local/ns/shop/sa/api 2026-12-06T10:00:00Z\n"
    )
    assert [e.value for e in listed.entries] == ["5f1c", API]
    assert listed.refuses(0x5F1C, "spiffe://cluster.local/ns/shop/sa/web", T0 + timedelta(days=1))
    # the identity: certificates issued until the revocation, not the next one
    assert listed.refuses(7, API, T0)
    assert listed.refuses(7, API, T0 - timedelta(hours=1))
    assert not listed.refuses(7, API, T0 + timedelta(seconds=1))
    assert not listed.refuses(7, "spiffe://cluster.local/ns/pay/sa/api", T0)
    assert parse(listed.render().encode()) == listed  # what `ca revoke` writes reads back
    assert not RevocationList() and listed


@pytest.mark.parametrize(
    ("data", "line", "says"),
    [
        (b"serial zz 2026-12-06T10:00:00Z\n", 1, "hex"),
        (b"# ok\nserial 12\n", 2, "KIND VALUE TIME"),
        (b"serial 12 yesterday\n", 1, "YYYY-MM-DD"),
        (b"serial 12 2026-13-06T10:00:00Z\n", 1, "2026-13-06"),
        (b"id spiffe://cluster.local/ns/Shop/sa/api 2026-12-06T10:00:00Z\n", 1, "SPIFFE"),
        (b"cert abc 2026-12-06T10:00:00Z\n", 1, "kind"),
        (b"serial " + b"a" * 41 + b" 2026-12-06T10:00:00Z\n", 1, "1-40 hex"),
        (b"serial 12 2026-12-06T10:00:00Z \x07bell\n", 1, "printable"),
        (b"\xff\xfe", 0, "UTF-8"),
        (b"#" * (MAX_BYTES + 1), 0, "more than"),
    ],
)
def test_bad_lists_are_rejected_whole(data: bytes, line: int, says: str) -> None:
    with pytest.raises(RevocationError, match=says) as caught:
        parse(data)
    assert caught.value.line == line


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_fail_clearly(data: bytes) -> None:
    """Garbage never crashes the parser and never yields a list it did not fully understand."""
    try:
        listed = parse(data)
    except RevocationError as exc:
        assert str(exc)
        return
    text = data.decode()
    meant = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(listed.entries) == len(meant)


lines = st.lists(
    st.one_of(
        st.builds(
            lambda n, at: f"serial {n:x} {at:%Y-%m-%dT%H:%M:%SZ}",
            st.integers(0, 2**159),
            st.datetimes(datetime(2000, 1, 1), datetime(2999, 1, 1), timezones=st.just(UTC)),
        ),
        st.builds(
            lambda ns, at, why: (
                f"id spiffe://cluster.local/ns/{ns}/sa/api {at:%Y-%m-%dT%H:%M:%SZ} {why}"
            ),
            st.sampled_from(["shop", "pay", "a-b"]),
            st.datetimes(datetime(2000, 1, 1), datetime(2999, 1, 1), timezones=st.just(UTC)),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
        ),
        st.just("# a comment"),
        st.just(""),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(lines, st.integers(0, 25), st.binary(min_size=1, max_size=8))
def test_one_damaged_line_rejects_the_whole_list(good: list[str], where: int, junk: bytes) -> None:
    """A good list parses; the same list with a line of junk spliced in parses to exactly the
    same list (the junk was a comment or blank) or fails naming a line: never a shorter list."""
    listed = parse("\n".join(good).encode())
    assert parse(listed.render().encode()) == listed
    damaged = [ln.encode() for ln in good]
    damaged.insert(min(where, len(damaged)), junk)
    try:
        again = parse(b"\n".join(damaged))
    except RevocationError:
        return
    assert again.serials >= listed.serials and set(again.ids) >= set(listed.ids)


def test_entries_from_the_command_line() -> None:
    assert entry("serial", "0x00AB", T0).value == "ab"
    with pytest.raises(ValueError, match="SPIFFE"):
        entry("id", "spiffe://cluster.local/ns/shop", T0)
    with pytest.raises(ValueError, match="reason"):
        entry("serial", "1", T0, "x" * 201)
    assert entry("serial", "1", T0, "two\n lines").reason == "two lines"
