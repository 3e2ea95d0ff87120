"""meshward learn / score / allowlist / mode, end to end through the CLI entry point."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from meshward.app.commands import offline
from meshward.app.store import open_store
from meshward.core.observation import Observation, Threat
from tests.support.cli import Result
from tests.support.samples import har_entry, tap_trace, write_har

Run = Callable[..., Result]
API = "http://api.shop.svc.cluster.local"


def _train(tmp_path: Path) -> Path:
    entries = []
    for i in range(60):
        entries.append(har_entry("GET", f"{API}/users/{i}?verbose=1", source="web/front"))
        entries.append(
            har_entry(
                "POST",
                f"{API}/users/{i}/orders",
                source="web/front",
                status=201,
                body=json.dumps({"item": i, "qty": 2}),
                headers={"content-type": "application/json"},
            )
        )
    entries.append(har_entry("GET", f"{API}/users/1?id=1%27%20OR%201=1--", source="web/front"))
    entries.append("not an entry")
    return write_har(tmp_path / "train.har", entries)


def _test_input(tmp_path: Path) -> Path:
    return write_har(
        tmp_path / "test.har",
        [
            har_entry("GET", f"{API}/users/999?verbose=1", source="web/front"),
            {"request": "broken"},
            har_entry("GET", f"{API}/admin", source="web/front"),
            har_entry(
                "POST",
                f"{API}/users/5/orders",
                source="evil/x",
                body='{"item": 1, "qty": 2, "admin": true}',
                headers={"content-type": "application/json"},
            ),
        ],
    )


def _dump(db: Path) -> list[tuple[object, ...]]:
    con = sqlite3.connect(db)
    try:
        return [
            *con.execute("SELECT destination, doc FROM profiles ORDER BY destination"),
            *con.execute("SELECT * FROM alerts"),
        ]
    finally:
        con.close()


def test_learn_then_score(meshward: Run, tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    r = meshward("learn", str(_train(tmp_path)), "--db", str(db))
    assert r.code == 0, r.err
    assert r.out.strip() == (
        f"learned 120 requests, skipped 1 (carrying threats), 1 bad entry; "
        f"allowlist: 1 service, 2 rules ({db})"
    )
    assert r.err.strip() == (
        f"meshward learn: skipped {tmp_path / 'train.har'}: entry 122: "
        "entry must be an object, not str"
    )
    before = _dump(db)
    r = meshward("score", str(_test_input(tmp_path)), "--db", str(db), "--mode", "enforce")
    assert r.code == 0
    lines = [json.loads(x) for x in r.out.splitlines()]
    assert len(lines) == 3  # one per request, the broken entry is skipped
    for d in lines:
        assert set(d) >= {"verdict", "score", "reasons", "threats", "destination", "source"}
        assert 0.0 <= d["score"] <= 1.0
    assert lines[0]["verdict"] == "allow" and lines[0]["rule"] == "GET /users/{int}"
    assert lines[1]["verdict"] == "deny" and "unknown-path" in lines[1]["reasons"]
    assert lines[2]["verdict"] == "deny" and "unknown-source" in lines[2]["reasons"]
    assert lines[2]["source"] == "evil/x" and lines[2]["destination"] == "shop/api"
    assert "entry 2: request must be an object" in r.err
    assert "3 requests (1 allow, 0 alert, 2 deny), 1 bad entry" in r.err
    assert _dump(db) == before  # score learns nothing and stores no alert


def test_threats_written_in_inputs_are_not_trusted(
    meshward: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A threat an input claims for a request is dropped and the engine judges it, as serve
    does with what it is sent: it cannot keep a request from being learned, nor make `score`
    alert on a clean one; a real attack is still found. (The HAR and tap readers build no
    threats today; the rule sits at the door every offline input goes through.)"""
    real = offline.read_observations

    def claiming(
        paths: list[str], progress: Callable[[int], None] | None = None
    ) -> Iterator[object]:
        for item in real(paths, progress):
            if isinstance(item, Observation):
                item = dataclasses.replace(item, threats=[Threat("SQL.Injection", "path", "x")])
            yield item

    monkeypatch.setattr(offline, "read_observations", claiming)
    db = str(tmp_path / "m.db")
    r = meshward("learn", str(_train(tmp_path)), "--db", db)
    assert r.code == 0, r.err
    assert r.out.startswith("learned 120 requests, skipped 1 (carrying threats)")  # the real SQLi
    assert "ignored 121 threats written in the input" in r.err
    r = meshward("score", str(_test_input(tmp_path)), "--db", db, "--mode", "monitor")
    lines = [json.loads(x) for x in r.out.splitlines()]
    assert lines[0]["verdict"] == "allow" and lines[0]["threats"] == []
    attack = har_entry("GET", f"{API}/users/1?id=1%27%20OR%201=1--", source="web/front")
    r = meshward("score", str(write_har(tmp_path / "sqli.har", [attack])), "--db", db)
    (found,) = [json.loads(x) for x in r.out.splitlines()]
    assert [t["location"] for t in found["threats"]] == ["query:id"]  # found, not the claim


def test_score_lines_say_which_request_they_judge(meshward: Run, tmp_path: Path) -> None:
    """Each line names the file, the entry (numbered as the skip messages number a bad one:
    the broken entry 2 is skipped, the next line is entry 3), the method and the redacted path;
    the verdict's fields follow unchanged. JSON Lines taps are numbered by line."""
    db = str(tmp_path / "m.db")
    meshward("learn", str(_train(tmp_path)), "--db", db)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlcw"
    extra = har_entry("GET", f"{API}/reset/{jwt}", source="web/front")
    test = _test_input(tmp_path)
    doc = json.loads(test.read_text())
    doc["log"]["entries"].append(extra)
    test.write_text(json.dumps(doc))
    r = meshward("score", str(test), "--db", db, "--mode", "enforce")
    lines = [json.loads(x) for x in r.out.splitlines()]
    where = [(d["file"], d["entry"], d["method"], d["path"]) for d in lines]
    assert where == [
        (str(test), 1, "GET", "/users/999"),
        (str(test), 3, "GET", "/admin"),
        (str(test), 4, "POST", "/users/5/orders"),
        (str(test), 5, "GET", "/reset/[redacted:jwt]"),
    ]
    assert jwt not in r.out
    assert list(lines[0])[:5] == ["file", "entry", "method", "path", "verdict"]
    assert "entry 2: request must be an object" in r.err
    taps = tmp_path / "taps.jsonl"
    taps.write_text(f"{json.dumps(tap_trace('GET', '/users/1'))}\n{{oops\n")
    taps.write_text(taps.read_text() + json.dumps(tap_trace("GET", "/users/2")) + "\n")
    r = meshward("score", str(taps), "--db", db)
    assert [json.loads(x)["entry"] for x in r.out.splitlines()] == [1, 3]
    assert f"{taps}: line 2: invalid JSON" in r.err


def test_score_uses_stored_modes(meshward: Run, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    meshward("learn", str(_train(tmp_path)), "--db", db)
    test = str(_test_input(tmp_path))
    verdicts = [
        json.loads(x)["verdict"] for x in meshward("score", test, "--db", db).out.split("\n") if x
    ]
    assert verdicts == ["allow", "allow", "allow"]  # learn mode never blocks
    assert meshward("mode", "set", "shop", "monitor", "--db", db).code == 0
    r = meshward("score", test, "--db", db)
    assert [json.loads(x)["verdict"] for x in r.out.splitlines()] == ["allow", "alert", "alert"]
    assert {json.loads(x)["mode"] for x in r.out.splitlines()} == {"monitor"}


def test_tap_input_and_bad_lines(meshward: Run, tmp_path: Path) -> None:
    p = tmp_path / "taps.jsonl"
    good = [json.dumps(tap_trace("GET", f"/items/{i}")) for i in range(20)]
    p.write_text("\n".join([*good[:10], "{oops", json.dumps({"kind": 1}), *good[10:]]) + "\n")
    db = str(tmp_path / "m.db")
    r = meshward("learn", str(p), "--db", db)
    assert r.code == 0
    assert r.out.startswith("learned 20 requests, skipped 0 (carrying threats), 2 bad entries;")
    assert f"{p}: line 11: invalid JSON" in r.err and f"{p}: line 12: not an Envoy" in r.err
    r = meshward("score", str(p), "--db", db, "--mode", "enforce")
    assert [json.loads(x)["verdict"] for x in r.out.splitlines()] == ["allow"] * 20


def test_usage_errors(meshward: Run, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    har = str(_train(tmp_path))
    r = meshward("learn", har, str(tmp_path / "nope.har"), "--db", db)
    assert r.code == 2 and r.err.strip() == f"meshward learn: {tmp_path / 'nope.har'}: no such file"
    assert not (tmp_path / "m.db").exists()  # nothing was processed
    assert meshward("learn", str(tmp_path), "--db", db).code == 2
    r = meshward("score", har, "--db", db)
    assert r.code == 2 and "no database at" in r.err
    r = meshward("score", har, "--mode", "block")
    assert r.code == 2 and "invalid choice" in r.err
    assert meshward("learn").code == 2
    notdb = tmp_path / "x.db"
    notdb.write_text("hello" * 1000)
    r = meshward("learn", har, "--db", str(notdb))
    assert r.code == 2 and "not a meshward database" in r.err


def test_nothing_readable_exits_1(meshward: Run, tmp_path: Path) -> None:
    p = tmp_path / "junk.har"
    p.write_text("this is not json")
    r = meshward("learn", str(p), "--db", str(tmp_path / "m.db"))
    assert r.code == 1 and "not a JSON object" in r.err


def test_env_db(meshward: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESHWARD_DB", str(tmp_path / "env" / "m.db"))
    assert meshward("learn", str(_train(tmp_path))).code == 0
    with open_store(str(tmp_path / "env" / "m.db")) as s:
        assert list(s.load_profiles()) == ["shop/api"]


def test_allowlist_export_import_roundtrip(meshward: Run, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    meshward("learn", str(_train(tmp_path)), "--db", db)
    y1 = meshward("allowlist", "export", "--db", db).out
    assert meshward("allowlist", "export", "--db", db).out == y1  # stable
    doc = yaml.safe_load(y1)
    assert doc["services"][0]["destination"] == "shop/api"
    assert [e["path"] for e in doc["services"][0]["endpoints"]] == [
        "/users/{int}",
        "/users/{int}/orders",
    ]
    j = meshward("allowlist", "export", "--format", "json", "--db", db).out
    assert json.loads(j) == doc

    # a human removes one rule and adds one, then replaces the stored allowlists
    doc["services"][0]["endpoints"] = [
        doc["services"][0]["endpoints"][0],
        {"method": "DELETE", "path": "/users/{int}", "sources": ["web/admin"]},
    ]
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(doc))
    r = meshward("allowlist", "import", str(edited), "--replace", "--db", db)
    assert r.code == 0 and "1 services (2 rules)" in r.out
    again = yaml.safe_load(meshward("allowlist", "export", "--db", db).out)
    assert sorted((e["method"], e["path"]) for e in again["services"][0]["endpoints"]) == [
        ("DELETE", "/users/{int}"),
        ("GET", "/users/{int}"),
    ]
    out = tmp_path / "out.yaml"
    assert meshward("allowlist", "export", "-o", str(out), "--db", db).code == 0
    assert yaml.safe_load(out.read_text()) == again

    # merge: another service arrives, the first stays
    other = {
        "version": 1,
        "services": [
            {"destination": "pay/api", "endpoints": [{"method": "POST", "path": "/charge"}]}
        ],
    }
    (tmp_path / "other.json").write_text(json.dumps(other))
    assert meshward("allowlist", "import", str(tmp_path / "other.json"), "--db", db).code == 0
    merged = yaml.safe_load(meshward("allowlist", "export", "--db", db).out)
    assert [s["destination"] for s in merged["services"]] == ["pay/api", "shop/api"]
    r = meshward("score", str(_test_input(tmp_path)), "--db", db, "--mode", "enforce")
    assert json.loads(r.out.splitlines()[0])["verdict"] == "allow"


def test_allowlist_import_errors(meshward: Run, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    meshward("learn", str(_train(tmp_path)), "--db", db)
    before = meshward("allowlist", "export", "--db", db).out
    cases = {
        "syntax.yaml": "services: [oops",
        "shape.yaml": "- just\n- a list\n",
        "rule.json": json.dumps({"services": [{"destination": "a/b", "endpoints": [{"x": 1}]}]}),
        "version.json": json.dumps({"version": 99, "services": []}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        r = meshward("allowlist", "import", str(tmp_path / name), "--replace", "--db", db)
        assert r.code == 2, name
        assert (
            r.err.startswith(f"meshward allowlist: {tmp_path / name}: ") and r.err.count("\n") == 1
        )
    assert meshward("allowlist", "import", str(tmp_path / "missing.yaml"), "--db", db).code == 2
    assert meshward("allowlist", "export", "--db", db).out == before  # all or nothing


def test_allowlist_import_refuses_an_unknown_template_variable(
    meshward: Run, tmp_path: Path
) -> None:
    db = str(tmp_path / "m.db")
    doc = {"services": [{"destination": "shop/api", "endpoints": [{"method": "GET", "path": ""}]}]}
    doc["services"][0]["endpoints"][0]["path"] = "/x/{nope}"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc))
    r = meshward("allowlist", "import", str(tmp_path / "rules.yaml"), "--db", db)
    assert r.code == 2
    assert r.err == (
        f"meshward allowlist: {tmp_path / 'rules.yaml'}: service 0: endpoint 0: "
        "path '/x/{nope}': unknown template variable '{nope}' (a variable is a whole segment, "
        "one of {int}, {uuid}, {hex}, {date}, {email}, {jwt}, {token}, {str}, {any})\n"
    )
    doc["services"][0]["endpoints"][0]["path"] = "/x/{str}"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(doc))
    assert meshward("allowlist", "import", str(tmp_path / "rules.yaml"), "--db", db).code == 0


def test_allowlist_import_reads_old_value_class_names_with_a_note(
    meshward: Run, tmp_path: Path
) -> None:
    """A saved allowlist with `integer` (the JSON kind's old name) still loads, as `int`, with
    a deprecation note; export writes the one spelling."""
    db = str(tmp_path / "m.db")
    rule = {"method": "POST", "path": "/o", "body": {"$.qty": ["integer"], "$.gift": "boolean"}}
    doc = {"services": [{"destination": "shop/api", "endpoints": [rule]}]}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(doc))
    r = meshward("allowlist", "import", str(tmp_path / "old.yaml"), "--db", db)
    assert r.code == 0
    assert r.err == (
        f"meshward allowlist: note: {tmp_path / 'old.yaml'} uses old value class names, read "
        "boolean as bool, integer as int; they are deprecated: `meshward allowlist export` "
        "writes the current ones\n"
    )
    out = yaml.safe_load(meshward("allowlist", "export", "--db", db).out)
    assert out["services"][0]["endpoints"][0]["body"] == {"$.gift": ["bool"], "$.qty": ["int"]}
    r = meshward("allowlist", "import", str(tmp_path / "old.yaml"), "--db", db)
    (tmp_path / "new.yaml").write_text(meshward("allowlist", "export", "--db", db).out)
    assert meshward("allowlist", "import", str(tmp_path / "new.yaml"), "--db", db).err == ""


def test_allowlist_show(meshward: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "m.db")
    meshward("learn", str(_train(tmp_path)), "--db", db)
    r = meshward("allowlist", "show", "--db", db)  # not a terminal: YAML, times as dates
    shown = yaml.safe_load(r.out)["services"][0]
    assert shown["endpoints"][0]["count"] == 60
    assert shown["last_seen"] == shown["endpoints"][0]["last_seen"] == "2026-11-24T10:00:00Z"
    assert shown["sources"]["web/front"]["first_seen"] == "2026-11-24T10:00:00Z"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    r = meshward("allowlist", "show", "--db", db)
    r.out = re.sub(r"\x1b\[[0-9;]*m", "", r.out)  # a terminal's colours
    lines = r.out.splitlines()
    assert lines[0] == "meshward allowlists: 1 service, 2 rules"
    assert max(len(x) for x in lines) <= 80, r.out
    assert "shop/api  2 rules, 120 calls, 1 caller, seen 2026-11-24 10:00 UTC" in r.out
    row = next(x for x in lines if "POST /users/{int}/orders" in x)
    assert row.split()[-3:] == ["60", "2026-11-24", "10:00"]  # calls, last seen as a date
    assert "from web/front" in r.out and "query verbose int" in r.out
    assert "body $.item" in r.out
    r = meshward("allowlist", "show", "--destination", "no/such", "--db", db)
    assert r.code == 2 and "no allowlist for destination" in r.err


def test_mode_get_set(meshward: Run, tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    assert meshward("mode", "get", "--db", db).code == 2  # no database yet
    r = meshward("mode", "set", "shop", "enforce", "--db", db)
    assert r.code == 0 and r.out == "shop: enforce (was learn)\n"
    meshward("mode", "set", "pay", "monitor", "--db", db)
    assert meshward("mode", "get", "--db", db).out == "pay\tmonitor\nshop\tenforce\n*\tlearn\n"
    assert meshward("mode", "get", "shop", "--db", db).out == "enforce\n"
    assert meshward("mode", "get", "other", "--db", db).out == "learn\n"
    assert meshward("mode", "set", "Bad_NS", "learn", "--db", db).code == 2
    assert meshward("mode", "set", "shop", "block", "--db", db).code == 2
    with open_store(db) as s:
        assert s.modes() == {"pay": "monitor", "shop": "enforce"}


def test_mode_star_is_every_other_namespace_in_get_and_set(meshward: Run, tmp_path: Path) -> None:
    """`mode get` listed `*` (every namespace not set) but `mode set '*'` refused it: now both
    mean the same, the engine follows it, and a namespace set by name keeps its own mode."""
    db = str(tmp_path / "m.db")
    meshward("learn", str(_train(tmp_path)), "--db", db)
    meshward("mode", "set", "pay", "monitor", "--db", db)
    r = meshward("mode", "set", "*", "enforce", "--db", db)
    assert r.code == 0
    assert r.out == (
        "*: enforce (was learn): every namespace not set by name; set by name, unchanged: pay\n"
    )
    assert meshward("mode", "get", "--db", db).out == "pay\tmonitor\n*\tenforce\n"
    assert meshward("mode", "get", "*", "--db", db).out == "enforce\n"
    assert meshward("mode", "get", "shop", "--db", db).out == "enforce\n"
    assert meshward("mode", "get", "pay", "--db", db).out == "monitor\n"
    r = meshward("score", str(_test_input(tmp_path)), "--db", db)  # shop: not set by name
    assert {json.loads(x)["mode"] for x in r.out.splitlines()} == {"enforce"}
    r = meshward("mode", "set", "shop", "learn", "--db", db)
    assert r.out == "shop: learn (was enforce)\n"  # it was in `*`'s mode
    assert meshward("mode", "get", "--db", db).out == "pay\tmonitor\nshop\tlearn\n*\tenforce\n"
    r = meshward("mode", "set", "**", "off", "--db", db)
    assert r.code == 2 and "'**' is not a Kubernetes namespace name (or '*'" in r.err


def test_mode_set_off(meshward: Run, tmp_path: Path) -> None:
    """`off` is a mode like the others for the CLI (the renderers then install nothing)."""
    db = str(tmp_path / "m.db")
    r = meshward("mode", "set", "shop", "off", "--db", db)
    assert r.code == 0 and r.out == "shop: off (was learn)\n"
    assert meshward("mode", "get", "shop", "--db", db).out == "off\n"


def test_console_entry_point(meshward: Run, tmp_path: Path) -> None:
    """The real `python -m meshward` process (commands that build no threat detector: fast)."""
    import os
    import subprocess

    db = str(tmp_path / "m.db")
    assert meshward("learn", str(_train(tmp_path)), "--db", db).code == 0
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": str(root), "MESHWARD_DB": db}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meshward", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )

    r = run("allowlist", "export", "--format", "json")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert json.loads(r.stdout)["services"][0]["destination"] == "shop/api"
    r = run("mode", "set", "shop", "nonsense")
    assert r.returncode == 2 and "invalid choice" in r.stderr
