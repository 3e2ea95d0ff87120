"""What `meshward allowlist export` (YAML) costs through libyaml's C emitter
(meshward.formats.yamlout) against PyYAML's pure-Python emitter, the baseline, measured in the
same run on the same document: an allowlist of `--services` services x 20 rules (bench/exports.py's
synthetic one). Printed: median ms over `--rounds` (interleaved), spread, the ratio, and whether
the two texts are byte-identical.

    PYTHONPATH=. .venv/bin/python bench/yaml_export.py [--rounds 5] [--services 500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.exports import synthetic  # noqa: E402
from meshward.formats import yamlout  # noqa: E402


class _Pure(yaml.SafeDumper):
    """The emitter the export used before: pure Python, same representers."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Pure.add_representer(list, yamlout.FlatListDumper.yaml_representers[list])


def pure(doc: Any) -> str:
    out: str = yaml.dump(doc, Dumper=_Pure, sort_keys=False, allow_unicode=True, width=100)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--services", type=int, default=500)
    args = ap.parse_args()
    doc = synthetic(args.services).allowlist.export_doc()
    runs = {
        "pure-Python (baseline)": pure,
        "yamlout (libyaml)": lambda d: yamlout.dump(d, flat_lists=True),
    }
    ms: dict[str, list[float]] = {n: [] for n in runs}
    texts: dict[str, str] = {}
    names = list(runs)
    for r in range(args.rounds):
        for n in names[r % 2 :] + names[: r % 2]:
            t0 = time.perf_counter()
            texts[n] = runs[n](doc)
            ms[n].append((time.perf_counter() - t0) * 1000)
    base = statistics.median(ms[names[0]])
    print(
        f"allowlist export (YAML), {args.services} services x 20 rules, "
        f"{len(texts[names[0]]) / 1e6:.2f} MB, {args.rounds} rounds, C emitter: {yamlout.C_EMITTER}"
    )
    for n, ts in ms.items():
        med = statistics.median(ts)
        print(f"  {n:24s} {med:8.1f} ms  [{min(ts):.1f}-{max(ts):.1f}]  {med / base:5.3f}x")
    print(f"  byte-identical: {texts[names[0]] == texts[names[1]]}")


if __name__ == "__main__":
    main()
