"""HTTP/1.x exchanges rebuilt from both byte streams of one TCP connection.

Requests go through httptools (llhttp, C): keep-alive, pipelining, chunked bodies. A response's
framing depends on the request it answers (RFC 9112 6.3: no body after HEAD, 1xx, 204, 304; a
tunnel after CONNECT 2xx), which llhttp cannot be told, so response heads are cut at the blank
line, parsed by a fresh httptools response parser, and the body is framed here knowing the
request method (content-length, chunked, or until close). h11 does the same but costs ~200 µs
per exchange in pure Python; this path costs a few. Requests and responses pair in order
(pipelining). After a gap or a parse error the direction resynchronises at the next request
line or status line.
"""

from __future__ import annotations

import functools
import re
from collections import deque
from collections.abc import Callable

import httptools

from meshward.core.observation import Observation
from meshward.core.values import decimal
from meshward.tap.node.counters import NodeTapCounters

Emit = Callable[[Observation], None]

_REQUEST_LINE = re.compile(
    rb"(?:GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|CONNECT|TRACE) [!-~]+ HTTP/1\.[01]\r\n"
)
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] [1-5]\d\d[ \r]")
# A request line with any method token (RFC 9110 allows extension methods, hyper forwards them;
# llhttp knows a fixed list and refuses the rest)
_ANY_REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}) [!-~]+ HTTP/1\.[01]\r?\n")
_STAND_IN = b"POST"  # what llhttp is told instead: request framing does not depend on the method
_MAX_PENDING = 64  # requests waiting for their response
_MAX_BUFFER = 1 << 20  # response bytes buffered while waiting for their request
_MAX_HEAD = 64 * 1024  # a response head longer than this is garbage
# a request head still open past this is garbage: above hyper's (linkerd-proxy's) ~400 KiB, so
# that padding a request with long headers cannot hide it from inspection
_MAX_REQUEST_HEAD = 512 * 1024
_MAX_HEADER_TEXT = 64 * 1024  # header bytes kept per request; the rest dropped and flagged
# response side states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _RESYNC = range(8)


class _Exchange:
    __slots__ = ("obs", "req_done", "resp_done", "upgrade")

    def __init__(self, obs: Observation) -> None:
        self.obs = obs
        self.req_done = False
        self.resp_done = False
        self.upgrade = False


class Http1Parser:
    """Both directions of one HTTP/1.x connection; emits one Observation per exchange."""

    def __init__(self, emit: Emit, metrics: NodeTapCounters, max_body: int = 65536) -> None:
        self.emit = emit
        self.metrics = metrics
        self.max_body = max_body
        self.ts = 0.0
        self.exchanges: deque[_Exchange] = deque()
        self._awaiting = 0  # index in exchanges of the request the next response answers
        self._req: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._req_resync = b""  # scan buffer while looking for a request line
        self._req_paused = False  # after an Upgrade/CONNECT request, until its response
        self._resp_after_gap = False  # the next response follows a hole: pair with the newest
        self._cur: _Exchange | None = None
        self._url = b""
        self._real_method = ""  # a method llhttp does not know, told it as _STAND_IN
        self._body: list[bytes] = []
        self._body_len = 0
        self._head_len = 0  # bytes fed while the current request head is incomplete
        self._header_bytes = 0  # header bytes of the current request
        self._rbuf = b""  # response bytes not consumed yet
        self._rstate = _HEAD
        self._rleft = 0  # body bytes left (content-length or current chunk)
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
        if self._req_paused:
            return
        if self._req is None:
            buf = self._req_resync + data
            m = _REQUEST_LINE.search(buf)
            if m is None:
                self._req_resync = buf[-256:]
                return
            self._req_resync = b""
            self._req = httptools.HttpRequestParser(self)
            data = buf[m.start() :]
        if self._cur is not None and not self._cur.obs.method:  # inside a request head
            # llhttp has no head limit: a head still open after this many bytes is garbage
            # (checked before adding, so one large segment carrying a body never trips it)
            if self._head_len > _MAX_REQUEST_HEAD:
                self.metrics.parse_errors += 1
                self._abandon_request()
                return
            self._head_len += len(data)
        try:
            self._req.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrade or CONNECT: what follows depends on the answer; wait for the response
            if self.exchanges:
                self.exchanges[-1].upgrade = True
                self.exchanges[-1].req_done = True
            self._cur = None
            self._req = None
            self._req_paused = True
            self._req_resync = b""
        except httptools.HttpParserInvalidMethodError:
            if not self._extension_method(data):
                self.metrics.parse_errors += 1
                self._abandon_request()
        except httptools.HttpParserError:
            self.metrics.parse_errors += 1
            self._abandon_request()

    def _extension_method(self, data: bytes) -> bool:
        """Parse a request with a method llhttp does not know (`PURGEALL /x`, `GETX /x?q=..`;
        a Go or Express handler that does not check the method serves it): the same bytes with
        a stand-in method go to a fresh parser, and the real method is put back. Without this
        the request went unseen and later responses were paired with the wrong requests."""
        while (m := _unknown_request_line(data)) is not None:
            self._abandon_request()
            self._real_method = m.group(1).decode("latin-1")
            self._req = httptools.HttpRequestParser(self)
            rest = _STAND_IN + data[m.end(1) :]
            try:
                self._req.feed_data(rest)
            except httptools.HttpParserInvalidMethodError:  # a later one too: go on from there
                data = rest[len(_STAND_IN) :]
                continue
            except httptools.HttpParserUpgrade:
                self._req, self._req_paused = None, True
            except httptools.HttpParserError:
                self.metrics.parse_errors += 1
                self._abandon_request()
            return True
        return False

    def _abandon_request(self) -> None:
        """Drop the request being parsed and look for the next request line."""
        self._req = None
        self._req_resync = b""
        cur = self._cur
        if cur is not None and not cur.obs.method:  # head never completed: nothing to report
            if self.exchanges and self.exchanges[-1] is cur:
                self.exchanges.pop()
        elif cur is not None and not cur.req_done:
            cur.req_done = True
            cur.obs.body_truncated = True
        self._cur = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        ex = _Exchange(Observation(seen_by="node-tap", time=self.ts, protocol="http/1.1"))
        self._cur = ex
        self._head_len = 0
        self._header_bytes = 0
        self._url = b""
        self._body = []
        self._body_len = 0
        self.exchanges.append(ex)
        if len(self.exchanges) > _MAX_PENDING:
            self._give_up_oldest()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._cur is None:
            return
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > _MAX_HEADER_TEXT:
            self._cur.obs.headers_truncated = True
            return
        self._cur.obs.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        ex = self._cur
        if ex is None or self._req is None:
            return
        obs = ex.obs
        obs.method = self._real_method or self._req.get_method().decode("latin-1")
        self._real_method = ""
        url = self._url.decode("latin-1")
        if url.startswith(("http://", "https://")):  # absolute form: keep path and query only
            url = "/" + url.split("://", 1)[1].partition("/")[2]
        path, _, query = url.partition("?")
        obs.path, obs.query = path, query.partition("#")[0]
        obs.authority = obs.header("host")
        obs.request_id = obs.header("x-request-id")
        obs.body_size = decimal(obs.header("content-length"))
        obs.fill_grpc()

    def on_body(self, body: bytes) -> None:
        room = self.max_body - self._body_len
        self._body_len += len(body)
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
        self._rbuf = self._rbuf + data if self._rbuf else data
        if len(self._rbuf) > _MAX_BUFFER and self._rstate in (_HEAD, _RESYNC):
            self._response_error()  # responses to requests we never saw: resync

    def _response_error(self) -> None:
        self.metrics.parse_errors += 1
        self._response_error_quiet()

    def _overlong(self) -> None:
        """A head or chunk line past _MAX_HEAD: drop it before resynchronising, else the
        status line it starts with is found again at once and the pump loops forever."""
        self._rbuf = self._rbuf[-64:]
        self._response_error()

    def _pump(self) -> None:
        """Frame as many responses as the buffered bytes and the known requests allow."""
        while self._rbuf and not self.opaque:
            state = self._rstate
            if state == _RESYNC:
                m = _STATUS_LINE.search(self._rbuf)
                if m is None:
                    self._rbuf = self._rbuf[-64:]
                    break
                self._rbuf = self._rbuf[m.start() :]
                self._rstate = _HEAD
            elif state == _HEAD:
                if not self._response_head():
                    break
            elif state == _LENGTH:
                take = min(self._rleft, len(self._rbuf))
                self._rbuf = self._rbuf[take:]
                self._rleft -= take
                if self._rleft == 0:
                    self._response_done()
            elif state == _CHUNK_DATA:
                take = min(self._rleft, len(self._rbuf))
                self._rbuf = self._rbuf[take:]
                self._rleft -= take
                if self._rleft == 0:
                    self._rstate = _CHUNK_CRLF
            elif state == _UNTIL_CLOSE:
                self._rbuf = b""
            else:  # chunk size line, the CRLF after chunk data, trailers
                if not self._chunk_line(state):
                    break
        self._emit_ready()

    def _response_head(self) -> bool:
        """Parse one response head if complete and its request is known; False: need more."""
        buf = self._rbuf.lstrip(b"\r\n")
        self._rbuf = buf
        if self._awaiting >= len(self.exchanges) or not self.exchanges[self._awaiting].obs.method:
            return False  # the request it answers is not parsed yet
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                self._overlong()
                return True
            return False
        head, self._rbuf = buf[: end + 4], buf[end + 4 :]
        if self._resp_after_gap:
            self._skip_to_newest()
        parsed = _ResponseHead()
        parser = httptools.HttpResponseParser(parsed)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass  # a 101 head: complete, the status says the rest
        except httptools.HttpParserError:
            self._response_error()
            return True
        status = parser.get_status_code()
        ex = self.exchanges[self._awaiting]
        if 100 <= status < 200 and status != 101:
            return True  # interim response (100 Continue): the final one follows
        ex.obs.status = status
        ex.obs.response_headers = parsed.headers
        method = ex.obs.method
        if status == 101 or (method == "CONNECT" and 200 <= status < 300):
            self._switched()
            return True
        if method == "HEAD" or status in (204, 304):
            self._response_done()
            return True
        coding = parsed.transfer_encoding
        if coding:
            self._rstate = (
                _CHUNK_SIZE if coding.rsplit(",", 1)[-1].strip() == "chunked" else (_UNTIL_CLOSE)
            )
        elif parsed.content_length is not None:
            self._rleft = parsed.content_length
            if self._rleft == 0:
                self._response_done()
            else:
                self._rstate = _LENGTH
        else:
            self._rstate = _UNTIL_CLOSE
        return True

    def _chunk_line(self, state: int) -> bool:
        end = self._rbuf.find(b"\r\n")
        if end < 0:
            if len(self._rbuf) > _MAX_HEAD:
                self._overlong()
                return True
            return False
        line, self._rbuf = self._rbuf[:end], self._rbuf[end + 2 :]
        if state == _CHUNK_SIZE:
            size = line.split(b";", 1)[0].strip()
            try:
                self._rleft = int(size, 16)
            except ValueError:
                self._response_error()
                return True
            if self._rleft < 0:
                self._response_error()
            else:
                self._rstate = _CHUNK_DATA if self._rleft else _TRAILERS
        elif state == _CHUNK_CRLF:
            if line:
                self._response_error()
            else:
                self._rstate = _CHUNK_SIZE
        elif not line:  # the blank line after the (optional) trailers
            self._response_done()
        else:
            name, _, value = line.decode("latin-1").partition(":")
            self.exchanges[self._awaiting].obs.response_headers.append(
                (name.strip().lower(), value.strip())
            )
        return True

    def _response_done(self) -> None:
        ex = self.exchanges[self._awaiting]
        ex.resp_done = True
        if ex.upgrade:
            self._req_paused = False  # refused upgrade: look for the next request
        self._awaiting += 1
        self._rstate = _HEAD

    def _skip_to_newest(self) -> None:
        """After a hole in the responses, the next one answers the newest request we know
        (exact without pipelining); the requests before it lost their responses."""
        self._resp_after_gap = False
        newest = len(self.exchanges) - 1
        while newest > self._awaiting and not self.exchanges[newest].obs.method:
            newest -= 1
        for i in range(self._awaiting, newest):
            self.exchanges[i].resp_done = True
        self._awaiting = newest

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
        self.resync(from_client)

    def resync(self, from_client: bool) -> None:
        """Look for the next message boundary in one direction (a gap, or a late start)."""
        if from_client:
            self._abandon_request()
        else:
            self._response_error_quiet()

    def _response_error_quiet(self) -> None:
        self._rstate = _RESYNC
        self._resp_after_gap = True

    def close(self) -> None:
        """Connection over: emit what is left (requests without response have status None)."""
        if self._rstate == _UNTIL_CLOSE and self._awaiting < len(self.exchanges):
            self.exchanges[self._awaiting].resp_done = True  # its body ended with the connection
        self._rstate = _RESYNC
        while self.exchanges:
            ex = self.exchanges.popleft()
            if ex.obs.method:
                self._emit(ex)
        self._awaiting = 0
        self._cur = None


class _ResponseHead:
    """httptools callbacks collecting one response head."""

    __slots__ = ("content_length", "headers", "transfer_encoding")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.content_length: int | None = None
        self.transfer_encoding = ""

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers.append((key, text))
        if key == "content-length" and (length := decimal(text.strip())) is not None:
            self.content_length = length
        elif key == "transfer-encoding":
            self.transfer_encoding = text.lower()


def _unknown_request_line(data: bytes) -> re.Match[bytes] | None:
    """The first request line, at a line start, whose method llhttp does not know."""
    for m in _ANY_REQUEST_LINE.finditer(data):
        if m.start() and data[m.start() - 1] not in (0x0A, 0x0D):
            continue
        if not _llhttp_knows(m.group(1)):
            return m
    return None


@functools.lru_cache(maxsize=64)
def _llhttp_knows(method: bytes) -> bool:
    """Whether llhttp parses requests with this method (its list is fixed, and long)."""
    try:
        httptools.HttpRequestParser(_ResponseHead()).feed_data(method + b" / HTTP/1.1\r\n\r\n")
    except httptools.HttpParserInvalidMethodError:
        return False
    except httptools.HttpParserError:
        return True
    return True
