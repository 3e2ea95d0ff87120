"""meshward.core.threats.signatures: a signature's broader pre-filter pattern matches wherever the
signature does (the pre-filter may over-report, never under-report)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshward.core.threats.detector import signature_set
from meshward.core.threats.signatures import SIGNATURES, Signature

WIDENED = [s for s in SIGNATURES if s.prefilter]
FLAGS = re.IGNORECASE | re.MULTILINE


def test_some_signatures_have_a_prefilter_pattern() -> None:
    assert WIDENED


@pytest.mark.parametrize("sig", WIDENED, ids=lambda s: s.prefilter)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_prefilter_pattern_matches_wherever_the_signature_does(
    sig: Signature, data: st.DataObject
) -> None:
    # bytes, as both passes match them (Hyperscan): `\s` is ASCII whitespace
    drawn = data.draw(st.from_regex(re.compile(sig.pattern, FLAGS | re.ASCII)))
    text = drawn.encode("utf-8", "surrogatepass")
    assert re.search(sig.prefilter.encode(), text, FLAGS), text
    # and the compiled pre-filter flags it too
    assert signature_set(3).suspicious(text), text


@pytest.mark.parametrize(
    "value",
    ["; cat /etc/passwd", "&& whoami", ") ls -la", "| /bin/sh", "{cat,/etc/passwd}", "${IFS}"],
)
def test_prefilter_patterns_see_known_payloads(value: str) -> None:
    matched = [s for s in WIDENED if re.search(s.pattern, value, FLAGS)]
    assert all(re.search(s.prefilter, value, FLAGS) for s in matched)
