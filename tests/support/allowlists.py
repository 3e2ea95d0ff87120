"""Small allowlists written by hand, for tests of what is made from one (the exports)."""

from __future__ import annotations

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
