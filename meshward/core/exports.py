"""What the native-policy exports share: which learned destinations and callers a mesh can name.

An export turns the learned allowlist into another system's policy (Istio AuthorizationPolicy,
Linkerd policy, OpenAPI). Each such system can say less than meshward learned: every rule,
caller or destination it cannot carry, or carries only wider, becomes a `Note`, so nobody
mistakes the export for the whole allowlist (docs/exports.md).

Destinations and callers are allowlist keys (`Identity.key`): `namespace/name`, where a
caller's name is the service account of its verified identity (the SPIFFE id's or Linkerd's)
and a destination's is its workload. Only keys whose parts are Kubernetes names can become a
policy's selector or principal; `unknown` is a caller without identity (plaintext).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshward.core.allowlist import Allowlist, EndpointRule, ServiceProfile
from meshward.core.names import is_kubernetes_name, is_kubernetes_subdomain

UNAUTHENTICATED = "unknown"  # the key of a caller that presented no identity
# on every exported object, with the format: what `kubectl apply --prune -l` selects (meshward's
# own EnvoyFilters carry app.kubernetes.io/managed-by=meshward too, and must not be pruned)
EXPORT_LABEL = "meshward.io/export"
ModeOf = Callable[[str], str]  # namespace -> its mode (Engine.mode_of)


@dataclass(frozen=True, slots=True)
class Workload:
    """A destination workload or a caller's service account, both in a namespace."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def destination_workload(key: str) -> Workload | None:
    """The workload a destination key names, or None when it is no Kubernetes name (a host,
    an IP, a hostile string): a label value and object names are built from it."""
    namespace, slash, name = key.partition("/")
    if slash and is_kubernetes_name(namespace) and is_kubernetes_name(name):
        return Workload(namespace, name)
    return None


def caller_account(key: str) -> Workload | None:
    """The namespace and service account a caller key names (a service account name is a
    DNS subdomain), or None."""
    namespace, slash, name = key.partition("/")
    if slash and is_kubernetes_name(namespace) and is_kubernetes_subdomain(name):
        return Workload(namespace, name)
    return None


@dataclass(frozen=True, slots=True)
class Note:
    """One thing an export left out or made wider than meshward's rule, and why."""

    destination: str
    what: str  # a rule ("GET /x/{int}"), a caller, or "" for the whole destination
    why: str

    def line(self) -> str:
        where = f"{self.destination} {self.what}".strip()
        return f"{where}: {self.why}"

    def as_dict(self) -> dict[str, str]:
        return {"destination": self.destination, "what": self.what, "why": self.why}


@dataclass
class Export:
    """The objects (Kubernetes objects or OpenAPI documents) and the notes of one export."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def targets(
    allowlist: Allowlist, destination: str | None, notes: list[Note]
) -> list[tuple[Workload, ServiceProfile]]:
    """The profiles to export (one, or all in key order) with their workloads; a destination
    that is no Kubernetes workload is noted and left out. Raises KeyError for an unknown one."""
    if destination is not None:
        if destination not in allowlist.services:
            raise KeyError(destination)
        keys = [destination]
    else:
        keys = sorted(allowlist.services)
    out = []
    for key in keys:
        workload = destination_workload(key)
        if workload is None:
            notes.append(Note(key[:200], "", "not a namespace/workload of Kubernetes names"))
            continue
        out.append((workload, allowlist.services[key]))
    return out


def rule_methods(method: str) -> tuple[str, ...]:
    """The methods a rule's method allows in native policy: meshward's GET rule admits HEAD."""
    return ("GET", "HEAD") if method == "GET" else (method,)


def rule_callers(profile: ServiceProfile, rule: EndpointRule) -> list[str]:
    """Who may call a rule: its own learned callers; a rule without any (written by a person)
    takes the service's, as meshward's scoring checks only those then."""
    return sorted(rule.sources or profile.sources)


def enforced(mode: str) -> bool:
    """Does meshward deny in this mode? Only then may an exported policy deny: elsewhere it
    runs as dry-run/audit, so it mirrors what meshward does."""
    return mode == "enforce"
