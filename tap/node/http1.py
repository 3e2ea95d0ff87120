"""HTTP/1.x exchanges rebuilt from both byte streams of one TCP connection.

Requests go through httptools (llhttp, C): keep-alive, pipelining, chunked bodies. Responses go
through h11 in the client role, because a response's framing depends on the request it answers
(HEAD and CONNECT responses have no body, 1xx are interim): before each response we replay the
request's method to h11, so it frames that response exactly as the real client did.
Requests and responses pair in order (pipelining). After a gap or a parse error the direction
resynchronises at the next request line or status line.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

import h11
import httptools

from meshward.observation import Observation
from tap.node.metrics import Metrics

Emit = Callable[[Observation], None]

_REQUEST_LINE = re.compile(
    rb"(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE) [!-~]+ HTTP/1\.[01]\r\n"
)
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5]\d\d[ \r]")
_MAX_PENDING = 64  # requests waiting for their response
_MAX_BUFFER = 1 << 20  # response bytes h11 may hold, resync scan window


class _Exchange:
    __slots__ = ("obs", "req_done", "resp_done", "upgrade")

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.req_done = False
        self.resp_done = False
        self.upgrade = False


class Http1Parser:
    """Both directions of one HTTP/1.x connection; emits one Observation per exchange."""

    def __init__(self, emit: Emit, metrics: Metrics, max_body: int = 65536) -> None:
        self.emit = emit
        self.metrics = metrics
        self.max_body = max_body
        self.ts = 0.0
        self.exchanges: deque[_Exchange] = deque()
        self._awaiting = 0  # index in exchanges of the request the next response answers
        self._req: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._req_resync = b""  # scan buffer while looking for a request line
        self._cur: _Exchange | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._body_len = 0
        self._resp: h11.Connection | None = None
        self._resp_cycle = False  # h11 has been told which request it is answering
        self._resp_resync: bytes | None = None  # not None: scanning for a status line
        self._resp_body = 0
        self.opaque = False  # switched protocols: nothing more to parse

    # --- client -> server --------------------------------------------------------------
    def feed(self, from_client: bool, data: bytes, ts: float) -> None:
        """Bytes of one direction, in order."""
        if self.opaque:
            return
        self.ts = ts
        if from_client:
            self._feed_requests(data)
        else:
            self._feed_responses(data)
        self._pump()

    def _feed_requests(self, data: bytes) -> None:
        if self._req is None:
            buf = self._req_resync + data
            m = _REQUEST_LINE.search(buf)
            if m is None:
                self._req_resync = buf[-256:]
                return
            self._req_resync = b""
            self._req = httptools.HttpRequestParser(self)
            data = buf[m.start() :]
        try:
            self._req.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._cur is not None:
                self._cur.upgrade = True
                self._cur.req_done = True
            self._req = None
            self.metrics.upgraded += 1
            self._req_resync = b""
        except httptools.HttpParserError:
            self.metrics.parse_errors += 1
            self._abandon_request()

    def _abandon_request(self) -> None:
        """Drop the request being parsed and look for the next request line."""
        self._req = None
        self._req_resync = b""
        if self._cur is not None and not self._cur.req_done:
            self._cur.req_done = True
            self._cur.obs.body_truncated = True
        self._cur = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        ex = _Exchange(Observation(seen_by="node-tap", time=self.ts, protocol="http/1.1"))
        self._cur = ex
        self._url = b""
        self._body = []
        self._body_len = 0
        self.exchanges.append(ex)
        if len(self.exchanges) > _MAX_PENDING:
            self._give_up_oldest()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._cur is not None:
            self._cur.obs.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        ex = self._cur
        if ex is None or self._req is None:
            return
        obs = ex.obs
        obs.method = self._req.get_method().decode("latin-1")
        url = self._url.decode("latin-1")
        if url.startswith(("http://", "https://")):  # absolute form: keep path and query only
            url = "/" + url.split("://", 1)[1].partition("/")[2]
        path, _, query = url.partition("?")
        obs.path, obs.query = path, query.partition("#")[0]
        obs.authority = obs.header("host")
        obs.request_id = obs.header("x-request-id")
        length = obs.header("content-length")
        if length.isdigit():
            obs.body_size = int(length)
        obs.fill_grpc()

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        room = self.max_body - sum(len(b) for b in self._body)
        if room > 0:
            self._body.append(body[:room])

    def on_message_complete(self) -> None:
        ex = self._cur
        if ex is None:
            return
        ex.obs.body = b"".join(self._body)
        if self._body_len > len(ex.obs.body):
            ex.obs.body_truncated = True
        if ex.obs.body_size is None and self._body_len:
            ex.obs.body_size = self._body_len
        ex.req_done = True
        self._cur = None

    # --- server -> client --------------------------------------------------------------
    def _feed_responses(self, data: bytes) -> None:
        if self._resp_resync is not None:
            buf = self._resp_resync + data
            m = _STATUS_LINE.search(buf)
            if m is None:
                self._resp_resync = buf[-64:]
                return
            self._resp_resync = None
            self._resp = None
            data = buf[m.start() :]
        if self._resp is None:
            self._resp = h11.Connection(h11.CLIENT, max_incomplete_event_size=_MAX_BUFFER)
            self._resp_cycle = False
        try:
            self._resp.receive_data(data)
        except h11.RemoteProtocolError:
            self._response_error()
            return
        if len(self._resp.trailing_data[0]) > _MAX_BUFFER:
            self._response_error()  # responses with no request we know of: resync

    def _response_error(self) -> None:
        self.metrics.parse_errors += 1
        self._resp = None
        self._resp_resync = b""
        if self._resp_cycle and self._awaiting < len(self.exchanges):
            self.exchanges[self._awaiting].resp_done = True  # its response is lost
            self._awaiting += 1
        self._resp_cycle = False

    def _pump(self) -> None:
        """Frame as many responses as the known requests allow; emit finished exchanges."""
        conn = self._resp
        while conn is not None and self._resp_resync is None and not self.opaque:
            if not self._resp_cycle:
                if self._awaiting >= len(self.exchanges):
                    break
                ex = self.exchanges[self._awaiting]
                if not ex.obs.method:
                    break  # request headers not complete yet
                headers = [("host", "x")]
                if ex.upgrade:
                    headers += [("connection", "upgrade"), ("upgrade", ex.obs.header("upgrade"))]
                try:
                    conn.send(h11.Request(method=ex.obs.method, target="/", headers=headers))
                    conn.send(h11.EndOfMessage())
                except h11.LocalProtocolError:
                    self._response_error()
                    break
                self._resp_cycle = True
                self._resp_body = 0
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self._response_error()
                break
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if conn.our_state is h11.SWITCHED_PROTOCOL:
                    self._switched()
                break
            ex = self.exchanges[self._awaiting]
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    ex.obs.status = 101
                    ex.obs.response_headers = _h11_headers(event.headers)
                    self._switched()
                    break
            elif isinstance(event, h11.Response):
                ex.obs.status = event.status_code
                ex.obs.response_headers = _h11_headers(event.headers)
                if event.status_code // 100 == 2 and ex.obs.method == "CONNECT":
                    self._switched()
                    break
            elif isinstance(event, h11.EndOfMessage):
                ex.obs.response_headers += _h11_headers(event.headers)  # chunked trailers
                ex.resp_done = True
                self._awaiting += 1
                self._resp_cycle = False
                if conn.their_state is h11.DONE and conn.our_state is h11.DONE:
                    conn.start_next_cycle()
                else:  # connection: close; whatever follows is not HTTP we can frame
                    conn = self._resp = None
            elif isinstance(event, h11.ConnectionClosed):
                break
        self._emit_ready()

    def _switched(self) -> None:
        ex = self.exchanges[self._awaiting]
        ex.resp_done = ex.req_done = True
        self._awaiting += 1
        self.opaque = True
        self.metrics.upgraded += 1

    def _emit_ready(self) -> None:
        exchanges = self.exchanges
        while exchanges and exchanges[0].req_done and exchanges[0].resp_done:
            self._emit(exchanges.popleft())
            self._awaiting -= 1
        if self.opaque:
            self.close()

    def _give_up_oldest(self) -> None:
        ex = self.exchanges.popleft()
        self._awaiting = max(0, self._awaiting - 1)
        self._emit(ex)

    def _emit(self, ex: _Exchange) -> None:
        if ex.obs.status is None:
            self.metrics.unanswered += 1
        self.metrics.transactions += 1
        self.emit(ex.obs)

    # --- holes and the end -------------------------------------------------------------
    def gap(self, from_client: bool) -> None:
        """Bytes of one direction were lost: resynchronise that direction."""
        self.metrics.gaps += 1
        if from_client:
            self._abandon_request()
        else:
            self._response_error_quiet()

    def _response_error_quiet(self) -> None:
        self._resp = None
        self._resp_resync = b""
        if self._resp_cycle and self._awaiting < len(self.exchanges):
            self.exchanges[self._awaiting].resp_done = True
            self._awaiting += 1
        self._resp_cycle = False
        self._emit_ready()

    def close(self) -> None:
        """Connection over: emit what is left (requests without response have status None)."""
        while self.exchanges:
            ex = self.exchanges.popleft()
            if ex.obs.method:
                self._emit(ex)
        self._awaiting = 0
        self._cur = None


def _h11_headers(headers: object) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]  # type: ignore[attr-defined]
