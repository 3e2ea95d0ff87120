"""A client for Envoy's admin `/tap` streaming endpoint.

POST /tap with a tap config for the `config_id` that an `envoy.filters.http.tap` filter declares
(`admin_config: {config_id: ...}`); Envoy then streams one TraceWrapper JSON value per tapped
request on that response until we hang up. Each trace is turned into Observations by the shared
trace parser (`meshward.formats.envoytap`), never a second one here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from meshward.core.observation import Observation
from meshward.formats.common import BAD_VALUE
from meshward.formats.envoytap import TraceSegmentAssembler, observations_from_trace

MAX_TRACE = 8 << 20  # bytes of one JSON trace value; beyond that the stream is out of sync


class AdminTapError(Exception):
    """The admin endpoint refused the tap or the stream broke in a way we cannot resume."""


@dataclass
class TapStats:
    traces: int = 0
    observations: int = 0
    bad: int = 0


def tap_request(config_id: str, max_body: int = 64 * 1024) -> dict[str, object]:
    """The admin /tap request body: tap every request, stream it to this connection."""
    return {
        "config_id": config_id,
        "tap_config": {
            "match": {"any_match": True},
            "output_config": {
                "sinks": [{"format": "JSON_BODY_AS_BYTES", "streaming_admin": {}}],
                "max_buffered_rx_bytes": max_body,
                "max_buffered_tx_bytes": max_body,
            },
        },
    }


class TraceSplitter:
    """Cuts a byte stream of concatenated JSON values into decoded values (bounded buffer)."""

    def __init__(self, max_value: int = MAX_TRACE) -> None:
        self.max_value = max_value
        self._buf = ""
        self._pending = b""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[object]:
        data = self._pending + data
        try:
            text = data.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:  # a multi-byte character split across chunks
            text = data[: exc.start].decode("utf-8")
            self._pending = data[exc.start :]
            if len(self._pending) > 4:
                raise AdminTapError("tap stream is not UTF-8 JSON") from None
        self._buf += text
        out: list[object] = []
        while True:
            buf = self._buf.lstrip()
            if not buf:
                self._buf = ""
                return out
            try:
                value, end = self._decoder.raw_decode(buf)
            except json.JSONDecodeError:
                if len(buf) > self.max_value:
                    raise AdminTapError(
                        f"tap stream value longer than {self.max_value} bytes or not JSON"
                    ) from None
                self._buf = buf
                return out
            except (ValueError, RecursionError) as exc:  # no more bytes can make it decode
                # a number past int()'s digit limit, or nesting deeper than the decoder goes
                raise AdminTapError(f"tap stream value not decodable: {exc}"[:200]) from None
            out.append(value)
            self._buf = buf[end:]


async def stream_observations(
    admin_url: str,
    config_id: str,
    *,
    max_body: int = 64 * 1024,
    stats: TapStats | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[Observation]:
    """Observations of every request the tap filter `config_id` sees, until cancelled."""
    stats = stats if stats is not None else TapStats()
    own = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
    streams = TraceSegmentAssembler(seen_by="envoy-tap")
    splitter = TraceSplitter()
    try:
        url = admin_url.rstrip("/") + "/tap"
        async with session.post(url, json=tap_request(config_id, max_body)) as resp:
            if resp.status != 200:
                text = (await resp.text())[:200].strip()
                raise AdminTapError(f"admin /tap answered {resp.status}: {text}")
            async for chunk in resp.content.iter_any():
                for value in splitter.feed(chunk):
                    stats.traces += 1
                    try:
                        if isinstance(value, dict) and "http_streamed_trace_segment" in value:
                            found = streams.add(value["http_streamed_trace_segment"])
                        else:
                            found = observations_from_trace(value, seen_by="envoy-tap")
                    except BAD_VALUE:  # OverflowError too: a timestamp of 10**400 seconds
                        stats.bad += 1
                        continue
                    for obs in found:
                        stats.observations += 1
                        yield obs
    except aiohttp.ClientError as exc:
        raise AdminTapError(f"admin /tap stream failed: {exc}") from exc
    finally:
        if own:
            await session.close()
