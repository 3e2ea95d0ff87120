"""The dashboard's graph in headless Chromium: layout time and frame times while panning.

A real `meshward serve` (in-process, loopback) holding an allowlist of N services in 10
namespaces, each called by 4 others (4N edges, each with one endpoint); the dashboard
(cytoscape.js, fcose layout: `draft` quality past 200 nodes) logged in with the `/#token=`
link in Debian's chromium (Playwright). Measured, per round:

  layout   the page's own figure: the fcose layout's run (ms; past 200 nodes on a headless core)
  drawn    the page's own figure: from the graph fetched to laid out and placed on the drawn
           core (ms)
  painted  the page's own figure: from the graph fetched to cytoscape's first frame rendered
           (its `render` event): what "drawn on screen" means (ms)
  load     from the login link to the graph painted and the table filled: login, fetch,
           layout, first frame, table (ms)
  pan      requestAnimationFrame deltas while the graph is panned 3 s: by `cy.panBy` every
           frame, and by a real mouse drag (Playwright's mouse, 120 moves); p50 and p95 (ms)

The baseline, in the same run and browser, is a 50-service / 200-edge graph; printed: the
figures of both, the spread over rounds, and the ratios large/baseline and to the goals
(layout < 1 s, pan p95 <= 50 ms). Headless Chromium renders on the CPU (--disable-gpu).

    PYTHONPATH=. .venv/bin/python bench/dashboard.py [--services 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

from meshward.core.engine import Engine
from meshward.core.threats.inspection import NoDetector
from tests.support import browser
from tests.support.serve import API_TOKEN

NAMESPACES = 10
CALLERS = 4
RECORD = """async ([seconds, pan]) => {
  const cy = window.meshward.cy, deltas = [];
  let last = performance.now(), end = last + seconds * 1000;
  await new Promise((done) => {
    const tick = (t) => {
      deltas.push(t - last); last = t;
      if (pan) cy.panBy({x: 6, y: 2});
      if (t < end && window.meshwardRecording !== false) requestAnimationFrame(tick); else done();
    };
    requestAnimationFrame(tick);
  });
  return deltas.slice(1);
}"""


def allowlist(services: int) -> dict[str, Any]:
    names = [f"ns{i % NAMESPACES}/svc{i}" for i in range(services)]
    out = []
    for i, name in enumerate(names):
        callers = {names[(i + k * 7 + 1) % services]: {"count": 3} for k in range(CALLERS)}
        used = dict.fromkeys(callers, 3)
        rule = {"method": "GET", "path": f"/v1/items{i}/{{int}}", "sources": used, "count": 3}
        out.append({"destination": name, "sources": callers, "endpoints": [rule]})
    return {"version": 1, "services": out}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(chromium: Any, services: int) -> dict[str, float]:
    engine = Engine(detector=NoDetector())
    engine.allowlist.import_doc(allowlist(services))
    with browser.serve_in_thread(engine=engine) as (srv, _):
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        started = time.perf_counter()
        page.goto(f"http://127.0.0.1:{srv.ports['http']}/#token={API_TOKEN}")
        page.wait_for_selector("body[data-graph=ready][data-table=ready]", timeout=60_000)
        page.wait_for_function("() => window.meshward.paintedMs != null", timeout=60_000)
        load = (time.perf_counter() - started) * 1000
        drawn = page.evaluate(
            "() => [window.meshward.cy.nodes().length, window.meshward.cy.edges().length]"
        )
        assert drawn == [services, services * CALLERS], drawn
        layout, drawn_ms, painted = page.evaluate(
            "() => [window.meshward.layoutMs, window.meshward.drawnMs, window.meshward.paintedMs]"
        )
        panned = page.evaluate(RECORD, [3, True])
        # a real drag across the graph while frames are recorded
        box = page.locator("#graph").bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.evaluate("() => { window.meshwardRecording = true; }")
        recording = page.evaluate_handle(f"({RECORD})([30, false])")
        page.mouse.move(x, y)
        page.mouse.down()
        for step in range(120):
            page.mouse.move(x + 200 * ((step % 40) / 40 - 0.5), y + (step % 20) * 3)
        page.mouse.up()
        page.evaluate("() => { window.meshwardRecording = false; }")
        dragged = recording.json_value()
        context.close()
    return {
        "layout": layout,
        "drawn": drawn_ms,
        "painted": painted,
        "load": load,
        "pan p50": pct(panned, 0.5),
        "pan p95": pct(panned, 0.95),
        "drag p50": pct(dragged, 0.5),
        "drag p95": pct(dragged, 0.95),
        "frames": len(panned) + len(dragged),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=500)
    parser.add_argument("--baseline", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    why = browser.missing()
    if why:
        print(f"skipped: {why}")
        return 0
    runs: dict[int, list[dict[str, float]]] = {args.services: [], args.baseline: []}
    with browser.chromium() as chromium:
        for _ in range(args.rounds):  # interleaved: the machine is shared and noisy
            for n in (args.baseline, args.services):
                runs[n].append(measure(chromium, n))
    keys = ["layout", "drawn", "painted", "load", "pan p50", "pan p95", "drag p50", "drag p95"]
    print(f"{'graph':>22} " + " ".join(f"{k:>18}" for k in keys))
    med: dict[int, dict[str, float]] = {}
    for n, rs in runs.items():
        med[n] = {k: statistics.median(r[k] for r in rs) for k in keys}
        cells = [
            f"{med[n][k]:7.1f} ({min(r[k] for r in rs):.0f}-{max(r[k] for r in rs):.0f})"
            for k in keys
        ]
        label = f"{n} svc / {n * CALLERS} edges"
        print(f"{label:>22} " + " ".join(f"{c:>18}" for c in cells))
    big, base = med[args.services], med[args.baseline]
    print(f"ms, median of {args.rounds} rounds (min-max)")
    print("large/baseline: " + ", ".join(f"{k} {big[k] / max(base[k], 0.001):.2f}x" for k in keys))
    print(
        f"goals: layout {big['layout']:.0f} ms / 1000 ms = {big['layout'] / 1000:.2f} "
        f"(drawn {big['drawn']:.0f} ms / 1000 ms = {big['drawn'] / 1000:.2f}, painted "
        f"{big['painted']:.0f} ms / 1000 ms = {big['painted'] / 1000:.2f}); "
        f"pan p95 {big['pan p95']:.1f} ms / 50 ms = {big['pan p95'] / 50:.2f}; "
        f"drag p95 {big['drag p95']:.1f} ms / 50 ms = {big['drag p95'] / 50:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
