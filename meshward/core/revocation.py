"""The revocation list of serve's CA: which workload certificates serve refuses although they
verify (a leaked sidecar key), parsed and judged without I/O.

One entry a line (`meshward ca revoke` writes them; `#` starts a comment):

    serial 5f1c0e3a9b7d...  2026-12-06T10:02:03Z  leaked on node-3
    id spiffe://cluster.local/ns/shop/sa/api  2026-12-06T10:02:03Z  rotate everything of shop/api

`serial HEX`: the one certificate with that serial number (the CA picks 127-bit random ones).
`id SPIFFE-ID TIME`: every certificate of that identity issued (notBefore) at or before TIME, so
the identity's next certificate, issued after it, passes. The reason is free text for people.

A file with any line that does not parse is rejected whole (RevocationError naming the line):
half a list must never pass for the whole one, so serve refuses calls rather than guess
(docs/security.md, "Revocation").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from meshward.core.peer import parse_spiffe

MAX_BYTES = 1024 * 1024  # a list longer than this is refused (a mesh revokes few certificates)
MAX_ENTRIES = 20_000
MAX_REASON = 200
_SERIAL = re.compile(r"[0-9a-f]{1,40}")  # RFC 5280: at most 20 octets
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_KINDS = ("serial", "id")


class RevocationError(ValueError):
    """The list cannot be used; `line` is the first bad line (1-based, 0: the whole file)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True, slots=True)
class Revocation:
    kind: str  # "serial" or "id"
    value: str  # lower-case hex without leading zeros, or the SPIFFE id
    at: datetime  # when it was revoked (UTC, whole seconds)
    reason: str = ""

    def line(self) -> str:
        text = f"{self.kind} {self.value} {format_time(self.at)}"
        return f"{text} {self.reason}" if self.reason else text


@dataclass(frozen=True)
class RevocationList:
    entries: tuple[Revocation, ...] = ()
    serials: frozenset[int] = field(default=frozenset(), repr=False)
    ids: dict[str, datetime] = field(default_factory=dict, repr=False)  # latest time per id

    @classmethod
    def of(cls, entries: tuple[Revocation, ...]) -> RevocationList:
        ids: dict[str, datetime] = {}
        serials = set()
        for e in entries:
            if e.kind == "serial":
                serials.add(int(e.value, 16))
            else:
                ids[e.value] = max(e.at, ids.get(e.value, e.at))
        return cls(entries, frozenset(serials), ids)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def refuses(self, serial: int, spiffe_uri: str, not_before: datetime) -> str:
        """Why a certificate is revoked ("" when it is not)."""
        if serial in self.serials:
            return f"serial {serial:x} revoked"
        until = self.ids.get(spiffe_uri)
        if until is not None and not_before <= until:
            return f"{spiffe_uri} revoked for certificates issued until {format_time(until)}"
        return ""

    def with_entry(self, entry: Revocation) -> RevocationList:
        if len(self.entries) >= MAX_ENTRIES:
            raise RevocationError(0, f"the list holds {MAX_ENTRIES} entries already")
        return RevocationList.of((*self.entries, entry))

    def render(self) -> str:
        head = "# meshward revocation list (meshward ca revoke); docs/security.md\n"
        return head + "".join(e.line() + "\n" for e in self.entries)


def format_time(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    if not _TIME.fullmatch(text):
        raise ValueError(f"time {text[:40]!r} is not YYYY-MM-DDTHH:MM:SSZ")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def serial_value(text: str) -> str:
    """A serial number as the list keeps it: lower-case hex, no leading zeros (colons, `0x`
    and upper case, as openssl and browsers print them, are accepted)."""
    raw = text.strip().lower().removeprefix("0x").replace(":", "")
    if not _SERIAL.fullmatch(raw):
        raise ValueError(f"serial {text[:60]!r} is not 1-40 hex digits")
    return f"{int(raw, 16):x}"


def entry(kind: str, value: str, at: datetime, reason: str = "") -> Revocation:
    """One checked entry (the command line and the parser make them the same way)."""
    if kind == "serial":
        value = serial_value(value)
    elif kind == "id":
        spiffe = parse_spiffe(value)
        if spiffe is None:
            raise ValueError(f"{value[:80]!r} is not a SPIFFE id spiffe://TD/ns/NS/sa/SA")
        value = spiffe.uri
    else:
        raise ValueError(f"kind {kind[:20]!r} is not one of {', '.join(_KINDS)}")
    reason = " ".join(reason.split())
    if len(reason) > MAX_REASON or not reason.isprintable():
        raise ValueError(f"the reason must be printable text of at most {MAX_REASON} characters")
    return Revocation(kind, value, at.replace(microsecond=0), reason)


def parse(data: bytes) -> RevocationList:
    """The list in `data`; RevocationError for anything but a whole, well-formed list."""
    if len(data) > MAX_BYTES:
        raise RevocationError(0, f"{len(data)} bytes: more than {MAX_BYTES}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RevocationError(0, f"not UTF-8 text (byte {exc.start})") from None
    entries: list[Revocation] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 3)
        if len(parts) < 3:
            raise RevocationError(number, "expected KIND VALUE TIME [REASON]")
        try:
            entries.append(
                entry(parts[0], parts[1], parse_time(parts[2]), parts[3] if len(parts) > 3 else "")
            )
        except ValueError as exc:
            raise RevocationError(number, str(exc)) from None
        if len(entries) > MAX_ENTRIES:
            raise RevocationError(number, f"more than {MAX_ENTRIES} entries")
    return RevocationList.of(tuple(entries))
