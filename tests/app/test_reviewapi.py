"""The allowlist review API on a real `meshward serve` (SQLite store, real HTTP, real gRPC
Checks): the review view (counts, first/last seen, changes since the last review, second-look
marks), approve / remove / widen / edit with their audit lines, a removal holding against
learning and a restart, and refusals (no credential, no permission, bad input)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshward.app.auth import Permission, Principal
from tests.support.dashboard import call
from tests.support.envoy_http import ServerThread
from tests.support.replicas import check

pytestmark = pytest.mark.integration  # a whole serve with its gRPC ports
T0 = 1_780_000_000.0
SHOP_API = "/api/v1/review?destination=shop%2Fapi"


def at(when: float, *args: str, query: str = "") -> dict[str, Any]:
    doc = call(*args, query=query)
    doc["time"] = when
    return doc


def learned() -> list[dict[str, Any]]:
    """GET /users/{int} from two callers over an hour; POST /orders from one caller in a burst."""
    out = []
    for i in range(6):
        out.append(at(T0 + i * 720, "shop/web", "shop/api", "GET", f"/users/{i + 1}", query="v=1"))
        out.append(at(T0 + i * 720, "billing/worker", "shop/api", "GET", f"/users/{i + 7}"))
    out += [at(T0 + i, "shop/web", "shop/api", "POST", "/orders") for i in range(3)]
    return out


def edit(srv: ServerThread, doc: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = srv.api("POST", SHOP_API, doc)
    return answer


def rules(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f"{r['method']} {r['path']}": r for r in view["rules"]}


def audit(tmp_path: Path) -> list[dict[str, Any]]:
    """The review's audit records (mode changes are audited too)."""
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["action"].startswith("allowlist.")]


def test_the_view_then_approve_and_what_changed_since(tmp_path: Path) -> None:
    with ServerThread(str(tmp_path / "m.db")) as srv:
        srv.client.post_observations(learned())
        view = srv.api("GET", SHOP_API)["services"][0]
        assert view["destination"] == "shop/api" and view["reviewed"] is None
        users, orders = rules(view)["GET /users/{int}"], rules(view)["POST /orders"]
        assert users["count"] == 12 and users["callers"] == {"billing/worker": 6, "shop/web": 6}
        assert users["first_seen"] == T0 and users["last_seen"] == T0 + 5 * 720
        assert users["query"] == {"v": ["int"]} and users["status"] == "new"
        assert users["second_look"] == []
        assert orders["second_look"] == ["single-caller", "short-burst"]
        assert view["changes"] == {
            "new": 2,
            "changed": 0,
            "approved": 0,
            "second_look": 1,
            "removed_since_review": 0,
        }

        done = edit(srv, {"action": "approve"})["service"]
        assert done["reviewed"]["by"] == "api-token"
        assert {r["status"] for r in done["rules"]} == {"approved"}
        # a new caller of an approved rule changes it; a new rule is new
        srv.client.post_observations(
            [
                at(T0 + 9000, "billing/worker", "shop/api", "POST", "/orders"),
                at(T0 + 9000, "shop/web", "shop/api", "DELETE", "/orders/4"),
            ]
        )
        view = srv.api("GET", SHOP_API)["services"][0]
        got = {k: r["status"] for k, r in rules(view).items()}
        assert got == {
            "GET /users/{int}": "approved",
            "POST /orders": "changed",
            "DELETE /orders/{int}": "new",
        }
        edit(srv, {"action": "approve", "rules": [{"method": "POST", "path": "/orders"}]})
        view = srv.api("GET", SHOP_API)["services"][0]
        assert rules(view)["POST /orders"]["status"] == "approved"
        assert rules(view)["DELETE /orders/{int}"]["status"] == "new"
    actions = [(a["action"], a["target"], a["who"]) for a in audit(tmp_path)]
    assert actions == [
        ("allowlist.approve", "shop/api *", "api-token"),
        ("allowlist.approve", "shop/api POST /orders", "api-token"),
    ]


def test_a_removed_rule_is_denied_in_enforce_and_never_learned_again(tmp_path: Path) -> None:
    db = str(tmp_path / "m.db")
    with ServerThread(db) as srv:
        srv.client.post_observations(learned())
        srv.client.set_mode("shop", "enforce")
        authz = srv.ports["authz"]
        assert check(authz, "/users/5", "shop") == 0  # allowed (and cached)
        answer = edit(srv, {"action": "remove", "method": "GET", "path": "/users/{int}"})
        assert "GET /users/{int}" not in rules(answer["service"])
        assert answer["service"]["removed"][0]["by"] == "api-token"
        assert check(authz, "/users/5", "shop") == 7  # PERMISSION_DENIED: the cache was dropped
        assert check(authz, "/orders", "shop", method="POST") == 0
        # learn mode sees the same request again: a tombstone is never learned back
        srv.client.set_mode("shop", "learn")
        srv.client.post_observations([at(T0 + 99, "shop/web", "shop/api", "GET", "/users/3")])
        assert "GET /users/{int}" not in rules(srv.api("GET", SHOP_API)["services"][0])
    entry = audit(tmp_path)[-1]
    assert entry["action"] == "allowlist.remove"
    assert entry["target"] == "shop/api GET /users/{int}" and entry["via"] == "bearer"
    assert entry["old"].startswith("GET /users/{int}: ") and entry["new"] == (
        "GET /users/{int}: absent"
    )
    with ServerThread(db) as srv:  # stored: a restart keeps the removal
        view = srv.api("GET", SHOP_API)["services"][0]
        assert "GET /users/{int}" not in rules(view)
        srv.client.set_mode("shop", "enforce")
        assert check(srv.ports["authz"], "/users/5", "shop") == 7


def test_widen_and_edit(tmp_path: Path) -> None:
    with ServerThread(str(tmp_path / "m.db")) as srv:
        srv.client.post_observations(learned())
        srv.client.set_mode("shop", "enforce")
        authz = srv.ports["authz"]
        assert check(authz, "/users/5?v=x&debug=1", "shop") == 7
        widened = edit(
            srv, {"action": "widen", "method": "GET", "path": "/users/{int}", "query": "*"}
        )
        assert rules(widened["service"])["GET /users/{int}"]["query"]["*"] == ["any"]
        assert check(authz, "/users/5?v=x&debug=1", "shop") == 0
        # a narrowing edit: only the caller shop/web, only the parameter v as an integer
        narrowed = edit(
            srv,
            {
                "action": "edit",
                "method": "GET",
                "path": "/users/{int}",
                "rule": {
                    "method": "GET",
                    "path": "/users/{int}",
                    "query": {"v": ["int"]},
                    "sources": ["shop/web"],
                },
            },
        )
        users = rules(narrowed["service"])["GET /users/{int}"]
        assert users["query"] == {"v": ["int"]} and users["status"] == "approved"
        assert check(authz, "/users/5?v=x&debug=1", "shop") == 7
        assert check(authz, "/users/5?v=2", "shop") == 0
        # learning never widens what a person wrote
        srv.client.set_mode("shop", "learn")
        srv.client.post_observations(
            [at(T0 + 99, "shop/web", "shop/api", "GET", "/users/3", query="v=x&debug=1")]
        )
        srv.client.set_mode("shop", "enforce")
        users = rules(srv.api("GET", SHOP_API)["services"][0])["GET /users/{int}"]
        assert users["query"] == {"v": ["int"]} and users["count"] == 13
        assert check(authz, "/users/5?v=x&debug=1", "shop") == 7
        # another template: the old rule goes (tombstoned), the new one is allowed
        moved = edit(
            srv,
            {
                "action": "edit",
                "method": "POST",
                "path": "/orders",
                "rule": {"method": "POST", "path": "/orders/{str}"},
            },
        )
        assert set(rules(moved["service"])) == {"GET /users/{int}", "POST /orders/{str}"}
        assert check(authz, "/orders/abc", "shop", method="POST") == 0
        assert check(authz, "/orders", "shop", method="POST") == 7
    assert [a["action"] for a in audit(tmp_path)] == [
        "allowlist.widen",
        "allowlist.edit",
        "allowlist.edit",
    ]


def _raw(port: int, method: str, path: str, body: bytes, token: str | None) -> tuple[int, str]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body or None, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class ReadOnly:
    """An authorizer that grants reads only (as a cluster Role with get/list would)."""

    async def allowed(self, principal: Principal, permission: Permission | None) -> bool:
        return permission is not None and permission.verb in ("get", "list")


def test_refusals_and_bad_input(tmp_path: Path) -> None:
    with ServerThread(str(tmp_path / "m.db")) as srv:
        srv.client.post_observations(learned())
        port, token = srv.ports["http"], srv.config.auth.token
        remove = json.dumps({"action": "remove", "method": "GET", "path": "/users/{int}"}).encode()
        assert _raw(port, "GET", SHOP_API, b"", None)[0] == 401
        assert _raw(port, "POST", SHOP_API, remove, None)[0] == 401
        assert _raw(port, "POST", SHOP_API, remove, "not-the-token-at-all")[0] == 401
        bad = [
            (b"{", 400, "JSON object"),
            (b"[]", 400, "JSON object"),
            (b'{"action": "rename", "method": "GET", "path": "/x"}', 400, "action must be"),
            (b'{"action": "remove"}', 400, '"method" and "path"'),
            (b'{"action": "remove", "method": "GET", "path": "/nope"}', 404, "no rule GET /nope"),
            (b'{"action": "widen", "method": "GET", "path": "/users/{int}"}', 400, "widen needs"),
            (
                b'{"action": "widen", "method": "GET", "path": "/users/{int}", "query": '
                b'{"v": ["bogus"]}}',
                400,
                "unknown value class",
            ),
            (
                b'{"action": "edit", "method": "GET", "path": "/users/{int}", '
                b'"rule": {"method": "GET", "path": "/x/{nope}"}}',
                400,
                "unknown template variable '{nope}'",
            ),
            (b"x" * 70_000, 400, "at most"),
        ]
        for body, status, said in bad:
            got, text = _raw(port, "POST", SHOP_API, body, token)
            assert (got, said in json.loads(text).get("error", "")) == (status, True), (
                body[:60],
                text,
            )
        assert _raw(port, "POST", "/api/v1/review", remove, token)[0] == 400  # no destination
        assert _raw(port, "POST", "/api/v1/review?destination=x%2Fy", remove, token)[0] == 404
        # a caller allowed to read the allowlists but not to update them
        assert srv.server is not None
        srv.server.guard.authorizer = ReadOnly()
        assert _raw(port, "GET", SHOP_API, b"", token)[0] == 200
        status, text = _raw(port, "POST", SHOP_API, remove, token)
        assert status == 403 and "update allowlists.meshward.io in namespace shop" in text
    assert not (tmp_path / "audit.jsonl").exists()  # nothing refused was recorded as done
