"""TokenReview and SubjectAccessReview: who a bearer token belongs to, and what RBAC lets them do.

`meshward serve` in a cluster authenticates its HTTP callers with their ServiceAccount (or any
Kubernetes) tokens and authorizes each route against RBAC, as kube-rbac-proxy and the
aggregated API servers do. These calls are blocking (the `kubernetes` client); callers run
them off their event loop. Errors come out as one-line `KubeError`s: `KubeUnavailable` when the
API server cannot be reached, `KubeForbidden` when serve itself lacks `create` on the reviews;
callers must treat both as "cannot decide" and refuse (fail closed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kubernetes import client

from meshward.kube.errors import translate_errors

# What the service-account authenticator adds for a token bound to a Pod (TokenRequest with a
# boundObjectRef): the API server checked, at review time, that this pod still exists.
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
REQUEST_TIMEOUT = 5.0  # seconds for one review: a caller waits this long at most, then 503


@dataclass(frozen=True)
class UserInfo:
    """A user as the API server vouched for it (TokenReview status.user)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()  # sorted (key, values)

    @property
    def service_account(self) -> tuple[str, str] | None:
        """(namespace, name) of a ServiceAccount user, else None."""
        if not self.username.startswith(SERVICE_ACCOUNT_PREFIX):
            return None
        ns, sep, name = self.username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
        return (ns, name) if sep and ns and name and ":" not in name else None


@dataclass(frozen=True)
class Access:
    """One authorization question: `verb` on a resource of `group` (in `namespace`, or cluster
    wide when empty), or `verb` on a non-resource `path`."""

    verb: str
    group: str = ""
    resource: str = ""
    namespace: str = ""
    path: str = ""


class Reviewer:
    """TokenReviews and SubjectAccessReviews through one API client (serve's own identity)."""

    def __init__(self, api: client.ApiClient, audiences: Sequence[str] = ()) -> None:
        self.authn = client.AuthenticationV1Api(api)
        self.authz = client.AuthorizationV1Api(api)
        self.audiences = list(audiences)

    def review_token(self, token: str) -> UserInfo | None:
        """The token's user, or None when the API server does not accept it (unknown, expired,
        revoked, its bound pod gone, or minted for another audience)."""
        spec = client.V1TokenReviewSpec(token=token, audiences=self.audiences or None)
        with translate_errors(verb="create", resource="tokenreviews.authentication.k8s.io"):
            answer = self.authn.create_token_review(
                client.V1TokenReview(spec=spec), _request_timeout=REQUEST_TIMEOUT
            )
        return user_from_status(answer.status, self.audiences)

    def allowed(self, user: UserInfo, access: Access) -> bool:
        """Whether RBAC (or the cluster's authorizer) lets `user` do `access`."""
        spec = client.V1SubjectAccessReviewSpec(
            user=user.username,
            uid=user.uid or None,
            groups=list(user.groups) or None,
            extra={k: list(v) for k, v in user.extra} or None,
        )
        if access.path:
            spec.non_resource_attributes = client.V1NonResourceAttributes(
                path=access.path, verb=access.verb
            )
        else:
            spec.resource_attributes = client.V1ResourceAttributes(
                group=access.group,
                resource=access.resource,
                verb=access.verb,
                namespace=access.namespace or None,
            )
        with translate_errors(verb="create", resource="subjectaccessreviews.authorization.k8s.io"):
            answer = self.authz.create_subject_access_review(
                client.V1SubjectAccessReview(spec=spec), _request_timeout=REQUEST_TIMEOUT
            )
        status = answer.status
        return bool(status is not None and status.allowed is True and not status.denied)


def user_from_status(status: object, audiences: Sequence[str] = ()) -> UserInfo | None:
    """The verified user of a TokenReview status, or None. Strict about shape: anything but an
    authenticated status with a non-empty username (and, when audiences were asked for, one of
    them in status.audiences, as the API documents clients must check) is no user."""
    if status is None or getattr(status, "authenticated", None) is not True:
        return None
    if getattr(status, "error", None):
        return None
    if audiences:
        got = getattr(status, "audiences", None) or []
        if not isinstance(got, list) or not set(audiences) & {a for a in got if isinstance(a, str)}:
            return None
    user = getattr(status, "user", None)
    name = getattr(user, "username", None)
    if not isinstance(name, str) or not name:
        return None
    uid = getattr(user, "uid", None)
    groups = getattr(user, "groups", None) or []
    extra = getattr(user, "extra", None) or {}
    if not isinstance(groups, list) or not isinstance(extra, dict):
        return None
    return UserInfo(
        username=name,
        uid=uid if isinstance(uid, str) else "",
        groups=tuple(g for g in groups if isinstance(g, str)),
        extra=tuple(
            sorted(
                (k, tuple(v for v in values if isinstance(v, str)))
                for k, values in extra.items()
                if isinstance(k, str) and isinstance(values, list)
            )
        ),
    )
