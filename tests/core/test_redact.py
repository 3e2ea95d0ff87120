"""meshward.core.redact: secrets out of what is stored, logged and served."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshward.core import redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "Passwd",
        "api_key",
        "X-Api-Key",
        "apiKey",
        "access_token",
        "client_secret",
        "session_id",
        "sid",
        "card_number",
        "cvv",
        "Authorization",
        "csrf",
        "otp",
        "pin",
    ],
)
def test_secret_names(name: str) -> None:
    assert redact.is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "author",
        "passenger",
        "cardinality",
        "id",
        "page",
        "sort",
        "user",
        "q",
        "signup",
        "pinned",
        "compass",
        "considered",
    ],
)
def test_ordinary_names(name: str) -> None:
    assert not redact.is_secret_name(name)


def test_query_keeps_names_and_drops_secret_values() -> None:
    qs = "user=bob&password=Summer2024pw&card=4111111111111111&q=shoes&api_key=abc"
    out = redact.query(qs)
    assert out == (
        "user=bob&password=%5Bredacted%5D&card=%5Bredacted%5D&q=shoes&api_key=%5Bredacted%5D"
    )


def test_text_takes_out_credentials_and_card_numbers() -> None:
    line = f"id=1 token {JWT} Authorization: Bearer abcdefghijklmnop pay 4111 1111 1111 1111"
    out = redact.text(line)
    assert JWT not in out and "abcdefghijklmnop" not in out and "4111 1111" not in out
    assert "[redacted:jwt]" in out and "[redacted:card]" in out
    assert redact.text("order 1234567890123456 shipped") == "order 1234567890123456 shipped"
    assert redact.text("k=AKIAxyz0123456789abcdefGHij") == "k=[redacted:token]"
    # ids that are not credentials stay: a UUID, a sha256, a trace id
    uid = "0b1d7f8e-1c1e-4d5a-9d6b-3f0e2a1b4c5d"
    sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert redact.text(f"/orders/{uid}/{sha}") == f"/orders/{uid}/{sha}"


def test_headers_always_redacted() -> None:
    got = dict(
        redact.headers(
            [
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("cookie", "sid=1"),
                ("set-cookie", "a=b"),
                ("user-agent", "curl/8"),
                ("x-request-id", "r1"),
            ]
        )
    )
    assert got == {
        "authorization": "[redacted]",
        "cookie": "[redacted]",
        "set-cookie": "[redacted]",
        "user-agent": "curl/8",
        "x-request-id": "r1",
    }


def test_target() -> None:
    assert redact.target(f"/reset/{JWT}?token=x&page=2") == (
        "/reset/[redacted:jwt]?token=%5Bredacted%5D&page=2"
    )


def test_luhn() -> None:
    assert redact.luhn("4111111111111111")
    assert not redact.luhn("4111111111111112")


@given(st.text(max_size=400))
def test_text_never_raises_and_never_grows_much(s: str) -> None:
    out = redact.text(s)
    assert len(out) <= len(s) + 32 * (s.count(" ") + 1)
    assert redact.text(out) == out  # idempotent: redacting twice changes nothing


def test_paths_lose_credential_segments_and_keep_their_shape() -> None:
    from meshward.core import redact

    assert redact.path("/reset/Summer2024pw") == "/reset/[redacted]"
    assert redact.path("/a/4111111111111111/b") == "/a/[redacted:card]/b"
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    assert redact.path(f"/u/{jwt}") == "/u/[redacted:jwt]"
    for kept in (
        "/api/v1beta1/users",
        "/",
        "/orders/12345",
        "/a/550e8400-e29b-41d4-a716-446655440000",
    ):
        assert redact.path(kept) == kept
    assert redact.path(redact.path("/reset/Summer2024pw")) == "/reset/[redacted]"


def test_shown_threats_redact_secret_places_and_escape_the_rest() -> None:
    from meshward.core import redact
    from meshward.core.observation import Threat

    shown = redact.shown_threats(
        [
            Threat("SQL.Injection", "query:password", "x' OR 1=1"),
            Threat("SQL.Injection", "header:cookie:sid", "' OR 1=1"),
            Threat("SQL.Injection", "body:$.card.cvv", "1 UNION SELECT"),
            Threat("Cross.Site.Scripting", "query:q", "<script>alert(1)</script>"),
        ]
    )
    assert [t["evidence"] for t in shown] == [
        "[redacted]",
        "[redacted]",
        "[redacted]",
        "&lt;script&gt;alert(1)&lt;/script&gt;",
    ]
