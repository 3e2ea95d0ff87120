"""The identity paths of the gRPC ports, property-tested: SPIFFE ids, a certificate's URI SANs,
Envoy's x-forwarded-client-cert (malformed, several elements, forged By=), and the rule for the
guarded namespace and workload. Whatever arrives, the answer is an identity or Refused: never
another exception, and never an identity the verified peer does not hold."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.peer import (
    MAX_XFCC,
    REFUSALS,
    Refused,
    SpiffeId,
    certificate_identity,
    guarded,
    parse_spiffe,
    parse_xfcc,
    xfcc_identity,
)

OWN = SpiffeId("cluster.local", "meshward", "meshward")
WEB = "spiffe://cluster.local/ns/shop/sa/web"

names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
spiffes = st.builds(SpiffeId, st.just("cluster.local"), names, names)
junk = st.text(st.characters(codec="utf-8"), max_size=80)
# what Envoy writes in a value: anything but a backslash (the format does not escape those)
plain = st.text(st.characters(codec="utf-8", exclude_characters="\\"), max_size=40)
# text XFCC values are made of: separators, quotes, escapes, keys, and anything
xfcc_pieces = st.sampled_from(
    [",", ";", "=", '"', '\\"', "By=", "URI=", "Hash=abc", "DNS=x", WEB, OWN.uri, " ", "\t"]
)
xfcc_junk = st.one_of(junk, st.lists(xfcc_pieces | junk, max_size=12).map("".join))


def _element(pairs: list[tuple[str, str]]) -> str:
    def value(v: str) -> str:
        if any(c in v for c in ',;="'):
            return '"' + v.replace('"', '\\"') + '"'
        return v

    return ";".join(f"{k}={value(v)}" for k, v in pairs)


@given(spiffes)
def test_spiffe_round_trips(spiffe: SpiffeId) -> None:
    assert parse_spiffe(spiffe.uri) == spiffe


@given(junk)
def test_spiffe_parser_never_raises_and_is_strict(text: str) -> None:
    parsed = parse_spiffe(text)
    if parsed is not None:
        assert parsed.uri == text  # one identity, one spelling


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://cluster.local/ns/shop/sa/web/",
        "spiffe://cluster.local/ns/shop/sa/web?x=1",
        "spiffe://cluster.local/ns/shop/sa/web#f",
        "spiffe://Cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local:8443/ns/shop/sa/web",
        "spiffe://user@cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local/ns/../sa/web",
        "spiffe://cluster.local/ns/sh%6fp/sa/web",
        "spiffe://cluster.local/ns/Shop/sa/web",
        "spiffe://cluster.local/sa/web/ns/shop",
        "spiffe://cluster.local//ns/shop/sa/web",
        "SPIFFE://cluster.local/ns/shop/sa/web",
        "spiffe:///ns/shop/sa/web",
    ],
)
def test_odd_spellings_are_not_identities(uri: str) -> None:
    assert parse_spiffe(uri) is None
    with pytest.raises(Refused) as err:
        certificate_identity([uri], "cluster.local")
    assert err.value.reason == "bad-spiffe-id"


@given(st.lists(st.one_of(spiffes.map(str), junk), max_size=4), st.sampled_from(["cluster.local"]))
def test_a_certificate_proves_one_identity_or_none(uris: list[str], domain: str) -> None:
    try:
        got = certificate_identity(uris, domain)
    except Refused as exc:
        assert exc.reason in REFUSALS
        assert len(uris) != 1 or parse_spiffe(uris[0]) is None
    else:
        assert uris == [got.uri] and got.trust_domain == domain


def test_certificate_refusals_name_their_reason() -> None:
    assert _reason(lambda: certificate_identity([], "cluster.local")) == "no-spiffe-id"
    assert _reason(lambda: certificate_identity([WEB, WEB], "cluster.local")) == "several-uri-sans"
    foreign = "spiffe://evil.org/ns/shop/sa/web"
    assert _reason(lambda: certificate_identity([foreign], "cluster.local")) == (
        "foreign-trust-domain"
    )


def _reason(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except Refused as exc:
        return exc.reason
    raise AssertionError("not refused")


# -- XFCC -------------------------------------------------------------------------------------


@given(
    st.lists(
        st.lists(
            st.tuples(st.sampled_from(["By", "Hash", "URI", "DNS", "Subject", "Cert"]), plain),
            min_size=1,
            max_size=5,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_xfcc_written_as_envoy_does_parses_back(elements: list[list[tuple[str, str]]]) -> None:
    header = ",".join(_element(e) for e in elements)
    assert parse_xfcc(header) == [[(k.lower(), v) for k, v in e] for e in elements]


@settings(max_examples=400)
@given(xfcc_junk)
def test_any_xfcc_value_gives_an_identity_or_a_refusal(value: str) -> None:
    try:
        got = xfcc_identity([value], OWN)
    except Refused as exc:
        assert exc.reason in REFUSALS
        return
    # accepted: the last element was written By meshward's own identity and names the caller
    last = parse_xfcc(value)[-1]
    assert ("by", OWN.uri) in last and ("uri", got.uri) in last


@given(spiffes, st.lists(st.lists(st.tuples(st.just("By"), junk), max_size=2), max_size=3))
def test_only_the_last_element_counts(caller: SpiffeId, forged: list[list]) -> None:
    """Whatever the caller wrote before it (APPEND_FORWARD), even By= meshward itself, the
    element meshward's sidecar appended last decides."""
    fake = [[("By", OWN.uri), ("URI", "spiffe://cluster.local/ns/payments/sa/admin")], *forged]
    real = [("By", OWN.uri), ("Hash", "ab12"), ("Subject", '""'), ("URI", caller.uri)]
    header = ",".join(_element(e) for e in [*fake, real] if e)
    if any("\\" in v for e in forged for _, v in e):
        # a backslash before a quote the caller wrote can leave its own text unterminated (the
        # format does not escape backslashes): the header is then refused, never misread
        try:
            assert xfcc_identity([header], OWN) == caller
        except Refused as exc:
            assert exc.reason == "xfcc-malformed"
        return
    assert xfcc_identity([header], OWN) == caller


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ([], "xfcc-missing"),
        ([f"By={OWN.uri};URI={WEB}", f"By={OWN.uri};URI={WEB}"], "xfcc-several-headers"),
        ([f'By={OWN.uri};URI="{WEB}'], "xfcc-malformed"),
        ([f"By={OWN.uri};URI"], "xfcc-malformed"),
        ([f"By={OWN.uri};URI={WEB},"], "xfcc-malformed"),
        ([f"By={OWN.uri};;URI={WEB}"], "xfcc-malformed"),
        ([f"By={OWN.uri};URI={WEB}x=y"], "xfcc-malformed"),
        (["By=spiffe://cluster.local/ns/shop/sa/web;URI=" + WEB], "xfcc-not-by-meshward"),
        ([f"By={OWN.uri};By={OWN.uri};URI={WEB}"], "xfcc-not-by-meshward"),
        ([f"URI={WEB}"], "xfcc-not-by-meshward"),
        ([f"By={OWN.uri};Hash=ab"], "no-spiffe-id"),
        ([f"By={OWN.uri};URI={WEB};URI={WEB}"], "several-uri-sans"),
        ([f"By={OWN.uri};URI=spiffe://evil.org/ns/shop/sa/web"], "foreign-trust-domain"),
        ([f"By={OWN.uri};URI=https://web.shop"], "bad-spiffe-id"),
        ([f"By={OWN.uri};URI={WEB}" + ";DNS=x" * (MAX_XFCC // 6)], "xfcc-malformed"),
        # the caller's forged element last-but-one is ignored; the sidecar's own is not by us
        ([f"By={OWN.uri};URI={WEB},By=spiffe://x/ns/a/sa/b;URI={WEB}"], "xfcc-not-by-meshward"),
    ],
)
def test_xfcc_refusals(values: list[str], reason: str) -> None:
    assert _reason(lambda: xfcc_identity(values, OWN)) == reason


def test_xfcc_quoting_as_envoy_writes_it() -> None:
    header = f'By={OWN.uri};Hash=468ed3;Subject="CN=web,O=shop \\"x\\"";URI={WEB};DNS=web.shop'
    assert xfcc_identity([header], OWN) == parse_spiffe(WEB)
    assert ("subject", 'CN=web,O=shop "x"') in parse_xfcc(header)[0]


# -- the guarded namespace and workload -----------------------------------------------------------


@given(spiffes, st.one_of(st.just(""), names, junk), st.one_of(st.just(""), names, junk))
def test_hints_never_leave_the_verified_namespace(peer: SpiffeId, ns: str, wl: str) -> None:
    try:
        namespace, workload = guarded(peer, ns, wl)
    except Refused as exc:
        assert exc.reason in ("namespace-mismatch", "workload-not-of-service-account")
        assert (ns and ns != peer.namespace) or wl
        return
    assert namespace == peer.namespace
    assert workload == (wl or peer.service_account)


@given(spiffes, names)
def test_with_a_pod_index_the_workload_must_run_under_the_account(peer: SpiffeId, wl: str) -> None:
    pods = {(peer.namespace, "api", peer.service_account)}

    def binding(ns: str, workload: str, sa: str) -> bool:
        return (ns, workload, sa) in pods

    if wl == "api":
        assert guarded(peer, "", wl, binding) == (peer.namespace, "api")
    else:
        assert _reason(lambda: guarded(peer, "", wl, binding)) == (
            "workload-not-of-service-account"
        )
    assert guarded(peer, peer.namespace, "", binding) == (peer.namespace, peer.service_account)
