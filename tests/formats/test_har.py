"""HAR 1.2 -> Observations: identities, query split, bodies, and clear errors for bad entries."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from meshward.core.observation import Observation
from meshward.formats import EntryError, read_observations
from meshward.formats.har import observation_from_entry
from tests.support.samples import har_doc, har_entry, write_har


def _read(path: Path) -> list[Observation | EntryError]:
    return list(read_observations([str(path)]))


def test_entry_fields() -> None:
    e = har_entry(
        "post",
        "https://shop.example:8443/api/Orders/7?a=1&b=%20x#frag",
        headers={
            "Host": "orders.shop.svc:8443",
            "Content-Type": "application/json; charset=utf-8",
            "X-Request-Id": "r-1",
        },
        body='{"item": 3}',
        status=201,
    )
    o = observation_from_entry(e)
    assert o.seen_by == "file"
    assert o.method == "POST"
    assert o.authority == "orders.shop.svc:8443"
    assert (o.destination.namespace, o.destination.workload, o.destination.port) == (
        "shop",
        "orders",
        8443,
    )
    assert o.source.key == "unknown"
    assert o.path == "/api/Orders/7" and o.query == "a=1&b=%20x"
    assert o.headers[0] == ("host", "orders.shop.svc:8443")
    assert o.content_type == "application/json"
    assert o.body == b'{"item": 3}' and o.body_size == 11 and not o.body_truncated
    assert o.status == 201 and o.response_headers == [("content-type", "application/json")]
    assert o.request_id == "r-1"
    assert o.time == 1795514400.0


def test_identity_strings_and_fallbacks() -> None:
    o = observation_from_entry(
        har_entry(
            source="spiffe://cluster.local/ns/web/sa/frontend",
            destination="checkout.shop.serviceaccount.identity.linkerd.cluster.local",
        )
    )
    assert o.source.key == "web/frontend"
    assert o.source.principal == "spiffe://cluster.local/ns/web/sa/frontend"
    assert o.destination.key == "shop/checkout"
    o = observation_from_entry(
        har_entry(source="web/cli", destination="api.shop.svc.cluster.local")
    )
    assert (o.source.key, o.destination.key) == ("web/cli", "shop/api")
    # no Host header: the URL's host; an IP literal stays an IP
    o = observation_from_entry(har_entry(url="http://user:pw@10.1.2.3:9000/x"))
    assert o.authority == "10.1.2.3:9000"
    assert o.destination.ip == "10.1.2.3" and o.destination.port == 9000
    # Istio's XFCC names the caller when _source is absent
    xfcc = (
        "By=spiffe://cluster.local/ns/shop/sa/api;Hash=abc;URI=spiffe://cluster.local/ns/web/sa/ui"
    )
    o = observation_from_entry(har_entry(headers={"x-forwarded-client-cert": xfcc}))
    assert o.source.key == "web/ui"


def test_http2_pseudo_headers_and_grpc() -> None:
    e = har_entry(
        "POST",
        "https://grpc.shop.svc:443/shop.Cart/Add",
        body="AAAA",
        headers={
            ":authority": "cart.shop.svc:443",
            ":method": "POST",
            "content-type": "application/grpc",
        },
    )
    e["request"]["httpVersion"] = "h2"
    o = observation_from_entry(e)
    assert o.authority == "cart.shop.svc:443"
    assert all(not k.startswith(":") for k, _ in o.headers)
    assert o.protocol == "grpc" and (o.grpc_service, o.grpc_method) == ("shop.Cart", "Add")


def test_bodies_base64_params_truncated() -> None:
    e = har_entry("POST", body=base64.b64encode(b"\x00\xffbin").decode())
    e["request"]["postData"]["encoding"] = "base64"
    e["request"]["bodySize"] = 5
    assert observation_from_entry(e).body == b"\x00\xffbin"
    e = har_entry("POST")
    e["request"]["postData"] = {
        "mimeType": "application/x-www-form-urlencoded",
        "params": [{"name": "a", "value": "1 2"}, {"name": "b", "value": "&"}],
    }
    assert observation_from_entry(e).body == b"a=1+2&b=%26"
    e = har_entry("POST", body="abc", headers={"Content-Length": "100"})
    o = observation_from_entry(e)
    assert o.body_truncated and o.body_size == 100
    e = har_entry(status=0)  # a browser's "no response"
    assert observation_from_entry(e).status is None


def test_bad_entries_are_reported_and_skipped(tmp_path: Path) -> None:
    bad_b64 = har_entry("POST", body="%%%")
    bad_b64["request"]["postData"]["encoding"] = "base64"
    no_url = har_entry()
    del no_url["request"]["url"]
    bad_headers = har_entry()
    bad_headers["request"]["headers"] = "host: x"
    bad_status = har_entry()
    bad_status["response"]["status"] = "200"
    bad_time = har_entry(started="yesterday")
    entries = [
        har_entry(),
        42,
        {"response": {}},
        no_url,
        bad_b64,
        bad_headers,
        bad_status,
        bad_time,
        har_entry(url="http://[::1/x"),
        har_entry("DELETE"),
    ]
    items = _read(write_har(tmp_path / "bad.har", entries))
    assert len(items) == len(entries)
    assert isinstance(items[0], Observation) and isinstance(items[-1], Observation)
    errors = [i for i in items if isinstance(i, EntryError)]
    assert [e.entry for e in errors] == [2, 3, 4, 5, 6, 7, 8, 9]
    lines = [str(e) for e in errors]
    assert lines[0] == f"{tmp_path / 'bad.har'}: entry 2: entry must be an object, not int"
    assert "request is missing" in lines[1]
    assert "request.url is missing" in lines[2]
    assert "not valid base64" in lines[3]
    assert "request.headers must be a list" in lines[4]
    assert "response.status must be an integer" in lines[5]
    assert "startedDateTime is not ISO 8601" in lines[6]
    assert "not a URL" in lines[7]
    assert all("\n" not in line for line in lines)


def test_truncated_har_keeps_what_came_before(tmp_path: Path) -> None:
    text = json.dumps(har_doc([har_entry(), har_entry("PUT"), har_entry("DELETE")]))
    p = tmp_path / "cut.har"
    p.write_text(text[: text.index('"PUT"') + 40])
    items = _read(p)
    assert isinstance(items[0], Observation)
    assert isinstance(items[-1], EntryError) and items[-1].entry == 2
    assert "truncated" in items[-1].message


def test_not_har_at_all(tmp_path: Path) -> None:
    cases = {
        "empty.har": b"",
        "spaces.har": b"  \n\n ",
        "list.har": b"[1, 2]",
        "binary.har": bytes(range(256)) * 4,
        "nolog.har": b'{"entries": []}',
        "logstr.har": b'{"log": "x"}',
        "entriesobj.har": b'{"log": {"entries": {"a": 1}}}',
        "garbage.har": b'{"log": {"entries": [ {"request": ',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        items = _read(tmp_path / name)
        assert len(items) == 1 and isinstance(items[0], EntryError), (name, items)
    empty_ok = tmp_path / "empty-log.har"
    empty_ok.write_text(json.dumps(har_doc([])))
    assert _read(empty_ok) == []


def test_bom_and_one_line_har(tmp_path: Path) -> None:
    p = tmp_path / "bom.har"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(har_doc([har_entry()])).encode())
    items = _read(p)
    assert len(items) == 1 and isinstance(items[0], Observation)


def test_several_files_in_order(tmp_path: Path) -> None:
    a = write_har(tmp_path / "a.har", [har_entry("GET"), har_entry("POST")])
    b = write_har(tmp_path / "b.har", [har_entry("PUT")])
    items = list(read_observations([str(a), str(tmp_path / "missing.har"), str(b)]))
    assert [getattr(i, "method", None) for i in items] == ["GET", "POST", None, "PUT"]
    assert "cannot open" in str(items[2])


def test_gzip_inputs(tmp_path: Path) -> None:
    import gzip

    from tests.support.samples import tap_trace

    har = gzip.compress(json.dumps(har_doc([har_entry("GET"), har_entry("PUT")])).encode())
    (tmp_path / "a.har.gz").write_bytes(har)
    lines = "".join(json.dumps(tap_trace(m)) + "\n" for m in ("POST", "DELETE"))
    (tmp_path / "t.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (tmp_path / "cut.gz").write_bytes(har[: len(har) // 2])
    seen: list[int] = []
    items = list(
        read_observations(
            [str(tmp_path / n) for n in ("a.har.gz", "t.jsonl.gz", "cut.gz")], progress=seen.append
        )
    )
    assert [getattr(i, "method", None) for i in items[:4]] == ["GET", "PUT", "POST", "DELETE"]
    assert all(isinstance(i, EntryError) for i in items[4:]) and items[4:]
    assert sum(seen) == sum(
        (tmp_path / n).stat().st_size for n in ("a.har.gz", "t.jsonl.gz", "cut.gz")
    )
