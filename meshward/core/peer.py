"""Who is calling meshward's gRPC ports: identities from verified peers only.

The caller of ext_authz and of the tap is a sidecar, and its identity is what a TLS handshake
verified: the URI SANs of its client certificate (standalone mTLS, serve's own CA) or the element
meshward's own Istio sidecar appended to `x-forwarded-client-cert` after *it* verified the caller
(the Istio route). Nothing a caller writes (metadata, `context_extensions`, headers: see
wire.UNTRUSTED_HINTS) decides whose traffic it is; a hint may only narrow what is verified.

Pure functions: the I/O (gRPC's auth context, the metadata) is meshward.runtime.grpcpeer's.

The rule for the guarded workload (docs/security.md, "Identities on the gRPC ports"):
- namespace: the verified SPIFFE id's, always. A hint naming another namespace is refused.
- workload: a SPIFFE id names a service account, not a workload. A hinted workload is accepted
  when the pod index (the cluster's pods) says a pod of that workload runs under the verified
  service account in that namespace; without a pod index (standalone, no cluster) it is accepted
  as a label *inside* the verified namespace (it cannot reach another namespace's allowlists or
  mode). With no hint, the workload is the service account.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshward.core import wire
from meshward.core.names import is_kubernetes_name

# SPIFFE ids (spiffe.io, SPIFFE-ID spec): lower-case trust domain, no port, no userinfo, path
# segments without dot-segments; Istio's form names namespace and service account
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
MAX_SPIFFE_ID = 2048
MAX_XFCC = 64 * 1024  # bytes of one x-forwarded-client-cert value meshward reads

XFCC_HEADER = wire.XFCC_HEADER
DEFAULT_TRUST_DOMAIN = "cluster.local"


def meshward_identity(trust_domain: str = DEFAULT_TRUST_DOMAIN) -> str:
    """The SPIFFE id `meshward serve` presents by default: its ServiceAccount `meshward` in the
    namespace `meshward` (what `meshward install` creates)."""
    return f"spiffe://{trust_domain}/ns/meshward/sa/meshward"


class Refused(Exception):
    """The peer has no identity meshward can verify, or claims more than it has: the call is
    refused and teaches nothing. `reason` is a short code for the metric and the log."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail[:200]


# every reason code a refusal carries (the metric's label values are these, bounded)
REFUSALS = (
    "no-certificate",
    "no-spiffe-id",
    "several-uri-sans",
    "bad-spiffe-id",
    "foreign-trust-domain",
    "xfcc-missing",
    "xfcc-several-headers",
    "xfcc-malformed",
    "xfcc-not-by-meshward",
    "namespace-mismatch",
    "workload-not-of-service-account",
    "revoked",  # on serve's revocation list (core.revocation)
    "revocation-list-unreadable",  # fail closed while the list cannot be read or parsed
)


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """`spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`, as Istio issues them."""

    trust_domain: str
    namespace: str
    service_account: str

    @property
    def uri(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    def __str__(self) -> str:
        return self.uri


@functools.lru_cache(maxsize=4096)  # a mesh has few identities; every call names one
def parse_spiffe(uri: str) -> SpiffeId | None:
    """A workload SPIFFE id in Istio's form, or None: strict (no query, fragment, port,
    userinfo, percent-encoding, dot-segments or upper case; Kubernetes names for namespace and
    service account), so one identity has one spelling."""
    if len(uri) > MAX_SPIFFE_ID or not uri.startswith("spiffe://"):
        return None
    rest = uri[len("spiffe://") :]
    domain, slash, path = rest.partition("/")
    if not slash or not _TRUST_DOMAIN.fullmatch(domain):
        return None
    parts = path.split("/")
    if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
        return None
    namespace, account = parts[1], parts[3]
    if not is_kubernetes_name(namespace) or not _service_account_name(account):
        return None
    return SpiffeId(domain, namespace, account)


def _service_account_name(text: str) -> bool:
    """A ServiceAccount name is a DNS-1123 subdomain (dots allowed), at most 253 characters."""
    return 0 < len(text) <= 253 and all(is_kubernetes_name(p) for p in text.split("."))


def certificate_identity(uri_sans: Iterable[str], trust_domain: str) -> SpiffeId:
    """The one SPIFFE id of a verified client certificate's URI SANs, or Refused.

    An X.509 SVID carries exactly one URI SAN (SPIFFE X509-SVID spec); a certificate with none,
    several, or one that is not an Istio-form id of our trust domain proves no workload."""
    uris = list(uri_sans)
    if not uris:
        raise Refused("no-spiffe-id", "the client certificate has no URI SAN")
    if len(uris) > 1:
        raise Refused("several-uri-sans", f"{len(uris)} URI SANs")
    return _in_domain(uris[0], trust_domain)


def _in_domain(uri: str, trust_domain: str) -> SpiffeId:
    spiffe = parse_spiffe(uri)
    if spiffe is None:
        raise Refused("bad-spiffe-id", repr(uri[:120]))
    if spiffe.trust_domain != trust_domain:
        raise Refused("foreign-trust-domain", spiffe.trust_domain)
    return spiffe


# -- x-forwarded-client-cert (Envoy's format) ---------------------------------------------------

XfccElement = list[tuple[str, str]]  # (lower-case key, value), in order; keys may repeat


def parse_xfcc(value: str) -> list[XfccElement]:
    """Envoy's `x-forwarded-client-cert`: elements split by `,`, key=value pairs by `;`, values
    double-quoted when they hold `,;=` (a `\\"` inside quotes is a quote). ValueError when it is
    not that: an unterminated quote, a pair without `=`, an empty key, an empty element."""
    if len(value) > MAX_XFCC:
        raise ValueError(f"longer than {MAX_XFCC} bytes")
    elements: list[XfccElement] = []
    pairs: XfccElement = []
    i, n = 0, len(value)
    while True:
        eq = _find_unquoted_end(value, i, "=;,")
        if eq >= n or value[eq] != "=":
            raise ValueError(f"a pair without '=' at {i}")
        key = value[i:eq].strip().lower()
        if not key or not key.isascii() or not key.replace("-", "").isalnum():
            raise ValueError(f"a bad key at {i}")
        i = eq + 1
        if i < n and value[i] == '"':
            text, i = _quoted(value, i)
        else:
            end = _find_unquoted_end(value, i, ";,")
            text, i = value[i:end], end
            if '"' in text or "=" in text:
                raise ValueError(f"a stray quote or '=' in the value at {eq + 1}")
        pairs.append((key, text))
        if i >= n:
            elements.append(pairs)
            return elements
        if value[i] == ",":
            elements.append(pairs)
            pairs = []
        i += 1
        if i >= n:
            raise ValueError("ends with a separator")


def _find_unquoted_end(text: str, start: int, stops: str) -> int:
    for j in range(start, len(text)):
        if text[j] in stops:
            return j
    return len(text)


def _quoted(text: str, start: int) -> tuple[str, int]:
    """The quoted value starting at text[start] == '"' and the index after it."""
    out: list[str] = []
    j = start + 1
    while j < len(text):
        c = text[j]
        if c == "\\" and j + 1 < len(text) and text[j + 1] == '"':
            out.append('"')
            j += 2
            continue
        if c == '"':
            j += 1
            if j < len(text) and text[j] not in ";,":
                raise ValueError(f"text after a closing quote at {j}")
            return "".join(out), j
        out.append(c)
        j += 1
    raise ValueError("an unterminated quote")


def xfcc_identity(values: list[str], own: SpiffeId) -> SpiffeId:
    """The caller's identity from the XFCC element meshward's own sidecar appended, or Refused.

    Istio's inbound sidecar verifies the caller's certificate and appends one element (`By=` its
    own, i.e. meshward's, identity; `URI=` the caller's) to whatever XFCC the caller sent
    (APPEND_FORWARD), or replaces it (SANITIZE_SET). So only the *last* element is the sidecar's;
    any earlier one, whatever its `By=`, is the caller's writing and ignored. Several header
    fields are refused (Envoy coalesces its own into one)."""
    if not values:
        raise Refused("xfcc-missing", "no x-forwarded-client-cert: not through meshward's sidecar")
    if len(values) > 1:
        raise Refused("xfcc-several-headers", f"{len(values)} header fields")
    try:
        elements = parse_xfcc(values[0])
    except ValueError as exc:
        raise Refused("xfcc-malformed", str(exc)) from None
    last = elements[-1]
    by = [v for k, v in last if k == "by"]
    if by != [own.uri]:
        raise Refused("xfcc-not-by-meshward", f"By={by[:2]!r}")
    uris = [v for k, v in last if k == "uri"]
    if not uris:
        raise Refused("no-spiffe-id", "the sidecar verified no URI SAN")
    if len(uris) > 1:
        raise Refused("several-uri-sans", f"{len(uris)} URI values")
    return _in_domain(uris[0], own.trust_domain)


# -- whose traffic it is ------------------------------------------------------------------------

# the pod index: (namespace, workload, service account) -> does a pod of that workload run under
# that service account? None: no pod index (standalone)
WorkloadBinding = Callable[[str, str, str], bool]


def guarded(
    peer: SpiffeId,
    namespace_hint: str,
    workload_hint: str,
    binding: WorkloadBinding | None = None,
) -> tuple[str, str]:
    """(namespace, workload) the verified sidecar `peer` guards, hints narrowing it only (the
    module's rule); Refused when a hint contradicts the verified identity."""
    if namespace_hint and namespace_hint != peer.namespace:
        raise Refused(
            "namespace-mismatch", f"verified {peer.namespace!r}, claimed {namespace_hint[:64]!r}"
        )
    if not workload_hint:
        return peer.namespace, peer.service_account
    if binding is not None and not binding(peer.namespace, workload_hint, peer.service_account):
        raise Refused(
            "workload-not-of-service-account",
            f"{workload_hint[:64]!r} under {peer.service_account!r}",
        )
    if not _service_account_name(workload_hint):
        raise Refused("workload-not-of-service-account", f"not a name: {workload_hint[:64]!r}")
    return peer.namespace, workload_hint
