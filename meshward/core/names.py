"""Names the cluster accepts: the one check for namespaces, workloads and service hosts."""

from __future__ import annotations

import ipaddress
import re

_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")  # RFC 1123, as Kubernetes
_HOST_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?", re.IGNORECASE)


def is_kubernetes_name(text: str) -> bool:
    """A DNS-1123 label: what a namespace (and a service or workload) name must be."""
    return _DNS_LABEL.fullmatch(text) is not None


def is_kubernetes_subdomain(text: str) -> bool:
    """A DNS-1123 subdomain: what a node (and most object) names must be."""
    return 0 < len(text) <= 253 and all(_DNS_LABEL.fullmatch(p) for p in text.split("."))


def is_ip(host: str) -> bool:
    if not host or not (host[0].isdigit() or ":" in host):  # a cheap no for host names
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def is_host_name(text: str) -> bool:
    """A DNS name (service.namespace.svc.cluster.local) or an IP address, as a cluster address
    in an Envoy config takes it."""
    if is_ip(text):
        return True
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(_HOST_LABEL.fullmatch(p) for p in name.split("."))
