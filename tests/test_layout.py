"""The package's shape: one top-level import name, every module in the import graph, a core
that does no I/O. These hold what import-linter and the type checker rely on (docs/architecture.md).
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = ("extauthz", "tap", "istio", "linkerd")  # the card's top-level folders, as meshward.*


def _modules_on_disk(folder: str) -> set[str]:
    base = ROOT / folder
    names = set()
    for path in base.rglob("*.py"):
        parts = path.relative_to(base).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.add(".".join(("meshward", folder, *parts)))
    return names


def test_mapped_folders_are_symlinks_into_the_package() -> None:
    for name in MAPPED:
        link = ROOT / "meshward" / name
        assert link.is_symlink(), f"meshward/{name} must be a symlink to ../{name}"
        assert link.resolve() == (ROOT / name).resolve()


def test_import_graph_holds_every_mapped_module() -> None:
    graph = grimp.build_graph("meshward", cache_dir=None)
    for folder in MAPPED:
        missing = _modules_on_disk(folder) - graph.modules
        assert not missing, f"modules import-linter cannot see: {sorted(missing)}"


def test_core_reads_no_environment_and_opens_no_network() -> None:
    """What import-linter cannot say about stdlib submodules: no urllib.request or
    http.client, no os.environ or getenv, no open() for writing in the core."""
    bad = []
    for path in (ROOT / "meshward" / "core").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = (
                    [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else [a.name for a in node.names]
                )
                bad += [
                    f"{path}: import {n}"
                    for n in names
                    if n.startswith(("urllib.request", "http.client", "os"))
                ]
            elif isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
                bad.append(f"{path}:{node.lineno}: {node.attr}")
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "open":
                bad.append(f"{path}:{node.lineno}: open()")
    assert not bad, "\n".join(bad)


@pytest.mark.integration
def test_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    """A wheel built from the checkout puts exactly `meshward` into site-packages; outside the
    repository `import tap` fails and `import meshward.tap` works."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("meshward-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        tops = {
            n.split("/", 1)[0]
            for n in zf.namelist()
            if not n.split("/", 1)[0].endswith(".dist-info")
        }
        assert tops == {"meshward"}, tops
        assert any(n.startswith("meshward/tap/node/flows.py") for n in zf.namelist())
        if (ROOT / "meshward/app/static/dashboard/dashboard.js").exists():  # make dashboard
            assert "meshward/app/static/dashboard/dashboard.js" in zf.namelist()
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import importlib, sys\n"
        "import meshward, meshward.tap.node.flows, meshward.extauthz.convert\n"
        f"assert meshward.__file__.startswith({str(target)!r}), meshward.__file__\n"
        "for name in ('tap', 'extauthz', 'istio', 'linkerd'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError:\n"
        "        continue\n"
        "    sys.exit(f'import {name} worked outside the repository')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
