"""The recent calls serve keeps for the readiness report: bounded per namespace, in namespaces
and in bytes, one copy per call shape (counted), and no secret kept."""

from __future__ import annotations

from meshward.app.recent import RecentCalls
from meshward.core.observation import Identity, Observation


def _obs(ns: str, path: str, query: str = "", body: bytes = b"", **kw: object) -> Observation:
    return Observation(
        seen_by="node-tap",
        source=Identity("shop", "web"),
        destination=Identity(ns, "api"),
        method="GET",
        path=path,
        query=query,
        body=body,
        **kw,  # type: ignore[arg-type]
    )


def test_one_copy_per_shape_counted() -> None:
    recent = RecentCalls()
    for i in range(50):
        recent.keep(_obs("shop", f"/users/{i}", f"page={i}"))
    recent.keep(_obs("shop", "/users/1", "page=1&q=x"))  # another query name: another shape
    kept = list(recent.calls("shop"))
    assert [(k.obs.path, k.calls) for k in kept] == [("/users/0", 50), ("/users/1", 1)]
    assert list(recent.calls("shop", since=kept[-1].last + 1)) == []


def test_bounded_per_namespace_in_namespaces_and_in_bytes() -> None:
    recent = RecentCalls(per_namespace=10, namespaces=3, budget=40_000, copies_per_second=1e9)
    for i in range(100):
        recent.keep(_obs("shop", f"/p{'x' * (i % 26)}{chr(97 + i % 26)}/{i}"))
    assert len(list(recent.calls("shop"))) == 10
    for ns in ("a", "b", "c", "d"):
        recent.keep(_obs(ns, "/x"))
    assert recent.namespaces_kept() == ["b", "c", "d"]  # the least recent namespace went
    body = b'{"text": "' + b"y" * 15_000 + b'"}'
    for i in range(20):
        recent.keep(
            _obs(
                f"n{i % 3}",
                f"/b{chr(97 + i)}",
                body=body,
                headers=[("content-type", "application/json")],
            )
        )
    assert recent.size <= 40_000
    assert recent.size == sum(k.size for ns in recent.namespaces_kept() for k in recent.calls(ns))


def test_no_secret_is_kept_but_value_classes_are() -> None:
    recent = RecentCalls()
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlMTIzNDU2"
    recent.keep(
        _obs(
            "shop",
            "/reset/Summer2024pw",
            f"token={jwt}&id=7",
            body=b'{"password": "hunter2hunter2", "pin": 4321, "name": "bob"}',
            headers=[("authorization", f"Bearer {jwt}"), ("content-type", "application/json")],
        )
    )
    (kept,) = recent.calls("shop")
    shown = repr(kept.obs)
    for secret in (jwt, "hunter2", "4321", "Summer2024pw"):
        assert secret not in shown
    assert "id=7" in kept.obs.query and "name" in kept.obs.body.decode() and kept.body_kept
    assert kept.obs.query.startswith("token=eyJ")  # a JWT stands in for the JWT: same class


def test_copies_are_made_at_most_at_their_rate() -> None:
    recent = RecentCalls(copies_per_second=5)
    for i in range(20):  # a flood of new shapes: a count each, five copies
        recent.keep(_obs("shop", f"/{chr(97 + i)}"))
    assert len(list(recent.calls("shop"))) == 5 and recent.skipped == 15
    for _ in range(100):  # a kept shape is still counted, without a copy
        recent.keep(_obs("shop", "/a"))
    assert {k.obs.path: k.calls for k in recent.calls("shop")}["/a"] == 101


def test_a_long_value_is_stood_in_for_whatever_it_holds() -> None:
    recent = RecentCalls()
    long = "4111 1111 1111 1111 " + "y" * 300
    recent.keep(_obs("shop", "/x", f"note={long}"))
    (kept,) = recent.calls("shop")
    assert kept.obs.query == "note=%5Bredacted%5D"
