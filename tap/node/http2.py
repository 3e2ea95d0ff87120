"""HTTP/2 (h2c) and gRPC exchanges rebuilt from both byte streams of one TCP connection.

Frames are cut with hyperframe; header blocks (HEADERS + CONTINUATION, PUSH_PROMISE) go through
one hpack decoder per direction, whose table limit follows the other peer's SETTINGS
HEADER_TABLE_SIZE. A stream becomes one Observation when both its ends are closed (END_STREAM
or RST_STREAM). Any framing or HPACK error, or a hole in either byte stream, makes the rest of
the connection undecodable (the HPACK state is lost): it is counted, open streams are emitted
as far as they got, and the parser stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from meshward.core.observation import Observation
from meshward.core.values import decimal
from meshward.tap.node.counters import NodeTapCounters

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
Emit = Callable[[Observation], None]
_MAX_FRAME = 1 << 20  # larger frames are treated as garbage (default max is 16 KiB)
_MAX_STREAMS = 256  # open streams tracked per connection
# a header block longer than this ends the connection's parsing: it must be decoded to keep the
# HPACK table in step, and decoding costs up to ~100 bytes per byte of block (one tuple per field)
_MAX_HEADER_BLOCK = 256 * 1024
# decoded header bytes kept per block (RFC 9113 size: name + value + 32 per field), hpack's own
# default; past it fields are dropped and the request flagged, the connection goes on
_MAX_HEADER_LIST = 64 * 1024


class _Stream:
    __slots__ = ("body_len", "obs", "req_done", "resp_done", "resp_headers_seen")

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.req_done = False
        self.resp_done = False
        self.resp_headers_seen = False
        self.body_len = 0


class _Side:
    """Framing state of one direction."""

    __slots__ = ("block", "block_frame", "buf", "decoder", "preface")

    def __init__(self, preface: bool) -> None:
        self.buf = b""
        self.preface = preface  # still expecting the client connection preface
        # no list limit in hpack: raising mid-block would lose the table (and the connection);
        # the block size bounds the decoding, _headers bounds what is kept
        self.decoder = hpack.Decoder(max_header_list_size=1 << 62)
        self.block: list[bytes] = []  # header block being continued
        self.block_frame: Frame | None = None


class Http2Parser:
    """Both directions of one HTTP/2 connection; emits one Observation per finished stream."""

    def __init__(self, emit: Emit, metrics: NodeTapCounters, max_body: int = 65536) -> None:
        self.emit = emit
        self.metrics = metrics
        self.max_body = max_body
        self.ts = 0.0
        self.client = _Side(preface=True)
        self.server = _Side(preface=False)
        self.streams: dict[int, _Stream] = {}
        self.broken = False

    def feed(self, from_client: bool, data: bytes, ts: float) -> None:
        if self.broken:
            return
        self.ts = ts
        side = self.client if from_client else self.server
        buf = side.buf + data if side.buf else data
        if side.preface:
            if len(buf) < len(PREFACE):
                if not PREFACE.startswith(buf):
                    self._break()
                else:
                    side.buf = buf
                return
            if not buf.startswith(PREFACE):
                self._break()
                return
            side.preface = False
            buf = buf[len(PREFACE) :]
        view = memoryview(buf)
        off = 0
        n = len(buf)
        try:
            while n - off >= 9:
                frame, length = Frame.parse_frame_header(view[off : off + 9])
                if length > _MAX_FRAME:
                    raise HyperframeError(f"frame of {length} bytes")
                if n - off - 9 < length:
                    break
                frame.parse_body(view[off + 9 : off + 9 + length])
                off += 9 + length
                self._frame(from_client, side, frame)
                if self.broken:
                    return
        except (HyperframeError, hpack.HPACKError, ValueError, UnicodeDecodeError):
            self._break()
            return
        side.buf = buf[off:] if off < n else b""

    def _frame(self, from_client: bool, side: _Side, frame: Frame) -> None:
        if side.block_frame is not None:  # inside a header block: only CONTINUATION allowed
            if not isinstance(frame, ContinuationFrame) or frame.stream_id != (
                side.block_frame.stream_id
            ):
                raise HyperframeError("header block interrupted")
            side.block.append(frame.data)
            if sum(map(len, side.block)) > _MAX_HEADER_BLOCK:  # HPACK state lost: unavoidable
                raise HyperframeError("header block too large")
            if "END_HEADERS" in frame.flags:
                first = side.block_frame
                block = b"".join(side.block)
                side.block_frame, side.block = None, []
                self._headers(from_client, side, first, block)
            return
        if isinstance(frame, HeadersFrame | PushPromiseFrame):
            if "END_HEADERS" in frame.flags:
                self._headers(from_client, side, frame, frame.data)
            else:
                side.block_frame, side.block = frame, [frame.data]
        elif isinstance(frame, DataFrame):
            st = self.streams.get(frame.stream_id)
            if st is None:
                return
            if from_client:
                room = self.max_body - len(st.obs.body)
                st.body_len += len(frame.data)
                if room > 0:
                    st.obs.body += frame.data[:room]
                if st.body_len > len(st.obs.body):
                    st.obs.body_truncated = True
            if "END_STREAM" in frame.flags:
                self._end(frame.stream_id, st, from_client)
        elif isinstance(frame, RstStreamFrame):
            st = self.streams.get(frame.stream_id)
            if st is not None:
                st.obs.extra["h2_rst"] = str(frame.error_code)
                st.req_done = st.resp_done = True
                self._maybe_emit(frame.stream_id)
        elif isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            size = frame.settings.get(SettingsFrame.HEADER_TABLE_SIZE)
            if size is not None:  # limits the other peer's encoder, i.e. our other decoder
                other = self.server if from_client else self.client
                other.decoder.max_allowed_table_size = size

    def _headers(self, from_client: bool, side: _Side, frame: Frame, block: bytes) -> None:
        # always decode: keeps the HPACK table in step. Raw: a field value may hold any octet
        # but NUL, CR and LF, and one that is not UTF-8 must not end the connection's parsing
        headers, cut = _kept(side.decoder.decode(block, raw=True))
        if isinstance(frame, PushPromiseFrame):
            return  # server push: not a request the app received
        sid = frame.stream_id
        end = "END_STREAM" in frame.flags
        st = self.streams.get(sid)
        if from_client:
            if st is None:
                if sid % 2 == 0 or sid == 0:
                    raise HyperframeError("client HEADERS on a server stream id")
                st = self._open(sid, headers)
                if cut:
                    st.obs.headers_truncated = True
            if end:
                self._end(sid, st, True)
            return
        if st is None:
            return
        status = _pseudo(headers, ":status")
        if not st.resp_headers_seen and status.startswith("1"):
            return  # interim (100 Continue)
        regular = [(k, v) for k, v in headers if not k.startswith(":")]
        if cut:
            st.obs.headers_truncated = True
        if not st.resp_headers_seen:
            st.resp_headers_seen = True
            st.obs.status = decimal(status, 3)
        st.obs.response_headers += regular  # trailers (grpc-status) follow the headers
        if end:
            self._end(sid, st, False)

    def _open(self, sid: int, headers: list[tuple[str, str]]) -> _Stream:
        obs = Observation(seen_by="node-tap", time=self.ts, protocol="h2")
        obs.method = _pseudo(headers, ":method")
        obs.authority = _pseudo(headers, ":authority")
        path, _, query = _pseudo(headers, ":path").partition("?")
        obs.path, obs.query = path or "/", query
        obs.headers = [(k, v) for k, v in headers if not k.startswith(":")]
        if not obs.authority:
            obs.authority = obs.header("host")
        obs.request_id = obs.header("x-request-id")
        obs.body_size = decimal(obs.header("content-length"))
        obs.fill_grpc()
        if len(self.streams) >= _MAX_STREAMS:  # emit the oldest as far as it got
            oldest = next(iter(self.streams))
            self._emit(self.streams.pop(oldest))
        st = _Stream(obs)
        self.streams[sid] = st
        return st

    def _end(self, sid: int, st: _Stream, from_client: bool) -> None:
        if from_client:
            st.req_done = True
            if st.obs.body_size is None and st.body_len:
                st.obs.body_size = st.body_len
        else:
            st.resp_done = True
        self._maybe_emit(sid)

    def _maybe_emit(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is not None and st.req_done and st.resp_done:
            del self.streams[sid]
            self._emit(st)

    def _emit(self, st: _Stream) -> None:
        self.metrics.transactions += 1
        if st.obs.status is None:
            self.metrics.unanswered += 1
        self.emit(st.obs)

    def _break(self) -> None:
        if not self.broken:
            self.broken = True
            self.metrics.parse_errors += 1
            self.close()

    def gap(self, from_client: bool) -> None:
        """A hole in either direction: HPACK state is gone, so the connection is done."""
        self.metrics.gaps += 1
        self._break()

    def close(self) -> None:
        for st in self.streams.values():
            self._emit(st)
        self.streams.clear()
        self.client.buf = self.server.buf = b""


def _kept(fields: Iterable[tuple[bytes, bytes]]) -> tuple[list[tuple[str, str]], bool]:
    """The fields as text up to _MAX_HEADER_LIST decoded bytes (an HPACK bomb repeats one big
    table entry thousands of times), and whether some were dropped. Pseudo-headers come first
    (RFC 9113 8.3) and are always kept."""
    out: list[tuple[str, str]] = []
    size = 0
    for k, v in fields:
        size += len(k) + len(v) + 32
        if size > _MAX_HEADER_LIST and not k.startswith(b":"):
            return out, True
        out.append((_text(k), _text(v)))
    return out, False


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _pseudo(headers: list[tuple[str, str]], name: str) -> str:
    for k, v in headers:
        if k == name:
            return v
    return ""
