"""One direction of a TCP connection put back in order: the byte stream a parser reads.

Segments may arrive out of order, retransmitted or overlapping (the first copy of a byte wins,
as the receiving host would have kept it); a byte the capture never saw (kernel drop) leaves a
gap: after `max_pending` buffered bytes or on FIN/close the stream skips the hole and tells its
reader, which resynchronises at the next message boundary. Sequence numbers wrap at 2**32, so
they are turned into 64-bit stream offsets relative to the last delivered byte.
"""

from __future__ import annotations

from collections.abc import Callable

DataFn = Callable[[bytes], None]
MAX_AHEAD = 16 << 20  # no real receive window reaches this far past the next expected byte
MAX_SEGMENTS = 512  # out-of-order segments buffered per direction (insertion is O(n))
GapFn = Callable[[], None]
_NONE = 1 << 62  # pending_first when nothing is buffered


def _diff(a: int, b: int) -> int:
    """a - b in 32-bit sequence space, as a signed number."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class Stream:
    """In-order delivery of one direction's payload to `on_data`, holes reported to `on_gap`."""

    __slots__ = (
        "fin_at",
        "gaps",
        "max_pending",
        "next_abs",
        "next_seq",
        "on_data",
        "on_gap",
        "out_of_window",
        "overlap_bytes",
        "pending",
        "pending_bytes",
        "pending_end",
        "pending_first",
        "started",
    )

    def __init__(self, on_data: DataFn, on_gap: GapFn, max_pending: int = 1 << 20) -> None:
        self.on_data = on_data
        self.on_gap = on_gap
        self.max_pending = max_pending
        self.started = False
        self.next_seq = 0  # raw sequence number of the next byte to deliver
        self.next_abs = 0  # the same as a 64-bit stream offset
        self.pending: dict[int, bytes] = {}  # stream offset -> bytes, non-overlapping
        self.pending_bytes = 0
        # the lowest offset and the highest end buffered, kept so that the common case after a
        # hole (segments arriving in order behind it) costs O(1), not a scan of `pending`
        self.pending_first = _NONE
        self.pending_end = -1
        self.fin_at: int | None = None
        self.gaps = 0
        self.overlap_bytes = 0  # retransmitted or overlapping bytes ignored
        self.out_of_window = 0  # segments too far ahead to belong to this stream: ignored

    def syn(self, seq: int) -> None:
        """A SYN fixes the start: data begins at seq + 1."""
        if not self.started:
            self.started = True
            self.next_seq = (seq + 1) & 0xFFFFFFFF

    def join(self, seq: int) -> None:
        """Start mid-stream (no SYN seen): the reader is told it missed the beginning."""
        self.started = True
        self.next_seq = seq
        self.gaps += 1
        self.on_gap()

    def segment(self, seq: int, data: bytes | memoryview, fin: bool = False) -> None:
        """Add one segment's payload (and FIN); delivers whatever became contiguous."""
        if not self.started:
            self.join(seq)
        start = self.next_abs + _diff(seq, self.next_seq)
        if fin:
            self.fin_at = start + len(data)
        if not data:
            return
        end = start + len(data)
        if end <= self.next_abs:
            self.overlap_bytes += len(data)
            return
        if start == self.next_abs and not self.pending:
            self._deliver(bytes(data))
            return
        if start - self.next_abs > MAX_AHEAD:
            self.out_of_window += 1  # spoofed or from another life of this 4-tuple
            return
        if start < self.next_abs:
            self.overlap_bytes += self.next_abs - start
            data = data[self.next_abs - start :]
            start = self.next_abs
        self._insert(start, bytes(data))
        self._drain()
        if self.pending_bytes > self.max_pending or len(self.pending) > MAX_SEGMENTS:
            self.skip_hole()

    def _insert(self, start: int, data: bytes) -> None:
        """Keep only the bytes no earlier copy covers (first copy wins)."""
        if start >= self.pending_end:  # past everything buffered: nothing can overlap
            self._keep(start, data)
            return
        pieces = [(start, data)]
        for ps, pdata in self.pending.items():
            pe = ps + len(pdata)
            kept = []
            for s, d in pieces:
                e = s + len(d)
                if e <= ps or s >= pe:
                    kept.append((s, d))
                    continue
                self.overlap_bytes += min(e, pe) - max(s, ps)
                if s < ps:
                    kept.append((s, d[: ps - s]))
                if e > pe:
                    kept.append((pe, d[pe - s :]))
            pieces = kept
            if not pieces:
                return
        for s, d in pieces:
            self._keep(s, d)

    def _keep(self, start: int, data: bytes) -> None:
        self.pending[start] = data
        self.pending_bytes += len(data)
        self.pending_first = min(self.pending_first, start)
        self.pending_end = max(self.pending_end, start + len(data))

    def _drain(self) -> None:
        pending = self.pending
        while pending:
            first = self.pending_first
            if first > self.next_abs:
                return
            data = pending.pop(first)
            self.pending_bytes -= len(data)
            if pending:
                self.pending_first = min(pending)
            else:
                self.pending_first, self.pending_end = _NONE, -1
            skip = self.next_abs - first
            if skip < len(data):
                self._deliver(data[skip:])

    def _deliver(self, data: bytes) -> None:
        n = len(data)
        self.next_abs += n
        self.next_seq = (self.next_seq + n) & 0xFFFFFFFF
        self.on_data(data)

    def skip_hole(self) -> bool:
        """Give up on the missing bytes before the first buffered segment; True if any."""
        if not self.pending:
            return False
        first = self.pending_first
        hole = first - self.next_abs
        self.next_abs = first
        self.next_seq = (self.next_seq + hole) & 0xFFFFFFFF
        self.gaps += 1
        self.on_gap()
        self._drain()
        return True

    def flush(self) -> None:
        """End of the connection: deliver everything buffered, skipping holes."""
        while self.skip_hole():
            pass

    @property
    def finished(self) -> bool:
        return self.fin_at is not None and self.next_abs >= self.fin_at
