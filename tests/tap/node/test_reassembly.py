"""TCP stream reassembly: order, retransmits, overlaps (first copy wins), gaps, wraparound."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshward.tap.node.reassembly import Stream


def collect(max_pending: int = 1 << 20) -> tuple[Stream, list[bytes]]:
    out: list[bytes] = []
    s = Stream(out.append, lambda: out.append(b"<gap>"), max_pending)
    return s, out


def test_in_order_and_out_of_order() -> None:
    s, out = collect()
    s.syn(99)
    s.segment(106, b"world")
    s.segment(100, b"hello ")
    assert b"".join(out) == b"hello world"


def test_retransmit_and_overlap_first_copy_wins() -> None:
    s, out = collect()
    s.syn(0)
    s.segment(5, b"AAAAA")  # bytes 5..9 arrive first
    s.segment(3, b"bbbbbbbb")  # overlaps 5..9: the earlier copy (A) wins there
    s.segment(1, b"xy")
    s.segment(1, b"XY")  # retransmit of delivered bytes: ignored
    assert b"".join(out) == b"xybbAAAAAb"
    assert s.overlap_bytes == 5 + 2


def test_sequence_wraparound() -> None:
    s, out = collect()
    s.syn(0xFFFFFFF0)
    s.segment(0xFFFFFFF1, b"a" * 10)
    s.segment((0xFFFFFFF1 + 10) & 0xFFFFFFFF, b"b" * 10)  # crosses 2**32
    s.segment(5, b"c")
    assert b"".join(out) == b"a" * 10 + b"b" * 10 + b"c"


def test_gap_after_buffer_limit() -> None:
    s, out = collect(max_pending=10)
    s.syn(0)
    s.segment(1, b"abc")
    s.segment(10, b"0123456789X")  # hole at 4..9, then more than max_pending buffered
    assert out == [b"abc", b"<gap>", b"0123456789X"]
    assert s.gaps == 1


def test_flush_skips_holes_and_fin() -> None:
    s, out = collect()
    s.syn(0)
    s.segment(1, b"ab")
    s.segment(10, b"zz", fin=True)
    assert not s.finished
    s.flush()
    assert out == [b"ab", b"<gap>", b"zz"]
    assert s.finished


def test_join_midstream_reports_gap() -> None:
    s, out = collect()
    s.segment(5000, b"data")
    assert out == [b"<gap>", b"data"]


@given(
    st.binary(min_size=1, max_size=600),
    st.lists(st.tuples(st.integers(0, 599), st.integers(1, 80)), min_size=1, max_size=40),
    st.randoms(use_true_random=False),
)
def test_any_order_of_overlapping_segments_gives_the_stream(data, cuts, rnd) -> None:  # type: ignore[no-untyped-def]
    """Segments covering the whole stream, overlapping, duplicated, in any order: the stream
    comes out whole and once (copies agree, so which copy wins does not show)."""
    segs = [(a, data[a : a + n]) for a, n in cuts if a < len(data)]
    segs += [(i, data[i : i + 50]) for i in range(0, len(data), 50)]  # full coverage
    rnd.shuffle(segs)
    s, out = collect()
    s.syn(999)
    for a, chunk in segs:
        s.segment(1000 + a, chunk)
    assert b"".join(out) == data and not s.pending and s.pending_bytes == 0


def test_segments_queued_behind_a_hole_are_delivered_when_it_fills() -> None:
    """After a lost segment the next ones arrive in order behind the hole (the path made O(1):
    it scanned every buffered segment, 290 us each at 512 buffered, which made a tap that
    dropped one packet slow enough to drop more)."""
    s, out = collect(max_pending=1 << 30)
    s.syn(0)
    s.segment(1, b"a")
    for i in range(1, 500):  # byte 1 lost; 499 segments queue behind it
        s.segment(1 + 100 * i, b"x" * 100)
    assert len(s.pending) == 499 and out == [b"a"]
    s.segment(2, b"y" * 99)  # the hole is filled
    assert b"".join(out) == b"a" + b"y" * 99 + b"x" * 49900 and not s.pending
