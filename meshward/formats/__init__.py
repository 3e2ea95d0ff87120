"""Offline inputs of `meshward learn` and `meshward score`: HAR 1.2 files and Envoy tap traces.

`read_observations(paths)` detects each file's format by its content (gzip-compressed files too)
and yields, in input order, Observations (seen_by="file") and EntryErrors for what could not be
read, so a command can report and count bad entries and go on.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Callable, Iterator
from typing import cast

import ijson

from meshward.core.observation import Observation
from meshward.formats.common import DepthGuard, EntryError, Item, json_error
from meshward.formats.envoytap import (
    is_trace_key,
    observations_from_trace,
    read_tap_document,
    read_tap_lines,
)
from meshward.formats.har import observation_from_entry, read_har

__all__ = [
    "EntryError",
    "Item",
    "Observation",
    "detect_format",
    "observation_from_entry",
    "observations_from_trace",
    "read_observations",
]

SNIFF = 1 << 16
_BOM = b"\xef\xbb\xbf"
_GZIP = b"\x1f\x8b"

Progress = Callable[[int], None]  # called with the number of input bytes consumed since last call


def _first_key(prefix: bytes, whole: bool) -> str | None:
    """The first key of the top-level JSON object in `prefix`, None when it cannot be told.

    `whole`: the prefix is the whole file, so JSON that stops short is invalid, not unfinished.
    """
    try:
        for path, ev, value in ijson.parse(DepthGuard(io.BytesIO(prefix))):
            if path == "" and ev == "map_key":
                return str(value)
            if path == "" and ev == "end_map":
                return None
    except ijson.JSONError as exc:
        if whole or not isinstance(exc, ijson.IncompleteJSONError):
            raise ValueError(f"invalid JSON: {json_error(exc)}") from exc
    return None


def _lines_kind(head: bytes, whole: bool) -> str | None:
    """'tap-lines' / 'har' when one of the first complete lines is a JSON object on its own."""
    lines = head.split(b"\n")
    if not whole:
        lines = lines[:-1]  # the last one may be cut by the prefix
    for line in [ln for ln in lines if ln.strip()][:5]:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # deep nesting: RecursionError, not a ValueError
            continue
        if isinstance(obj, dict) and obj:
            key = next(iter(obj))
            if is_trace_key(key):
                return "tap-lines"
            if key == "log":
                return "har"
    return None


def detect_format(prefix: bytes) -> str:
    """'har', 'tap-lines' or 'tap' from the first bytes of a file; ValueError if neither."""
    head = prefix.removeprefix(_BOM).lstrip()
    whole = len(prefix) < SNIFF
    if not head:
        raise ValueError("empty file")
    if not head.startswith(b"{"):
        raise ValueError("not a JSON object: expected a HAR file or Envoy tap traces")
    kind = _lines_kind(head, whole)  # JSON Lines, even when the first line is broken
    if kind is not None:
        return kind
    key = _first_key(head, whole)
    if key == "log" or (key is None and b'"log"' in head):
        return "har"
    if key is None or not is_trace_key(key):
        shown = f"first key {key!r}" if key is not None else "no recognisable first key"
        raise ValueError(
            f"neither a HAR file (log.entries) nor an Envoy tap TraceWrapper ({shown})"
        )
    return "tap"


def _read_file(path: str, raw: io.BufferedReader) -> Iterator[Item]:
    f: io.BufferedReader = raw
    if raw.peek(2)[:2] == _GZIP:  # .har.gz, compressed tap dumps: decompressed as streamed
        f = io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), SNIFF)
    try:
        prefix = f.peek(SNIFF)[:SNIFF]
    except (OSError, EOFError, zlib.error) as exc:
        yield EntryError(path, None, f"unreadable gzip data: {exc}")
        return
    try:
        kind = detect_format(prefix)
    except ValueError as exc:
        yield EntryError(path, None, str(exc))
        return
    if prefix.startswith(_BOM):
        f.read(len(_BOM))
    if kind == "har":
        yield from read_har(path, f)
    elif kind == "tap-lines":
        yield from read_tap_lines(path, f)
    else:
        yield from read_tap_document(path, f)


def read_observations(paths: list[str], progress: Progress | None = None) -> Iterator[Item]:
    """Every Observation and EntryError of the given files, in input order.

    A file that cannot be opened yields one EntryError (commands check existence up front and
    exit with a usage error instead).
    """
    for path in paths:
        try:
            # closed below (a generator); a BufferedReader, whose peek() the sniffing needs
            f = cast(io.BufferedReader, open(path, "rb", buffering=SNIFF))  # noqa: SIM115
        except OSError as exc:
            yield EntryError(path, None, f"cannot open: {exc.strerror or exc}")
            continue
        done = 0
        try:
            for item in _read_file(path, f):
                if progress is not None and (pos := f.tell()) > done:
                    progress(pos - done)
                    done = pos
                yield item
        except (OSError, EOFError, zlib.error) as exc:
            yield EntryError(path, None, f"read error, rest of file skipped: {json_error(exc)}")
        finally:
            if progress is not None and not f.closed and (pos := f.tell()) > done:
                progress(pos - done)
            f.close()
