"""Small allowlists written by hand, for tests of what is made from one (the exports)."""

from __future__ import annotations

from hypothesis import strategies as st

from meshward.core.allowlist import Allowlist, EndpointRule


def allowlist_of(
    *rules: tuple[str, str, dict[str, int]], destination: str = "shop/api"
) -> Allowlist:
    """One service's rules: (method, template, {caller: count}) each, callers learned too."""
    allowlist = Allowlist()
    profile = allowlist.profile(destination)
    for method, template, sources in rules:
        rule = EndpointRule(method, template)
        rule.sources = dict(sources)
        profile.add_rule(rule)
        for s in sources:
            profile.learn_source(s, 1.0)
    return allowlist


# what the widening tests generate (tests/istio/test_guard.py, tests/linkerd/test_guard.py):
# PATCH, the caller evil/x and the literal `zz` are never learned, so a policy adding any of
# them admits something the allowlist does not
LEARNED_METHODS = ("GET", "POST", "PUT", "DELETE")
LEARNED_CALLERS = ("shop/web", "pay/billing", "ops/admin", "unknown")
_SEGMENTS = ("a", "b", "users", "orders", "{int}", "{uuid}", "{str}")


@st.composite
def learned_allowlists(draw: st.DrawFn, destination: str = "shop/api") -> Allowlist:
    """One service's allowlist: 1-6 rules of methods, templates (literals, typed and `{str}`
    variables, perhaps `{any}` last under a literal first segment) and callers (some without
    identity)."""
    rules = []
    for _ in range(draw(st.integers(1, 6))):
        segments = draw(st.lists(st.sampled_from(_SEGMENTS), max_size=4))
        if segments and not segments[0].startswith("{") and draw(st.booleans()):
            segments.append("{any}")  # under a literal: `/zz/...` stays unlearned
        callers = draw(st.sets(st.sampled_from(LEARNED_CALLERS), min_size=1))
        method = draw(st.sampled_from(LEARNED_METHODS))
        rules.append((method, "/" + "/".join(segments), dict.fromkeys(sorted(callers), 1)))
    return allowlist_of(*rules, destination=destination)
