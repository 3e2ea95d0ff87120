"""tests/kube: the Kubernetes client layer against a real kube-apiserver (tests/support/apiserver.py)."""

from tests.support.apiserver import kube_cluster, kube_namespace  # noqa: F401 (fixtures)
