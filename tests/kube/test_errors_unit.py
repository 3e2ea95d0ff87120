"""The one-line error texts, from hand-made API responses (no server needed)."""

from __future__ import annotations

import json

from kubernetes.client.exceptions import ApiException

from meshward.kube import KubeError, KubeForbidden, from_api_exception


def _exc(status: int, body: object, reason: str = "Forbidden") -> ApiException:
    return ApiException(
        status=status, reason=reason, body=json.dumps(body) if not isinstance(body, str) else body
    )


def test_subresource_and_group() -> None:
    msg = (
        'pods "p" is forbidden: User "system:serviceaccount:m:agent" cannot patch resource '
        '"pods/status" in API group "" in the namespace "prod"'
    )
    err = from_api_exception(_exc(403, {"kind": "Status", "message": msg}))
    assert str(err) == (
        'RBAC forbidden: user "system:serviceaccount:m:agent" cannot patch '
        'pods/status in namespace "prod"'
    )
    msg = (
        'envoyfilters.networking.istio.io is forbidden: User "bob" cannot watch resource '
        '"envoyfilters/status" in API group "networking.istio.io" at the cluster scope'
    )
    err = from_api_exception(_exc(403, {"message": msg}))
    assert str(err) == (
        'RBAC forbidden: user "bob" cannot watch '
        "envoyfilters.networking.istio.io/status (cluster-wide)"
    )


def test_bare_403_uses_what_the_caller_attempted() -> None:
    err = from_api_exception(
        _exc(403, "", reason="Forbidden"), verb="get", resource="leases", namespace="ns"
    )
    assert isinstance(err, KubeForbidden)
    assert str(err).startswith('RBAC forbidden: cannot get leases in namespace "ns"')


def test_other_status_is_one_line() -> None:
    err = from_api_exception(_exc(422, {"message": "bad\nthing   here"}, reason="Invalid"))
    assert type(err) is KubeError and err.status == 422
    assert str(err) == "Kubernetes API error 422 Invalid: bad thing here"
