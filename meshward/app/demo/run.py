"""`meshward demo`: the live mini-mesh, from learning to enforcing, in under a minute.

Phases: start `meshward serve` and the shop behind real Envoy sidecars (namespace in learn) ->
normal traffic (learned through the tap) -> the namespace switches to enforce (meshward's mode
and the sidecars' filters) -> normal traffic again (all must pass) -> attacks and novel calls
(all must be denied with 403, each with an alert) -> summary. Exit 0 only if all of it held.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meshward.app.demo import shop as shop_mod
from meshward.app.demo.mesh import DemoError, MiniMesh, ServeProcess, make_workdir
from meshward.app.demo.traffic import Call, Driver, Result, attack_calls, normal_calls, novel_calls

NAMESPACE = shop_mod.NAMESPACE
SERVICES = ("web", "catalog", "orders", "payments")
INGRESS_NS = "istio-system"
INGRESS = "istio-ingressgateway"


@dataclass
class DemoConfig:
    learn_requests: int = 400
    replay_requests: int = 150
    concurrency: int = 8
    seed: int = 7
    time_budget_s: float = 60.0


@dataclass
class Running:
    """Where the demo's mesh can be reached while it is kept up (`--keep-running`)."""

    url: str  # serve's HTTP API and dashboard
    token_file: Path  # the API token serve wrote beside its store
    db: Path  # serve's SQLite store
    ingress_port: int  # the ingress gateway's sidecar: the shop as from the internet


# called with the outcome once every phase ran and before anything is stopped (the demo's
# `--keep-running` waits there for Ctrl-C)
Hold = Callable[["Outcome", Running], Awaitable[None]]


@dataclass
class Outcome:
    """What the demo saw; `failures` empty means every expectation held."""

    failures: list[str] = field(default_factory=list)
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, dict[str, int]] = field(default_factory=dict)
    calls: list[dict[str, Any]] = field(default_factory=list)
    top_alerts: list[dict[str, Any]] = field(default_factory=list)
    serve_log: list[str] = field(default_factory=list)  # meshward's distinct warnings, on failure
    elapsed_s: float = 0.0
    held: bool = False  # a Hold ran (it showed the summary itself)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": not self.failures,
            "failures": self.failures,
            "elapsed_s": round(self.elapsed_s, 2),
            "phases": self.phases,
            "services": self.services,
            "calls": self.calls,
            "top_alerts": self.top_alerts,
            "serve_log": self.serve_log,
        }


def _ext_authz(stats: dict[str, int], workload: str, what: str) -> int:
    return stats.get(f"http.inbound_{workload}.ext_authz.meshward.{what}", 0)


async def _start_shop(mesh: MiniMesh, apps: shop_mod.RunningShop) -> dict[str, int]:
    """Apps and sidecars, callees first (a caller's sidecar needs its callee's port)."""
    catalog_port = await shop_mod.serve_app(shop_mod.catalog_app(), apps, "catalog")
    payments_port = await shop_mod.start_payments(apps)
    await asyncio.gather(
        mesh.inbound("catalog", catalog_port), mesh.inbound("payments", payments_port, h2=True)
    )
    to_payments, _ = await asyncio.gather(
        mesh.outbound("orders", "payments"), mesh.outbound("catalog", "payments")
    )
    orders_port = await shop_mod.serve_app(
        shop_mod.orders_app(f"127.0.0.1:{to_payments.port}"), apps, "orders"
    )
    await mesh.inbound("orders", orders_port)
    to_catalog, to_orders = await asyncio.gather(
        mesh.outbound("web", "catalog"), mesh.outbound("web", "orders")
    )
    web_port = await shop_mod.serve_app(
        shop_mod.web_app(f"127.0.0.1:{to_catalog.port}", f"127.0.0.1:{to_orders.port}"),
        apps,
        "web",
    )
    await mesh.inbound("web", web_port)
    ingress = await mesh.outbound(INGRESS, "web", namespace=INGRESS_NS)
    ports = {name: sc.port for name, sc in mesh.sidecars.items()}
    ports["ingress->web"] = ingress.port
    return ports


async def _wait_tap_drained(mesh: MiniMesh, server: ServeProcess, timeout: float = 10.0) -> int:
    """Until meshward has taken every tap stream the sidecars opened; returns how many."""
    deadline = time.monotonic() + timeout
    while True:
        opened = 0
        for sc in mesh.sidecars.values():
            stats = await asyncio.to_thread(sc.stats)
            for key, value in stats.items():
                if key.endswith(".ext_proc.meshward_tap.streams_started"):
                    opened += value
                elif key.endswith(".ext_proc.meshward_tap.streams_failed"):
                    opened -= value
        metrics = await asyncio.to_thread(server.metrics)
        taken = int(metrics.get("meshward_tap_streams_total", 0))
        active = int(metrics.get("meshward_tap_streams_active", 0))
        if taken >= opened and active == 0:
            return taken
        if time.monotonic() > deadline:
            raise DemoError(f"meshward took {taken} of {opened} tap streams within {timeout:g}s")
        await asyncio.sleep(0.1)


async def _traffic(driver: Driver, calls: list[Call], console: Console, title: str) -> list[Result]:
    columns = (TextColumn(f"{title:<22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(title, total=len(calls))
        return await driver.run(calls, on_done=lambda _: progress.advance(task))


def _failed(results: list[Result]) -> list[Result]:
    return [r for r in results if not 200 <= r.status < 300]


def _describe(r: Result) -> str:
    c = r.call
    return f"{c.method} {c.path} via {c.via}: {r.status} {r.reason or r.detail[:80]}"


async def run_demo(config: DemoConfig, console: Console, hold: Hold | None = None) -> Outcome:
    """The whole demo; every process it starts is stopped before it returns or raises (after
    `hold`, when given and every expectation held, returns: the mesh is up while it runs)."""
    started = time.monotonic()
    out = Outcome()
    rng = random.Random(config.seed)
    tmp = make_workdir()
    workdir = Path(tmp.name)
    server = ServeProcess(workdir)
    mesh = MiniMesh(NAMESPACE, server, workdir)
    apps = shop_mod.RunningShop()
    try:
        console.rule("[bold]meshward demo: a shop in a mini-mesh")
        server.launch()
        await asyncio.to_thread(server.wait_ready)  # the sidecars need its ports
        ports = await _start_shop(mesh, apps)
        console.print(
            f"meshward serve up (authz :{server.authz_port}, tap :{server.tap_port}, "
            f"API {server.url}); {len(mesh.sidecars)} Envoy sidecars with mTLS "
            f"(SPIFFE identities), namespace [bold]{NAMESPACE}[/] in [cyan]learn[/]"
        )
        server.api("PUT", f"/api/v1/modes/{NAMESPACE}", {"mode": "learn"})
        async with Driver(ports, config.concurrency) as driver:
            # 1. learn
            learn = await _traffic(
                driver, normal_calls(rng, config.learn_requests), console, "learning (normal)"
            )
            bad = _failed(learn)
            out.phases["learn"] = {"requests": len(learn), "failed": len(bad)}
            if bad:
                out.failures.append(
                    f"{len(bad)} learning requests failed, e.g. {_describe(bad[0])}"
                )
                return out
            out.phases["learn"]["tap_streams"] = await _wait_tap_drained(mesh, server)
            learned = {
                name: sc.stats().get(f"http.inbound_{name}.downstream_rq_completed", 0)
                for name, sc in mesh.sidecars.items()
                if sc.direction == "inbound"
            }
            doc = server.api("GET", "/api/v1/allowlist")
            rules = {s.get("destination"): len(s.get("endpoints", [])) for s in doc["services"]}
            out.phases["learn"]["rules"] = {n: rules.get(f"{NAMESPACE}/{n}", 0) for n in SERVICES}
            empty = [n for n, count in out.phases["learn"]["rules"].items() if not count]
            if empty:
                out.failures.append(f"meshward learned no rules for {', '.join(empty)}")
                return out
            # 2. enforce: meshward's mode, and the sidecars re-rendered with ext_authz
            server.api("PUT", f"/api/v1/modes/{NAMESPACE}", {"mode": "enforce"})
            await mesh.set_mode("enforce")
            console.print(
                f"namespace [bold]{NAMESPACE}[/] switched to [red]enforce[/] "
                "(inbound sidecars re-rendered with ext_authz, failing closed)"
            )
            replay = await _traffic(
                driver, normal_calls(rng, config.replay_requests), console, "replay (normal)"
            )
            bad = _failed(replay)
            out.phases["replay"] = {"requests": len(replay), "failed": len(bad)}
            for r in bad[:5]:
                out.failures.append(f"normal request denied in enforce: {_describe(r)}")
            if len(bad) > 5:
                out.failures.append(f"... and {len(bad) - 5} more normal requests denied")
            # 3. attacks and novel calls, one by one
            hostile = [*attack_calls(), *novel_calls()]
            results = await _traffic(driver, hostile, console, "attacks and novel calls")
            out.phases["hostile"] = {"requests": len(results)}
            await asyncio.sleep(0.2)  # let the last alerts land
            alerts = server.api("GET", "/api/v1/alerts?limit=1000").get("alerts", [])
            by_request: dict[str, dict[str, Any]] = {}
            for a in sorted(alerts, key=_rank):  # the denial wins where a call has several
                by_request[a.get("request_id") or ""] = a
            for r in results:
                alert = by_request.get(r.call.request_id)
                threats = sorted({t["name"] for t in (alert or {}).get("threats", [])})
                out.calls.append(
                    {
                        "label": r.call.label,
                        "kind": r.call.kind,
                        "target": r.call.target,
                        "method": r.call.method,
                        "path": r.call.path,
                        "status": r.status,
                        "reason": r.reason,
                        "alert": bool(alert),
                        "threats": threats,
                        "reasons": (alert or {}).get("reasons", []),
                        "expect_threat": r.call.expect_threat,
                    }
                )
                if r.status != 403:
                    out.failures.append(f"{r.call.label} was not denied: {_describe(r)}")
                elif alert is None:
                    out.failures.append(f"{r.call.label} was denied but raised no alert")
            enforce_stats = {
                name: sc.stats() for name, sc in mesh.sidecars.items() if sc.direction == "inbound"
            }
            alert_count = Counter(a.get("destination", "") for a in alerts)
            # alerts raised by normal traffic are false positives: shown, and a failure
            normal_ids = {r.call.request_id for r in (*learn, *replay)}
            false = [a for a in alerts if a.get("request_id") in normal_ids]
            false_count = Counter(a.get("destination", "") for a in false)
            if false:
                kinds = Counter(_why(a) for a in false).most_common(3)
                out.failures.append(
                    f"{len(false)} alerts on normal traffic, e.g. "
                    + "; ".join(f"{n}x {why}" for why, n in kinds)
                )
            for name in SERVICES:
                stats = enforce_stats.get(name, {})
                out.services[name] = {
                    "learned_requests": learned.get(name, 0),
                    "learned_rules": out.phases["learn"]["rules"][name],
                    "allowed": _ext_authz(stats, name, "ok"),
                    "denied": _ext_authz(stats, name, "denied"),
                    "errors": _ext_authz(stats, name, "error"),
                    "alerts": alert_count.get(f"{NAMESPACE}/{name}", 0),
                    "false_alerts": false_count.get(f"{NAMESPACE}/{name}", 0),
                }
                if out.services[name]["errors"]:
                    out.failures.append(f"{name}: {out.services[name]['errors']} ext_authz errors")
            joins = await asyncio.to_thread(server.metrics, True)
            out.phases["both_ends"] = {
                outcome: int(joins.get(f'meshward_exchange_joins_total{{outcome="{outcome}"}}', 0))
                for outcome in ("joined", "mismatch")
            }
            ranked = sorted(alerts, key=_rank, reverse=True)
            out.top_alerts = [_alert_row(a) for a in ranked[:8]]
        _timed(out, started, config)  # the demo's own time, not the time held
        if hold is not None and not out.failures:
            out.held = True
            running = Running(
                server.url, workdir / "api-token", workdir / "meshward.db", ports["ingress->web"]
            )
            await hold(out, running)
    finally:
        if out.failures or out.services.get("web", {}).get("errors"):
            out.serve_log = _warnings(server.log_tail(200))
        mesh.stop()
        await apps.stop()
        server.stop()
        tmp.cleanup()
        out.elapsed_s = out.elapsed_s or time.monotonic() - started  # a phase failed early
    return out


def _timed(out: Outcome, started: float, config: DemoConfig) -> None:
    out.elapsed_s = time.monotonic() - started
    if out.elapsed_s > config.time_budget_s:
        out.failures.append(f"took {out.elapsed_s:.1f}s, over the {config.time_budget_s:g}s budget")


def _warnings(log_text: str, most: int = 5) -> list[str]:
    """meshward serve's distinct warning and error messages (JSON lines), for a failure report."""
    seen: dict[str, None] = {}
    for line in log_text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            doc = {"level": "error", "msg": line}
        if isinstance(doc, dict) and doc.get("level") in ("warning", "error", "critical"):
            text = " ".join(str(v) for k, v in doc.items() if k not in ("ts", "level", "logger"))
            seen.setdefault(text[:200], None)
    return list(seen)[-most:]


def _rank(a: dict[str, Any]) -> tuple[bool, float, float]:
    """Denials first, then by score, then the newest."""
    return (a.get("verdict") == "deny", float(a.get("score", 0)), float(a.get("time", 0)))


def _why(a: dict[str, Any]) -> str:
    names = [t.get("name", "") for t in a.get("threats", [])]
    return ", ".join(dict.fromkeys(names + list(a.get("reasons", [])))) or a.get("verdict", "")


def _alert_row(a: dict[str, Any]) -> dict[str, Any]:
    return {
        "verdict": a.get("verdict", ""),
        "destination": a.get("destination", ""),
        "source": a.get("source", ""),
        "request": f"{a.get('method', '')} {a.get('path', '')}",
        "why": _why(a),
        "score": a.get("score", 0),
    }


def print_summary(out: Outcome, console: Console) -> None:
    table = Table(title="per service (enforce phase: ext_authz decisions in the sidecars)")
    cols = ("service", "learned requests", "rules", "allowed", "denied", "alerts", "on normal")
    for col in cols:
        table.add_column(col, justify="left" if col == "service" else "right")
    for name, row in out.services.items():
        table.add_row(
            f"{NAMESPACE}/{name}",
            str(row["learned_requests"]),
            str(row["learned_rules"]),
            str(row["allowed"]),
            str(row["denied"]),
            str(row["alerts"]),
            str(row["false_alerts"]),
        )
    if out.services:
        console.print(table)
    calls = Table(title="attacks and novel calls")
    for col in ("call", "kind", "answer", "meshward says"):
        calls.add_column(col)
    for c in out.calls:
        answer = "[green]403 denied[/]" if c["status"] == 403 else f"[red]{c['status']}[/]"
        says = ", ".join(c["threats"] + c["reasons"]) or c["reason"] or "-"
        calls.add_row(c["label"], c["kind"], answer, says)
    if out.calls:
        console.print(calls)
    top = Table(title="top alerts (denials first, then by score)")
    for col in ("verdict", "destination", "source", "request", "why"):
        top.add_column(col, overflow="fold")
    for a in out.top_alerts:
        top.add_row(a["verdict"], a["destination"], a["source"], a["request"][:60], a["why"][:70])
    if out.top_alerts:
        console.print(top)
    phases = ", ".join(
        f"{k}: {v['requests']} requests" for k, v in out.phases.items() if "requests" in v
    )
    console.print(f"{phases}; {out.elapsed_s:.1f}s")
    if "both_ends" in out.phases:
        both = out.phases["both_ends"]
        console.print(
            f"calls seen from both ends (caller's outbound and callee's inbound sidecar, joined "
            f"by x-request-id): {both['joined']} matching, {both['mismatch']} mismatched"
        )
    if out.failures:
        console.print("[bold red]DEMO FAILED[/]")
        for f in out.failures:
            console.print(f"  - {f}")
        if out.serve_log:
            console.print("meshward serve said:")
            for line in out.serve_log:
                console.print(f"  {line}", markup=False)
    else:
        console.print(
            "[bold green]DEMO OK[/]: normal traffic allowed, every attack and novel "
            "call denied with 403 and alerted"
        )
        if not out.held:
            console.print(
                "Next: [bold]meshward demo --keep-running[/] (or make demo "
                "DEMO_ARGS=--keep-running) keeps the shop, its sidecars and meshward serve up to "
                "explore the dashboard and the alerts; Ctrl-C then stops everything. Without a "
                "cluster: the README's quick start (meshward learn, score, allowlist show)."
            )


def next_steps(running: Running, login: str) -> list[tuple[str, str]]:
    """What to try while the demo's mesh is kept up: (what, command or address)."""
    curl = f"curl -si -H 'host: shop.example.com' http://127.0.0.1:{running.ingress_port}"
    db = f"--db {running.db}"
    return [
        ("the dashboard", f"{login}  (one-time link, valid 60 s)"),
        (
            "a new link",
            f"meshward dashboard --url {running.url} --api-token-file {running.token_file}",
        ),
        ("an allowed call", f"{curl}/api/products/7"),
        ("an attack (403)", f"{curl}/api/search?q=%27%20OR%201%3D1--"),
        ("a novel call (403)", f"{curl}/api/admin/export"),
        ("the alerts", f"meshward alerts {db}"),
        ("the learned rules", f"meshward allowlist show {db}"),
        ("the modes", f"meshward mode get {db}"),
    ]
