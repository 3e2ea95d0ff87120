"""One-line errors for people: RBAC forbidden, unauthorized, unreachable, bad configuration.

The client raises `ApiException` whose str() is a multi-line dump of headers and JSON. A user
of `meshward` (or an operator reading the controller's log) needs one line that says what to
fix, e.g. ``RBAC forbidden: user "alice" cannot list configmaps in namespace "default"``, which
names the verb and resource to add to a Role. `from_api_exception` builds that from the API
server's Status body; `translate_errors()` wraps a block of client calls.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException

# kube-apiserver's RBAC denial text (k8s.io/apiserver/pkg/endpoints/handlers/responsewriters):
#   User "alice" cannot list resource "configmaps" in API group "" in the namespace "default"
#   User "alice" cannot get resource "nodes" in API group "" at the cluster scope
#   User "alice" cannot get path "/metrics"
_FORBIDDEN_RE = re.compile(
    r'(?:User|user) "(?P<user>[^"]*)" cannot (?P<verb>\S+) '
    r'(?:resource "(?P<resource>[^"]+)"(?: in API group "(?P<group>[^"]*)")?'
    r'(?: in the namespace "(?P<ns>[^"]*)"| at the cluster scope)?'
    r'|path "(?P<path>[^"]*)")'
)


class KubeError(Exception):
    """Base of meshward.kube errors: str() is one line fit to show a user without a traceback."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KubeConfigError(KubeError):
    """No usable client configuration (no kubeconfig given, not in a pod, bad file...)."""


class KubeUnauthorized(KubeError):
    """401: the API server does not accept the credentials."""


class KubeForbidden(KubeError):
    """403: authenticated but RBAC denies `verb` on `resource`."""

    def __init__(
        self,
        message: str,
        *,
        user: str | None = None,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
    ) -> None:
        super().__init__(message, 403)
        self.user, self.verb, self.resource, self.namespace = user, verb, resource, namespace


class KubeUnavailable(KubeError):
    """The API server could not be reached (refused, timed out, TLS failure)."""


def _status_body(exc: ApiException) -> dict[str, Any]:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return {}
    try:
        parsed = json.loads(body)
    except ValueError:
        return {"message": str(body).strip().splitlines()[0] if str(body).strip() else ""}
    return parsed if isinstance(parsed, dict) else {}


def _resource_name(resource: str, group: str | None) -> str:
    """kubectl's spelling: `leases.coordination.k8s.io`, `pods/status`, `configmaps`."""
    if not group:
        return resource
    base, _, sub = resource.partition("/")
    return f"{base}.{group}" + (f"/{sub}" if sub else "")


def from_api_exception(
    exc: ApiException,
    *,
    verb: str | None = None,
    resource: str | None = None,
    namespace: str | None = None,
    server: str | None = None,
) -> KubeError:
    """The one-line KubeError for an ApiException.

    `verb`/`resource`/`namespace` are what the caller attempted; they are used when the
    server's Status does not say (a proxy's bare 403, an empty body).
    """
    status = _status_body(exc)
    message = " ".join(str(status.get("message") or exc.reason or "").split())
    code = exc.status
    if code == 403:
        m = _FORBIDDEN_RE.search(message)
        if m and m.group("path") is not None:
            return KubeForbidden(
                f'RBAC forbidden: user "{m["user"]}" cannot {m["verb"]} path "{m["path"]}"',
                user=m["user"],
                verb=m["verb"],
                resource=m["path"],
            )
        if m:
            res = _resource_name(m["resource"], m["group"])
            where = f' in namespace "{m["ns"]}"' if m["ns"] else " (cluster-wide)"
            return KubeForbidden(
                f'RBAC forbidden: user "{m["user"]}" cannot {m["verb"]} {res}{where}',
                user=m["user"],
                verb=m["verb"],
                resource=res,
                namespace=m["ns"] or None,
            )
        details = status.get("details") or {}
        res = resource or _resource_name(str(details.get("kind") or "?"), details.get("group"))
        what = f"cannot {verb or '?'} {res}" + (f' in namespace "{namespace}"' if namespace else "")
        return KubeForbidden(
            f"RBAC forbidden: {what}" + (f" ({message})" if message else ""),
            verb=verb,
            resource=res,
            namespace=namespace,
        )
    if code == 401:
        at = f" at {server}" if server else ""
        return KubeUnauthorized(
            f"unauthorized: the Kubernetes API server{at} rejected the credentials "
            "(token missing, unknown or expired)",
            401,
        )
    if code is None or code == 0:
        return KubeUnavailable(f"Kubernetes API request failed: {exc.reason or message}")
    attempted = " ".join(x for x in (verb, resource) if x)
    prefix = f"{attempted}: " if attempted else ""
    return KubeError(
        f"{prefix}Kubernetes API error {code} {exc.reason or ''}".rstrip()
        + (f": {message}" if message and message != exc.reason else ""),
        code,
    )


def describe(exc: BaseException) -> str:
    """One line for any exception a client call can raise (for log lines)."""
    if isinstance(exc, KubeError):
        return str(exc)
    if isinstance(exc, ApiException):
        return str(from_api_exception(exc))
    if isinstance(exc, urllib3.exceptions.HTTPError):
        reason = getattr(exc, "reason", None) or exc
        return f"cannot reach the Kubernetes API server: {' '.join(str(reason).split())}"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


@contextlib.contextmanager
def translate_errors(
    *,
    verb: str | None = None,
    resource: str | None = None,
    namespace: str | None = None,
    server: str | None = None,
) -> Iterator[None]:
    """Turn ApiException and connection errors raised in the block into one-line KubeErrors."""
    try:
        yield
    except ApiException as exc:
        raise from_api_exception(
            exc, verb=verb, resource=resource, namespace=namespace, server=server
        ) from exc
    except urllib3.exceptions.HTTPError as exc:
        raise KubeUnavailable(describe(exc)) from exc
