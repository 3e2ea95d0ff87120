"""`meshward allowlist export --format authorizationpolicy|linkerd|openapi` from learned HAR."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_spec_validator import validate

from tests.support.cli import Result
from tests.support.openapi_traffic import Traffic
from tests.support.samples import har_entry, write_har

Run = Callable[..., Result]


def _har(path: Path, n: int = 400) -> Path:
    """The sample API's normal traffic as a HAR file, callers in `_source`."""
    traffic = Traffic(seed=3)
    entries = []
    for _ in range(n):
        obs = traffic.normal()
        url = f"http://{obs.authority}{obs.path}" + (f"?{obs.query}" if obs.query else "")
        body = obs.body.decode() if obs.body else None
        entries.append(
            har_entry(obs.method, url, body=body, source=obs.source.key, headers=dict(obs.headers))
        )
    return write_har(path, entries)


@pytest.fixture
def db(meshward: Run, tmp_path: Path) -> str:
    path = str(tmp_path / "m.db")
    assert meshward("learn", str(_har(tmp_path / "normal.har")), "--db", path).code == 0
    assert meshward("mode", "set", "shop", "monitor", "--db", path).code == 0
    return path


def _docs(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def test_authorizationpolicy(meshward: Run, db: str) -> None:
    r = meshward("allowlist", "export", "--format", "authorizationpolicy", "--db", db)
    assert r.code == 0, r.err
    assert r.out.startswith("# meshward allowlist export --format authorizationpolicy: 1 objects")
    (policy,) = _docs(r.out)
    assert policy["kind"] == "AuthorizationPolicy"
    assert policy["metadata"]["annotations"] == {"istio.io/dry-run": "true"}  # monitor
    paths = {
        p for rule in policy["spec"]["rules"] for t in rule["to"] for p in t["operation"]["paths"]
    }
    assert "/products/{*}/reviews" in paths
    again = meshward("allowlist", "export", "--format", "authorizationpolicy", "--db", db)
    assert again.out == r.out  # stable: reviewable, diffable
    flat = meshward(
        "allowlist",
        "export",
        "--format",
        "authorizationpolicy",
        "--no-path-templates",
        "--trust-domain",
        "corp.example",
        "--db",
        db,
    )
    assert "/products/*" in flat.out and "{*}" not in flat.out
    assert "corp.example/ns/shop/sa/web" in flat.out


def test_linkerd_to_a_file(meshward: Run, db: str, tmp_path: Path) -> None:
    out = tmp_path / "linkerd.yaml"
    r = meshward(
        "allowlist", "export", "--format", "linkerd", "--port", "8080", "-o", str(out), "--db", db
    )
    assert r.code == 0 and r.out == ""
    kinds = {d["kind"] for d in _docs(out.read_text())}
    assert kinds == {"Server", "HTTPRoute", "AuthorizationPolicy", "MeshTLSAuthentication"}


def test_openapi_for_one_destination(meshward: Run, db: str) -> None:
    r = meshward(
        "allowlist", "export", "--format", "openapi", "--destination", "shop/api", "--db", db
    )
    assert r.code == 0, r.err
    (doc,) = _docs(r.out)
    validate(doc)
    assert "/products/{param2}/reviews" in doc["paths"]


def test_notes_head_the_output_and_are_counted_on_stderr(meshward: Run, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "services": [
                    {
                        "destination": "api.example.com",
                        "endpoints": [{"method": "GET", "path": "/"}],
                    },
                    {
                        "destination": "shop/api",
                        "sources": ["shop/web"],
                        "endpoints": [
                            {"method": "GET", "path": "/a*", "sources": ["shop/web"]},
                            {"method": "GET", "path": "/b", "sources": ["shop/web"]},
                        ],
                    },
                ],
            }
        )
    )
    db = str(tmp_path / "m.db")
    assert meshward("allowlist", "import", str(rules), "--db", db).code == 0
    r = meshward("allowlist", "export", "--format", "authorizationpolicy", "--db", db)
    assert r.code == 0
    head = [line for line in r.out.splitlines() if line.startswith("#")]
    assert head[1].startswith("# not carried by this export (2)")
    assert "#   api.example.com: not a namespace/workload of Kubernetes names" in head
    assert any(line.startswith("#   shop/api GET /a*: left out") for line in head)
    assert "2 things not carried by authorizationpolicy" in r.err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--destination", "shop/nope"], "no allowlist for destination 'shop/nope'"),
        (["--trust-domain", "Not A Domain"], "not a SPIFFE trust domain"),
        (["--selector-label", "bad label"], "not a label key"),
        (["--port", "99999"], "not a port number or a port name"),
    ],
)
def test_bad_flags_are_one_line_errors(
    meshward: Run, db: str, flags: list[str], message: str
) -> None:
    r = meshward("allowlist", "export", "--format", "linkerd", *flags, "--db", db)
    assert r.code == 2 and message in r.err and r.out == ""


def test_unknown_format_is_refused(meshward: Run, db: str) -> None:
    r = meshward("allowlist", "export", "--format", "kyverno", "--db", db)
    assert r.code == 2 and "invalid choice" in r.err


def test_destination_narrows_the_allowlist_document_too(meshward: Run, db: str) -> None:
    r = meshward("allowlist", "export", "--destination", "shop/api", "--db", db)
    assert [s["destination"] for s in yaml.safe_load(r.out)["services"]] == ["shop/api"]
    r = meshward("allowlist", "export", "--format", "json", "--destination", "x/y", "--db", db)
    assert r.code == 2 and "no allowlist for destination 'x/y'" in r.err
