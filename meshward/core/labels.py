"""The labels meshward reads and writes on Kubernetes objects, in one place.

`meshward.io/mode` on a Namespace is that namespace's mode (the controller, the cluster store and
the mesh guard read it; meshward's own objects carry the mode they were rendered for).
`app.kubernetes.io/managed-by=meshward` marks the objects meshward made, which the controller
prunes by. Naming them here also spares a caller that only needs the names the import of Envoy's
generated protos (about 2 s of a CLI start).
"""

from __future__ import annotations

MODE_LABEL = "meshward.io/mode"
MANAGED_BY = {"app.kubernetes.io/managed-by": "meshward"}
MANAGED_SELECTOR = ",".join(f"{k}={v}" for k, v in MANAGED_BY.items())
