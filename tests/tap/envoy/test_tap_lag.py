"""A meshward that falls behind the tap (its event loop stalled, as on a CPU-starved machine),
through a real Envoy 1.40: the sidecar keeps the copies it cannot send yet and loses none while
the stall is shorter than its deferred close timeout; beyond that, Envoy drops them and says so."""

from __future__ import annotations

import time
from concurrent import futures
from pathlib import Path

import pytest

from meshward.istio.bootstrap import render_bootstrap
from meshward.istio.envoyproc import EnvoyProcess
from tests.support.envoy_http import ServerThread, http

pytestmark = pytest.mark.integration

OBSERVED = 'meshward_observations_total{source="envoy-tap"}'
TAP = "cluster.meshward-tap."
STREAMS = "meshward_tap_streams_total"
REQUESTS = 20


def stalled_burst(srv: ServerThread, envoy: EnvoyProcess, stall: float) -> None:
    """REQUESTS requests at once while meshward's event loop is blocked for `stall` seconds."""
    assert http(envoy.port, "/warm")[0] == 200
    srv.wait_metric(OBSERVED, 1)
    srv.loop.call_soon_threadsafe(time.sleep, stall)  # the server reads nothing meanwhile
    time.sleep(0.05)
    with futures.ThreadPoolExecutor(REQUESTS) as pool:
        codes = list(pool.map(lambda i: http(envoy.port, f"/api/items/{i}")[0], range(REQUESTS)))
    assert codes == [200] * REQUESTS  # send and go: the requests never wait for the tap


def sidecar(srv: ServerThread, app: int, envoy_bin: str, **tap: int) -> EnvoyProcess:
    boot = render_bootstrap(
        0,
        f"127.0.0.1:{app}",
        "shop",
        "api",
        "learn",
        authz_port=srv.ports["authz"],
        tap_port=srv.ports["tap"],
        **tap,
    )
    return EnvoyProcess(boot, envoy=envoy_bin, name="lag-sidecar")


def test_copies_wait_in_the_sidecar(envoy_bin: str, echo_app: int, tmp_path: Path) -> None:
    with (
        ServerThread(str(tmp_path / "m.db")) as srv,
        sidecar(srv, echo_app, envoy_bin, tap_stream_window=2) as envoy,
    ):
        stalled_burst(srv, envoy, stall=1.0)
        srv.wait_metric(OBSERVED, 1 + REQUESTS)
        stats = envoy.stats(TAP)
        # at most 2 streams on the wire: the others queued in Envoy, none was lost
        assert stats[TAP + "upstream_rq_pending_total"] >= REQUESTS - 2
        assert stats.get(TAP + "upstream_rq_pending_overflow", 0) == 0
        # every copy read to its end by meshward: a stream Envoy gave up on would be "cut".
        # Envoy's own ext_proc streams_closed is no loss count: it also counts a stream meshward
        # ended (having read it all) before Envoy tore the request down, a race under load.
        assert srv.metric(f'{STREAMS}{{outcome="complete"}}') == 1 + REQUESTS
        assert srv.metric(f'{STREAMS}{{outcome="cut"}}') == 0
        assert not {
            k: v
            for k, v in envoy.stats("http.").items()
            if k.endswith("ext_proc.meshward_tap.streams_failed") and v
        }


def test_a_lag_beyond_the_close_timeout_loses_copies(
    envoy_bin: str, echo_app: int, tmp_path: Path
) -> None:
    with (
        ServerThread(str(tmp_path / "m.db")) as srv,
        sidecar(srv, echo_app, envoy_bin, tap_stream_window=2, tap_close_timeout_ms=100) as envoy,
    ):
        stalled_burst(srv, envoy, stall=1.5)
        time.sleep(2.0)  # the server catches up with whatever Envoy kept
        observed = srv.metric(OBSERVED) - 1
        closed = sum(
            v
            for k, v in envoy.stats("http.").items()
            if k.endswith("ext_proc.meshward_tap.streams_closed")
        )
        assert observed < REQUESTS
        assert closed >= REQUESTS - observed - 2  # Envoy counted what it gave up on
