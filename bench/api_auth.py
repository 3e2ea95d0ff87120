"""What authentication costs on serve's HTTP API: the same handlers with and without the guard.

Three aiohttp apps on loopback, in one server process apart from the client's, in the same run
(the machine is shared and noisy), rounds interleaved, each round starting with another variant:

  (a) baseline: serve's own handlers (`GET /api/v1/modes`, `POST /api/v1/observations` with one
      observation) registered on a bare app, no middleware;
  (b) token: serve's app as `meshward serve` builds it (the guard, bearer token);
  (c) kubernetes, cache hit: the guard over `KubeAuth` whose reviews are always cached (the
      stand-in reviewer is called once per token; what is measured is the cache and guard
      path, not the API server: a miss costs one TokenReview plus one SubjectAccessReview
      round trip to the API server, not measured here).

Requests from one keep-alive client at 1 and 16 in flight; printed: requests/s and p50 per
variant, and ratios to (a) with the spread over rounds.

    PYTHONPATH=. .venv/bin/python bench/api_auth.py [--rounds 5] [--seconds 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import aiohttp
from aiohttp import web

from meshward.app import api
from meshward.app.auth import AuthConfig, Guard
from meshward.app.kubeauth import KubeAuth
from meshward.app.serve import ServeConfig, Server
from meshward.core.engine import Engine
from meshward.core.observation import Identity, Observation, observation_to_dict
from meshward.core.threats.inspection import NoDetector
from meshward.kube.review import Access, UserInfo

TOKEN = "bench-token-0123456789abcdef"
OBS = json.dumps(
    [
        observation_to_dict(
            Observation(
                seen_by="node-tap",
                destination=Identity("shop", "api"),
                source=Identity("shop", "web"),
                method="GET",
                path="/items/1",
            )
        )
    ]
).encode()


class _Yes:
    """Reviews answered at once: with the cache in front it is asked once per token."""

    def review_token(self, token: str) -> UserInfo | None:
        return UserInfo("system:serviceaccount:ops:bench")

    def allowed(self, user: UserInfo, access: Access) -> bool:
        return True


def _bare(server: Server) -> web.Application:
    app = web.Application(client_max_size=server.config.max_ingest_bytes)
    app[api.SERVER_KEY] = server
    app.router.add_get("/api/v1/modes", api.modes)
    app.router.add_post("/api/v1/observations", api.observations)
    return app


async def _site(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def _load(url: str, method: str, path: str, conc: int, seconds: float) -> tuple[float, float]:
    """(requests/s, p50 seconds) of `conc` workers on one keep-alive session."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    body = OBS if method == "POST" else None
    lat: list[float] = []
    end = time.perf_counter() + seconds
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=conc), headers=headers
    ) as s:

        async def worker() -> None:
            while time.perf_counter() < end:
                t = time.perf_counter()
                async with s.request(method, url + path, data=body) as r:
                    await r.read()
                    assert r.status in (200, 202), r.status
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        took = time.perf_counter() - t0
    return len(lat) / took, statistics.median(lat)


async def main(args: argparse.Namespace) -> None:
    cfg = ServeConfig(db=":memory:", listen_host="127.0.0.1", auth=AuthConfig(token=TOKEN))
    server = Server(cfg, engine=Engine(detector=NoDetector()))
    apps: dict[str, web.Application] = {
        "a baseline": _bare(server),
        "b token": api.build_app(server),
    }
    kube_server = Server(cfg, engine=server.engine)
    checks = KubeAuth(_Yes(), ttl=3600)  # type: ignore[arg-type]
    kube_server.guard = Guard(checks, authorizer=checks)
    apps["c kubernetes (cached)"] = api.build_app(kube_server)
    sites = {name: await _site(app) for name, app in apps.items()}
    results: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    try:
        for _ in range(args.rounds):
            for method, path in (("GET", "/api/v1/modes"), ("POST", "/api/v1/observations")):
                for conc in (1, 16):
                    for name, (_, url) in sites.items():
                        got = await _load(url, method, path, conc, args.seconds)
                        results.setdefault((f"{method} {path}", name, conc), []).append(got)
    finally:
        for runner, _ in sites.values():
            await runner.cleanup()
    _report(results, list(apps), args.rounds)


def _report(
    results: dict[tuple[str, str, int], list[tuple[float, float]]], names: list[str], rounds: int
) -> None:
    print(f"{rounds} interleaved rounds; median over rounds, ratio spread in brackets")
    for route in sorted({r for r, _, _ in results}):
        for conc in (1, 16):
            base = results[(route, names[0], conc)]
            print(f"\n{route}  c={conc}")
            for name in names:
                runs = results[(route, name, conc)]
                rps = statistics.median(r for r, _ in runs)
                p50 = statistics.median(p for _, p in runs) * 1e6
                ratios = [r / b for (r, _), (b, _) in zip(runs, base, strict=True)]
                added = [(p - bp) * 1e6 for (_, p), (_, bp) in zip(runs, base, strict=True)]
                print(
                    f"  {name:24} {rps:8.0f} req/s  p50 {p50:7.0f} µs   "
                    f"req/s vs (a) {statistics.median(ratios):.2f} "
                    f"[{min(ratios):.2f}-{max(ratios):.2f}]  "
                    f"added p50 {statistics.median(added):+.0f} µs"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.5)
    asyncio.run(main(parser.parse_args()))
