"""The labels meshward puts on the Kubernetes objects it makes, in one place.

The renderers of EnvoyFilters, AuthorizationPolicies and Linkerd policy all stamp them, and the
controller prunes by them; naming them here also spares a caller that only needs the names the
import of Envoy's generated protos (about 2 s of a CLI start).
"""

from __future__ import annotations

MANAGED_BY = {"app.kubernetes.io/managed-by": "meshward"}
