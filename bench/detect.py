"""Threat detection benchmark: detection and false-positive rates, and time per request.

One run prints, per sensitivity level:
- per threat class, the detection rate on ../shared/data/payloads/* with each payload placed in
  a query value (URL-encoded), a JSON body field and a header (user-agent);
- per class, the detection rate on the attack rows of httpparams/payload_train.csv, and the
  false-positive rate on its `norm` rows, placed the same way;
- the false-positive rate on 20,000 normal requests of the engine's OpenAPI sample traffic, and
  on 20,000 lines of English technical prose (Python stdlib comments) in a JSON field;
and then the time per typical request (1 KB JSON body, 10 headers) against a baseline of
normalisation alone (decode every value the detector would look at, match nothing).

A payload counts as detected in a placement when a threat of its class is reported there
("any" columns: any threat at all). Blank lines and comment lines ("# " at the start) of the
payload lists are not payloads and are skipped; duplicates are counted once.

Run: .venv/bin/python bench/detect.py [--levels 1,2,3] [--show N]
Data: $MESHWARD_SHARED, else ../shared/data next to the repository.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from meshward.bodies import decode_body, parse_query
from meshward.observation import Observation
from meshward.threats import ThreatDetector
from meshward.threats.normalise import alternate, normalise

CLASSES = {
    "sqli": "SQL.Injection",
    "xss": "Cross.Site.Scripting",
    "cmdi": "Command.Injection",
    "traversal": "Path.Traversal",
    "path-traversal": "Path.Traversal",
    "nosql": "NoSQL.Injection",
    "ssti": "Template.Injection",
}
PLACEMENTS = ("query", "json", "header")


def shared_data() -> Path:
    env = os.environ.get("MESHWARD_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def place(payload: str, where: str) -> Observation:
    """An Observation carrying the payload in one place, as a client library would send it."""
    if where == "query":
        return Observation("file", method="GET", path="/search", query="q=" + quote(payload, ""))
    if where == "json":
        return Observation(
            "file",
            method="POST",
            path="/api/items",
            headers=[("content-type", "application/json")],
            body=json.dumps({"name": "widget", "q": payload}).encode(),
        )
    value = "".join(c if c >= " " and c != "\x7f" else " " for c in payload)  # headers: no CTLs
    return Observation("file", method="GET", path="/", headers=[("user-agent", value)])


def load_payloads(root: Path) -> tuple[dict[str, list[str]], int]:
    """Unique payload lines per class, and how many blank/comment lines were skipped."""
    out: dict[str, list[str]] = {}
    skipped = 0
    for folder in sorted((root / "payloads").iterdir()):
        if not folder.is_dir() or folder.name not in CLASSES:
            continue
        seen: dict[str, None] = {}
        for f in sorted(folder.iterdir()):
            for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
                if not line.strip() or line.startswith("# "):
                    skipped += 1
                    continue
                seen.setdefault(line, None)
        out[folder.name] = list(seen)
    return out, skipped


def load_httpparams(root: Path) -> tuple[dict[str, list[str]], list[str]]:
    attacks: dict[str, list[str]] = {}
    norm: list[str] = []
    with (root / "httpparams" / "payload_train.csv").open(encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["attack_type"] == "norm":
                norm.append(row["payload"])
            else:
                attacks.setdefault(row["attack_type"], []).append(row["payload"])
    return attacks, norm


def rates(det: ThreatDetector, payloads: list[str], want: str | None) -> dict[str, float]:
    """Share of payloads with a threat (of class `want`, or any) per placement."""
    hits = dict.fromkeys(PLACEMENTS, 0)
    anyhits = dict.fromkeys(PLACEMENTS, 0)
    for p in payloads:
        for where in PLACEMENTS:
            threats = det.inspect(place(p, where)).threats
            anyhits[where] += bool(threats)
            hits[where] += any(t.name == want for t in threats)
    n = max(len(payloads), 1)
    out = {w: 100.0 * hits[w] / n for w in PLACEMENTS}
    out.update({f"any-{w}": 100.0 * anyhits[w] / n for w in PLACEMENTS})
    return out


def misses(det: ThreatDetector, payloads: list[str], want: str, where: str) -> list[str]:
    return [
        p for p in payloads if not any(t.name == want for t in det.inspect(place(p, where)).threats)
    ]


def print_table(
    title: str, rows: list[tuple[str, int, dict[str, float]]], fp: bool = False
) -> None:
    print(f"\n{title}")
    cols = "query   json  header | any:query   json  header"
    print(f"  {'class':<16}{'n':>6}  {cols}")
    for name, n, r in rows:
        mark = ""
        if not fp and min(r[w] for w in PLACEMENTS) < 95.0:
            mark = "  < 95%"
        if fp and max(r[f"any-{w}"] for w in PLACEMENTS) > 0.5:
            mark = "  > 0.5%"
        print(
            f"  {name:<16}{n:>6}  "
            + "  ".join(f"{r[w]:5.1f}" for w in PLACEMENTS)
            + " | "
            + "  ".join(f"{r['any-' + w]:{8 if fp else 5}.{2 if fp else 1}f}" for w in PLACEMENTS)
            + mark
        )


def api_false_positives(det: ThreatDetector, n: int = 20_000) -> tuple[int, int]:
    """Normal requests of the engine's OpenAPI sample API (paths, queries, JSON bodies)."""
    from tests.engine.openapi_traffic import Traffic

    traffic = Traffic(seed=3)
    return n, sum(1 for _ in range(n) if det.inspect(traffic.normal()).threats)


def prose_lines(limit: int = 20_000) -> list[str]:
    """Comment and docstring lines of Python's standard library: free text with quotes, code
    words and punctuation, harsher than form values (a free-text field's worst case)."""
    out: list[str] = []
    for f in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        for line in f.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if line.startswith("#"):
                line = line.lstrip("# ")
            elif not (line[:1].isalpha() and " " in line and not re.search(r"[=(){}\[\]]", line)):
                continue
            if 20 < len(line) < 200:
                out.append(line)
                if len(out) >= limit:
                    return out
    return out


def prose_false_positives(det: ThreatDetector) -> tuple[int, int, dict[str, int]]:
    """(lines, lines with a finding, findings by threat name)."""
    lines = prose_lines()
    by_name: dict[str, int] = {}
    flagged = 0
    for line in lines:
        threats = det.inspect(place(line, "json")).threats
        flagged += bool(threats)
        for t in threats:
            by_name[t.name] = by_name.get(t.name, 0) + 1
    return len(lines), flagged, by_name


def typical_request() -> Observation:
    """1 KB JSON body, 10 headers, as one service calls another in a mesh."""
    body = json.dumps(
        {
            "order": {
                "id": 12345,
                "customer": {"name": "Alice Smith", "email": "alice@example.com",
                             "phone": "+1 555 0100", "tier": "gold"},
                "items": [
                    {"sku": f"SKU-{i:04d}", "qty": i + 1, "price": 9.99, "title": "Blue widget M"}
                    for i in range(11)
                ],
                "shipping": {"street": "12 Harbour Road", "city": "Leith", "zip": "EH6 6LX"},
                "note": "Leave at the door please",
                "currency": "EUR",
            }
        }
    ).encode()
    headers = [
        ("host", "orders.shop.svc.cluster.local"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                       "Chrome/120.0.0.0 Safari/537.36"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXZhbHVl"),
        ("x-request-id", "7f3c9a2e-1b1d-4c1e-9a51-2b8f0f6d3c11"),
        ("cookie", "sid=3f9a2c; theme=dark"),
    ]
    return Observation("file", method="POST", path="/api/v1/orders/12345",
                       query="page=2&sort=desc", headers=headers, body=body)


def normalise_only(obs: Observation) -> int:
    """Baseline: decode and normalise every value the detector could look at, match nothing."""
    n = len(normalise(obs.path))
    pairs, _ = parse_query(obs.query)
    for k, v in pairs:
        n += len(normalise(k)) + len(normalise(v))
    for _, v in obs.headers:
        n += len(alternate(normalise(v)))
    body = decode_body(obs.header("content-type"), obs.body)
    for _, v in body.fields:
        if isinstance(v, str):
            n += len(alternate(normalise(v)))
    return n


def per_call_us(
    fn: Callable[[], object], number: int = 2000, repeat: int = 15
) -> tuple[float, float]:
    """(median, min) µs per call over `repeat` batches: the machine is shared and noisy."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number * 1e6)
    return statistics.median(times), min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--levels", default="1,2,3", help="sensitivity levels to measure")
    ap.add_argument("--show", type=int, default=0, help="print up to N misses per class (level 1)")
    args = ap.parse_args()
    root = shared_data()
    if not (root / "payloads").is_dir():
        print(f"no data at {root} (set MESHWARD_SHARED)", file=sys.stderr)
        return 2
    payloads, skipped = load_payloads(root)
    attacks, norm = load_httpparams(root)
    print(f"data: {root}")
    print(f"payload lists: {sum(map(len, payloads.values()))} unique payloads, "
          f"{skipped} blank/comment lines skipped; httpparams: "
          f"{sum(map(len, attacks.values()))} attack rows, {len(norm)} norm rows")
    for level in [int(x) for x in args.levels.split(",")]:
        det = ThreatDetector(level=level)
        print(f"\n=== level {level} ===")
        print_table(
            "payloads/* detection % (threat of the class | any threat)",
            [(CLASSES[c], len(p), rates(det, p, CLASSES[c])) for c, p in payloads.items()],
        )
        print_table(
            "httpparams attack rows detection % (threat of the class | any threat)",
            [(f"{c} ({CLASSES[c][:10]})", len(p), rates(det, p, CLASSES[c]))
             for c, p in sorted(attacks.items())],
        )
        print_table("httpparams norm rows false positives % (any threat)",
                    [("norm", len(norm), rates(det, norm, None))], fp=True)
        n, fps = api_false_positives(det)
        print(f"\nengine OpenAPI sample traffic (tests/engine): {fps} of {n} normal requests "
              f"with a threat ({100.0 * fps / n:.2f}%)")
        n, flagged, by_name = prose_false_positives(det)
        print(f"English technical prose (stdlib comments) in a JSON field: {flagged} of {n} lines "
              f"with a finding ({100.0 * flagged / max(n, 1):.2f}%): "
              + ", ".join(f"{k} {v}" for k, v in sorted(by_name.items(), key=lambda kv: -kv[1])))
        if args.show and level == 1:
            for c, p in [*payloads.items(), *attacks.items()]:
                for where in PLACEMENTS:
                    missed = misses(det, p, CLASSES[c], where)
                    for m in missed[: args.show]:
                        print(f"  miss {c}/{where}: {m[:150]!r}")
            for p in norm:
                for where in PLACEMENTS:
                    found = det.inspect(place(p, where)).threats
                    if found:
                        print(f"  fp {where}: {p[:80]!r} -> {found[0].name} {found[0].evidence!r}")
    obs = typical_request()
    det = ThreatDetector(level=1)
    assert not det.inspect(obs).threats, "typical request must be clean"
    print(f"\n=== time per typical request ({len(obs.body)} B JSON body, {len(obs.headers)} "
          "headers), one core ===")
    base = per_call_us(lambda: normalise_only(obs))
    for level in (1, 2, 3):
        d = ThreatDetector(level=level)
        med, low = per_call_us(lambda d=d: d.inspect(obs))
        print(f"  level {level} detector     median {med:6.2f} µs  min {low:6.2f} µs  "
              f"ratio to baseline {med / base[0]:.2f}")
    print(f"  normalisation only   median {base[0]:6.2f} µs  min {base[1]:6.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
