"""Where the client configuration comes from: an explicit kubeconfig, else the service account.

Order (deliberately short, so a daemon never picks up a stray ~/.kube/config):

1. `kubeconfig=PATH` (the CLI's ``--kubeconfig``), optionally with `context`;
2. in-cluster: ``KUBERNETES_SERVICE_HOST``/``_PORT`` and the service-account files
   (``token``, ``ca.crt``, ``namespace``) under /var/run/secrets/kubernetes.io/serviceaccount;
3. otherwise `KubeConfigError` with one line saying what to pass.

Every call returns its own `ApiClient`; the library's global default configuration is never
set, so several clients (the controller's, a TokenReview client, tests' users) coexist.

Token rotation in cluster: kubernetes 37's in-cluster loader installs a
``refresh_api_key_hook`` that the client calls before every request; it re-reads the token file
once the last read is older than a refresh period (1 min in the library; `token_refresh_seconds`
here). The kubelet rotates projected tokens at 80 % of their lifetime (>= 10 min), so a
long-running controller keeps working across rotations. Kubeconfig tokens are read once.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from pathlib import Path

import yaml
from kubernetes import client
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import InClusterConfigLoader
from kubernetes.config.kube_config import new_client_from_config

from meshward.kube.errors import KubeConfigError

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def load_client(
    kubeconfig: str | os.PathLike[str] | None = None,
    context: str | None = None,
    *,
    service_account_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    token_refresh_seconds: float = 60.0,
) -> client.ApiClient:
    """An ApiClient from `kubeconfig` (and `context`), else from the pod's service account.

    Raises KubeConfigError (one line, no traceback needed) when neither works.
    `service_account_dir` and `environ` exist for tests and unusual mounts.
    """
    if kubeconfig is not None:
        return _from_kubeconfig(Path(kubeconfig), context)
    env = os.environ if environ is None else environ
    sa_dir = Path(service_account_dir) if service_account_dir else SERVICE_ACCOUNT_DIR
    if not env.get("KUBERNETES_SERVICE_HOST"):
        raise KubeConfigError(
            "no Kubernetes configuration: pass --kubeconfig PATH, or run in a pod "
            "(KUBERNETES_SERVICE_HOST is not set)"
        )
    return _in_cluster(sa_dir, env, token_refresh_seconds)


def _from_kubeconfig(path: Path, context: str | None) -> client.ApiClient:
    if not path.is_file():
        raise KubeConfigError(f"kubeconfig {path}: no such file")
    try:
        return new_client_from_config(config_file=str(path), context=context, persist_config=False)
    except ConfigException as exc:
        raise KubeConfigError(f"kubeconfig {path}: {_one_line(exc)}") from exc
    except (yaml.YAMLError, OSError, TypeError, AttributeError, KeyError) as exc:
        # The loader indexes the YAML blindly: a malformed file surfaces as these.
        raise KubeConfigError(f"kubeconfig {path}: unreadable ({_one_line(exc)})") from exc


class _Loader(InClusterConfigLoader):
    """The library's in-cluster loader with a settable token re-read period."""

    def __init__(self, token: Path, ca: Path, env: Mapping[str, str], refresh: float) -> None:
        super().__init__(
            token_filename=str(token), cert_filename=str(ca), try_refresh_token=True, environ=env
        )
        self._token_refresh_period = datetime.timedelta(seconds=refresh)


def _in_cluster(sa_dir: Path, env: Mapping[str, str], refresh: float) -> client.ApiClient:
    token, ca = sa_dir / "token", sa_dir / "ca.crt"
    if not token.is_file():
        raise KubeConfigError(
            f"in-cluster configuration: no service-account token at {token} "
            "(automountServiceAccountToken: false on the pod?)"
        )
    cfg = client.Configuration()
    try:
        _Loader(token, ca, env, refresh).load_and_set(cfg)
    except (ConfigException, OSError) as exc:
        raise KubeConfigError(f"in-cluster configuration ({sa_dir}): {_one_line(exc)}") from exc
    return client.ApiClient(cfg)


def in_cluster_namespace(
    service_account_dir: str | os.PathLike[str] | None = None, default: str = "default"
) -> str:
    """The pod's own namespace (the service account's `namespace` file), else `default`."""
    sa_dir = Path(service_account_dir) if service_account_dir else SERVICE_ACCOUNT_DIR
    try:
        return (sa_dir / "namespace").read_text().strip() or default
    except OSError:
        return default


def token_client(
    server: str,
    token: str,
    *,
    ca_file: str | os.PathLike[str] | None = None,
    insecure: bool = False,
) -> client.ApiClient:
    """An ApiClient for a bearer `token` at `server` (TokenReview callers, tests, tools)."""
    cfg = client.Configuration()
    cfg.host = server
    cfg.api_key = {"BearerToken": token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    if insecure:
        cfg.verify_ssl = False
    elif ca_file is not None:
        cfg.ssl_ca_cert = str(ca_file)
    return client.ApiClient(cfg)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
