"""Pieces every offline format shares: the error record, identities from authority and XFCC,
timestamps, header lists."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

import ijson

from meshward.core.names import is_ip
from meshward.core.observation import Identity, Observation
from meshward.core.peer import parse_xfcc
from meshward.core.values import decimal


@dataclass(frozen=True, slots=True)
class EntryError:
    """One entry (or a whole file) that could not be read; the run skips it, counts it, goes on."""

    file: str
    entry: int | None  # 1-based entry / trace number, or line for JSON Lines; None: whole file
    message: str
    unit: str = "entry"  # "entry" or "line"

    def __str__(self) -> str:
        where = f"{self.file}: {self.unit} {self.entry}" if self.entry is not None else self.file
        return f"{where}: {' '.join(self.message.split())}"


Item = Observation | EntryError

# Observation.extra keys: the file an Observation was read from, and its 1-based entry there
# (the line, for JSON Lines), numbered as EntryError numbers a bad one
FILE = "file"
ENTRY = "entry"


def at_entry(obs: Observation, file: str, n: int) -> Observation:
    """Mark where an Observation was read (`meshward score` says which request it judges)."""
    obs.extra[FILE] = file
    obs.extra[ENTRY] = str(n)
    return obs


# What converting one decoded JSON entry raises on data of the wrong shape (anything else: a bug).
BAD_VALUE = (ValueError, TypeError, KeyError, AttributeError, OverflowError)
# What ijson raises on broken input: yajl2_c turns a lone-surrogate escape ("\ud800") into bytes
# that are not UTF-8 and then fails to decode them (UnicodeDecodeError, not a JSONError).
JSON_ERRORS = (ijson.JSONError, UnicodeDecodeError)
MAX_JSON_DEPTH = 256  # HAR and tap documents nest about 10 deep; bodies are strings inside them


class JSONTooDeep(ijson.JSONError):
    """Nesting past MAX_JSON_DEPTH: one of JSON_ERRORS, like any other broken input."""


_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")
_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class DepthGuard:
    """A binary file whose reads fail with JSONTooDeep once the JSON in it nests past
    MAX_JSON_DEPTH. ijson keeps a prefix per open level, so its memory grows with the square of
    the depth (about 250 MB at 10,000 levels, which a 20 KB file reaches); this looks at each
    chunk before ijson does, in C-speed passes: escapes dropped, strings (which may span
    chunks) cut out at their quotes, the brackets left summed."""

    def __init__(self, f: IO[bytes], max_depth: int = MAX_JSON_DEPTH) -> None:
        self._f = f
        self.max_depth = max_depth
        self.depth = 0
        self._in_string = False  # a string opened in an earlier chunk is still open
        self._carry = b""  # a backslash that ended the last chunk: it escapes the next byte

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if data:
            self._scan(data)
        return data

    def _scan(self, data: bytes) -> None:
        if self._carry:
            data, self._carry = self._carry + data, b""
        if b"\\" in data:  # escaped backslashes first, so that what is left of \" is a quote
            if b"\\\\" in data:
                data = data.replace(b"\\\\", b"")
            if data.endswith(b"\\"):
                data, self._carry = data[:-1], b"\\"
            data = data.replace(b'\\"', b"")
        parts = data.translate(None, _NOT_STRUCTURE).split(b'"')
        outside = parts[1::2] if self._in_string else parts[::2]
        if len(parts) % 2 == 0:
            self._in_string = not self._in_string
        brackets = b"".join(outside).translate(None, _NOT_BRACKETS)
        opened = brackets.count(b"[") + brackets.count(b"{")
        if self.depth + opened > self.max_depth:
            steps = map(_STEP.__getitem__, brackets)
            if max(itertools.accumulate(steps, initial=self.depth)) > self.max_depth:
                raise JSONTooDeep(f"nested deeper than {self.max_depth} levels")
        self.depth += 2 * opened - len(brackets)


def json_error(exc: BaseException) -> str:
    """ijson's messages run over several lines (with a caret line): keep the first."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


def describe(exc: BaseException) -> str:
    """One line for an EntryError: our own ValueErrors are already worded for people."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if isinstance(exc, ValueError) else f"{type(exc).__name__}: {text}"


# Istio puts the caller's SPIFFE id in x-forwarded-client-cert: By=...;Hash=...;URI=spiffe://...


def split_authority(authority: str) -> tuple[str, int]:
    """`host[:port]` or `[v6]:port` into (host, port); port 0 when absent or not a number."""
    a = authority.strip()
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif a.count(":") == 1:
        host, _, port = a.partition(":")
    else:
        host, port = a, ""
    number = decimal(port, 5)
    return host.lower(), number if number is not None and number <= 65535 else 0


def destination_from_authority(authority: str, ip: str = "", port: int = 0) -> Identity:
    """The destination when nothing better is known: the service named by the authority."""
    host, aport = split_authority(authority)
    port = aport or port
    if not host:
        return Identity(ip=ip, port=port)
    if is_ip(host):
        return Identity(workload=host, ip=ip or host, port=port)
    return Identity.parse(host, ip=ip, port=port)


def source_from_xfcc(headers: list[tuple[str, str]], ip: str = "", port: int = 0) -> Identity:
    """The caller from Istio's x-forwarded-client-cert (the URI of the last element that has one:
    the hop closest to us), else just the address. A recorded file is not a verified peer: this
    only names the caller the recording's sidecar saw; a malformed header names none."""
    for name, value in headers:
        if name == "x-forwarded-client-cert":
            try:
                elements = parse_xfcc(value)
            except ValueError:
                break
            for element in reversed(elements):
                uri = next((v for k, v in element if k == "uri" and v), "")
                if uri:
                    return Identity.parse(uri, ip=ip, port=port)
    return Identity(ip=ip, port=port)


def parse_time(value: object, what: str) -> float:
    """ISO 8601 / RFC 3339 text (or a protobuf JSON Timestamp) to epoch seconds; naive = UTC."""
    if isinstance(value, dict):  # {"seconds": ..., "nanos": ...}
        try:
            t = float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{what} is not a timestamp") from exc
        if not math.isfinite(t):  # "NaN" or 1e999: not storable, not JSON
            raise ValueError(f"{what} is not a finite timestamp")
        return t
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a date-time string")
    try:
        dt = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValueError(f"{what} is not ISO 8601: {value[:40]!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def normalize_protocol(version: str) -> str:
    """HAR httpVersion / ALPN spellings to the Observation's protocol names."""
    v = version.strip().lower()
    if v in ("h2", "http/2", "http/2.0", "h2c"):
        return "h2"
    if v in ("h3", "http/3", "http/3.0"):
        return "h3"
    if v in ("http/1.0", "http/0.9"):
        return v
    return "http/1.1"


def content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name == "content-length":
            v = value.strip()
            return decimal(v)
    return None


def require_object(value: object, what: str) -> dict[str, Any]:
    """The value as a JSON object, or a one-line reason."""
    if value is None:
        raise ValueError(f"{what} is missing")
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object, not {type(value).__name__}")
    return value


def split_pseudo(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(name, value) pairs -> (lower-cased headers, HTTP/2 pseudo-headers such as :path apart)."""
    out: list[tuple[str, str]] = []
    pseudo: dict[str, str] = {}
    for name, value in pairs:
        name = name.lower()
        if name.startswith(":"):
            pseudo[name] = value
        else:
            out.append((name, value))
    return out, pseudo
