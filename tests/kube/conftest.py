"""tests/kube: the Kubernetes client layer against a real API server (tests/support)."""

from tests.support.apiserver import kube_cluster, kube_namespace  # noqa: F401 (fixtures)
