"""meshward.kube.review without a server: property-based fuzzing of the TokenReview answers it
reads (any shape, any types: never an exception, a user only from an authenticated status with a
name and, when audiences were asked for, one of them granted) and ServiceAccount names."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from meshward.kube.review import UserInfo, user_from_status

ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
NAMES = st.text(min_size=0, max_size=40)


@st.composite
def statuses(draw: st.DrawFn) -> Any:
    """Real client objects with plausible fields, and loose objects with anything in them."""
    if draw(st.booleans()):
        user = client.V1UserInfo(
            username=draw(st.none() | NAMES),
            uid=draw(st.none() | NAMES),
            groups=draw(st.none() | st.lists(NAMES, max_size=4)),
            extra=draw(st.none() | st.dictionaries(NAMES, st.lists(NAMES, max_size=3), max_size=3)),
        )
        return client.V1TokenReviewStatus(
            authenticated=draw(st.none() | st.booleans()),
            audiences=draw(st.none() | st.lists(st.sampled_from(["meshward", "api", ""]))),
            error=draw(st.none() | st.just("") | NAMES),
            user=draw(st.none() | st.just(user)),
        )
    return SimpleNamespace(
        authenticated=draw(ANY),
        audiences=draw(ANY),
        error=draw(ANY),
        user=SimpleNamespace(username=draw(ANY), uid=draw(ANY), groups=draw(ANY), extra=draw(ANY)),
    )


@settings(max_examples=400, deadline=None)
@given(statuses(), st.sampled_from([(), ("meshward",), ("meshward", "other")]))
def test_any_tokenreview_answer_is_a_user_only_when_it_says_so(
    status: Any, audiences: tuple[str, ...]
) -> None:
    got = user_from_status(status, audiences)
    if got is None:
        return
    assert status.authenticated is True and not status.error
    assert isinstance(got.username, str) and got.username == status.user.username
    assert all(isinstance(g, str) for g in got.groups)
    assert all(isinstance(k, str) and all(isinstance(v, str) for v in vs) for k, vs in got.extra)
    if audiences:
        assert set(audiences) & set(status.audiences)


def test_unauthenticated_or_wrong_audience_is_no_user() -> None:
    user = client.V1UserInfo(username="system:serviceaccount:ns:sa", uid="u")
    ok = client.V1TokenReviewStatus(authenticated=True, audiences=["meshward"], user=user)
    assert user_from_status(ok, ("meshward",)) == UserInfo("system:serviceaccount:ns:sa", "u")
    wrong = client.V1TokenReviewStatus(authenticated=True, audiences=["api"], user=user)
    assert user_from_status(wrong, ("meshward",)) is None
    assert user_from_status(wrong, ()) is not None
    no = client.V1TokenReviewStatus(authenticated=False, user=user)
    assert user_from_status(no) is None
    assert user_from_status(None) is None


@given(NAMES)
def test_service_account_names(name: str) -> None:
    sa = UserInfo(name).service_account
    if sa is not None:
        assert name == f"system:serviceaccount:{sa[0]}:{sa[1]}"
        assert sa[0] and sa[1] and ":" not in sa[1]
    assert UserInfo("system:serviceaccount:shop:web").service_account == ("shop", "web")
    assert UserInfo("system:serviceaccount:shop").service_account is None
    assert UserInfo("alice").service_account is None
