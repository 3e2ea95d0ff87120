"""`meshward install`: every object a cluster needs, as `linkerd install` prints its own.

Pure data: `render(options)` returns the objects in apply order; the command prints them as a
YAML stream (`meshward install | kubectl apply -f -`). Three components, each with its own
ServiceAccount and only the verbs it uses:

- **serve** (Deployment, 2 replicas spread over nodes, PodDisruptionBudget, probes): ext_authz
  9191, tap 9192, HTTP 9193. Every sidecar talks to it, so it holds no rerouting power.
- **controller** (Deployment of its own, one active leader through a Lease): writes the
  EnvoyFilters of every Istio namespace, which is rerouting power, so it lives apart.
- **node-tap** (DaemonSet): packet capture in pods' network namespaces, the only part that
  runs as root, with NET_RAW (AF_PACKET) and SYS_ADMIN (setns) and nothing else by default;
  hostPID and SYS_PTRACE only when it must read /proc/PID/ns/net (a runtime that does not name
  pod namespaces under /var/run/netns, or a node interface such as the bridge to watch).
  Each privilege is justified in docs/node-tap.md.

Every container: read-only root filesystem, no privilege escalation, all other capabilities
dropped, seccomp RuntimeDefault; serve and the controller run as uid 10001.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshward import __version__
from meshward.core.labels import MANAGED_BY, MODE_LABEL

GROUP = "meshward.io"
MANAGED = {"app.kubernetes.io/part-of": "meshward", **MANAGED_BY}
UID = 10001
AUTHZ_PORT, TAP_PORT, HTTP_PORT = 9191, 9192, 9193
CONTROLLER_METRICS_PORT = 9194  # the controller's /metrics and /healthz
# the controller's audit port (`--audit-webhook-secret`): the API server's audit webhook
AUDIT_PORT = 9195
AUDIT_DIR = "/var/run/secrets/meshward-audit"
AUDIT_VERBS = ["create", "update", "patch", "delete", "deletecollection"]
ISTIO_STYLES = ("envoyfilter", "extension-provider")

Obj = dict[str, Any]


@dataclass(frozen=True)
class InstallOptions:
    namespace: str = "meshward"
    image: str = f"ghcr.io/meshward/meshward:{__version__}"
    replicas: int = 2
    istio_style: str = "envoyfilter"
    kube_version: tuple[int, int] = (1, 31)
    # a Secret (key `dsn`) holding the PostgreSQL DSN of the shared alerts store; None: each
    # serve replica keeps its alerts in its own SQLite file (one replica's history each)
    alerts_dsn_secret: str | None = None
    # node-tap: node interfaces to watch (a bridge such as cni0), and the /proc scan for
    # runtimes that do not name pod network namespaces under /var/run/netns
    node_ifaces: tuple[str, ...] = ()
    node_proc_scan: bool = False
    # a Secret (keys tls.crt, tls.key, token) for the controller's audit webhook port: the API
    # server's audit Events name the user of each guard finding; None: no audit port
    audit_webhook_secret: str | None = None

    @property
    def service_host(self) -> str:
        return f"meshward.{self.namespace}.svc.cluster.local"


def parse_kube_version(text: str) -> tuple[int, int]:
    """'1.20' or 'v1.20.2' -> (1, 20); a clear ValueError otherwise."""
    parts = text.strip().lstrip("v").split(".")
    if len(parts) < 2 or not all(p.isdigit() and len(p) <= 3 for p in parts[:2]):
        raise ValueError(f"--kube-version {text!r}: expected MAJOR.MINOR such as 1.20")
    return int(parts[0]), int(parts[1])


def _meta(name: str, namespace: str | None = None, component: str | None = None) -> Obj:
    labels = dict(MANAGED)
    if component:
        labels["app.kubernetes.io/name"] = f"meshward-{component}"
    meta: Obj = {"name": name, "labels": labels}
    if namespace:
        meta["namespace"] = namespace
    return meta


def _selector(component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": f"meshward-{component}"}


def _restricted(uid: int | None = UID, add: list[str] | None = None) -> Obj:
    """A container's security context: read-only root, all capabilities dropped but `add`,
    seccomp RuntimeDefault; non-root unless `uid` is None (the node tap)."""
    ctx: Obj = {
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"], **({"add": add} if add else {})},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if not add or "SYS_ADMIN" not in add:
        # the API refuses allowPrivilegeEscalation=false next to CAP_SYS_ADMIN
        ctx["allowPrivilegeEscalation"] = False
    if uid is None:
        ctx["runAsUser"] = 0
    else:
        ctx.update(runAsNonRoot=True, runAsUser=uid, runAsGroup=uid)
    return ctx


# ---- custom resources


def crds() -> list[Obj]:
    """The meshward.io types: one Allowlist per destination service (rules in spec, counts
    and first/last seen in status), namespaced with the service."""
    rule = {
        "type": "object",
        "required": ["method", "path"],
        "properties": {
            "method": {"type": "string", "maxLength": 32},
            "path": {"type": "string", "maxLength": 2048},
        },
        "x-kubernetes-preserve-unknown-fields": True,
    }
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["destination"],
                "properties": {
                    "destination": {"type": "string", "maxLength": 317},
                    "rules": {"type": "array", "items": rule, "maxItems": 4096},
                    "removed": {"type": "array", "items": rule, "maxItems": 4096},
                },
                "x-kubernetes-preserve-unknown-fields": True,
            },
            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        },
    }
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": _meta(f"allowlists.{GROUP}"),
            "spec": {
                "group": GROUP,
                "scope": "Namespaced",
                "names": {
                    "plural": "allowlists",
                    "singular": "allowlist",
                    "kind": "Allowlist",
                    "shortNames": ["mwal"],
                    "categories": ["meshward"],
                },
                "versions": [
                    {
                        "name": "v1alpha1",
                        "served": True,
                        "storage": True,
                        "subresources": {"status": {}},
                        "schema": {"openAPIV3Schema": schema},
                        "additionalPrinterColumns": [
                            {
                                "name": "Destination",
                                "type": "string",
                                "jsonPath": ".spec.destination",
                            },
                            {
                                "name": "Age",
                                "type": "date",
                                "jsonPath": ".metadata.creationTimestamp",
                            },
                        ],
                    }
                ],
            },
        }
    ]


# ---- identities and permissions


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> Obj:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


READ = ["get", "list", "watch"]
PERMISSIONS: dict[str, list[Obj]] = {
    # serve: the shared allowlists, modes from namespace labels (read only: who may switch
    # enforcement off is decided by RBAC on namespaces, never by serve), pods to check that a
    # workload belongs to a service account, token and access reviews for its HTTP callers
    "serve": [
        _rule([GROUP], ["allowlists"], [*READ, "create", "update", "patch"]),
        _rule([GROUP], ["allowlists/status"], ["get", "update", "patch"]),
        _rule([""], ["namespaces", "pods"], READ),
        _rule(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
        _rule(["authorization.k8s.io"], ["subjectaccessreviews"], ["create"]),
        _rule([""], ["events"], ["create", "patch"]),
    ],
    # controller: EnvoyFilters and DestinationRules in the namespaces it manages, namespaces to
    # follow their labels, token and access reviews for the callers of its /metrics; the mesh
    # guard reads (never writes) the mesh's policy objects and the pods, sends its findings to
    # serve and reads serve's learned allowlists
    "controller": [
        _rule([""], ["namespaces"], READ),
        _rule(
            ["networking.istio.io"],
            ["envoyfilters", "destinationrules"],
            [*READ, "create", "update", "patch", "delete"],
        ),
        _rule([""], ["events"], ["create", "patch"]),
        _rule(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
        _rule(["authorization.k8s.io"], ["subjectaccessreviews"], ["create"]),
        _rule([""], ["pods"], READ),
        _rule(["networking.istio.io"], ["sidecars", "destinationrules"], READ),
        _rule(["security.istio.io"], ["peerauthentications", "authorizationpolicies"], READ),
        _rule(
            ["policy.linkerd.io"],
            ["servers", "authorizationpolicies", "meshtlsauthentications", "httproutes"],
            READ,
        ),
        _rule([GROUP], ["findings"], ["create"]),
        # on serve's API, GET /api/v1/allowlist: the learned allowlists the guard compares ALLOW
        # policies with (Mesh.Policy.Widened); list only, never update
        _rule([GROUP], ["allowlists"], ["list"]),
    ],
    # node-tap: the pods of its own node (a field selector; the list verb cannot be narrowed
    # further by RBAC) and their namespaces' injection annotation; on serve's API (authorized
    # there by SubjectAccessReview): send observations, read the modes; Services, label-selected
    # to the control plane's (istiod, Linkerd's components), for Mesh.ControlPlane.Access
    "node-tap": [
        _rule([""], ["pods", "namespaces", "services"], READ),
        _rule([GROUP], ["observations"], ["create"]),
        _rule([GROUP], ["modes"], ["get", "list"]),
    ],
}
# Roles for the people and tools calling serve's HTTP API (docs/security.md has the table):
# bound by the cluster's admins, never by meshward. Every resource but `allowlists` (the
# custom resource) is virtual: serve asks the API server with a SubjectAccessReview.
API_READ = ["get", "list"]
API_ROLES: dict[str, list[Obj]] = {
    # read alerts, edge counts, allowlists, modes, exchanges and metrics, and open the
    # dashboard; one-time login codes for it (`meshward dashboard`: a code carries its
    # holder's own rights, no more)
    "meshward-viewer": [
        _rule(
            [GROUP],
            ["alerts", "edges", "allowlists", "modes", "exchanges", "metrics", "dashboard"],
            API_READ,
        ),
        _rule([GROUP], ["sessions"], ["create"]),
        # the enforce-readiness report: of the recent calls (get), of an uploaded HAR (create)
        _rule([GROUP], ["readiness"], ["get", "create"]),
    ],
    # the viewer's reads plus changing rules (editing Allowlist objects); modes are Namespace
    # labels, granted by RBAC on namespaces, which this role does not give
    "meshward-operator": [
        _rule([GROUP], ["alerts", "edges", "modes", "exchanges", "metrics", "dashboard"], API_READ),
        _rule([GROUP], ["allowlists"], [*READ, "create", "update", "patch", "delete"]),
        _rule([GROUP], ["sessions"], ["create"]),
        _rule([GROUP], ["readiness"], ["get", "create"]),
    ],
    # Prometheus scraping serve's /metrics
    "meshward-metrics-reader": [_rule([GROUP], ["metrics"], ["get"])],
}
AUTHZ_POLICY_RULE = _rule(
    ["security.istio.io"], ["authorizationpolicies"], [*READ, "create", "update", "patch", "delete"]
)
# the controller's Lease, in meshward's namespace only
LEASE_RULES = [_rule(["coordination.k8s.io"], ["leases"], ["get", "create", "update"])]


def rbac(opts: InstallOptions) -> list[Obj]:
    ns = opts.namespace
    out: list[Obj] = []
    permissions = dict(PERMISSIONS)
    if opts.istio_style == "extension-provider":  # the CUSTOM AuthorizationPolicy per namespace
        permissions["controller"] = [*permissions["controller"], AUTHZ_POLICY_RULE]
    for component, rules in permissions.items():
        name = f"meshward-{component}"
        out.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": _meta(name, ns, component),
                "automountServiceAccountToken": True,
            }
        )
        out.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": _meta(name, component=component),
                "rules": rules,
            }
        )
        out.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": _meta(name, component=component),
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
            }
        )
    for name, rules in API_ROLES.items():
        out.append(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": _meta(name, component="serve"),
                "rules": rules,
            }
        )
    name = "meshward-controller-lease"
    out.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(name, ns, "controller"),
            "rules": LEASE_RULES,
        }
    )
    out.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(name, ns, "controller"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [
                {"kind": "ServiceAccount", "name": "meshward-controller", "namespace": ns}
            ],
        }
    )
    return out


# ---- workloads


def _probe(path: str, port: int, period: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }


def _pod_spec(component: str, container: Obj, **extra: Any) -> Obj:
    return {
        "serviceAccountName": f"meshward-{component}",
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        **extra,
    }


def _tmp_volumes() -> tuple[list[Obj], list[Obj]]:
    volumes = [{"name": "state", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}]
    mounts = [
        {"name": "state", "mountPath": "/var/lib/meshward"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    return volumes, mounts


def _field(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def serve_env(opts: InstallOptions) -> list[Obj]:
    """serve's environment: its pod name (the replica id of the cluster store) and namespace
    from the downward API, the SQLite file (alerts without a database), the alerts DSN from
    its Secret (an environment variable, never an argument `ps` shows)."""
    env = [
        _field("POD_NAME", "metadata.name"),
        _field("POD_NAMESPACE", "metadata.namespace"),
        {"name": "MESHWARD_DB", "value": "/var/lib/meshward/meshward.db"},
    ]
    if opts.alerts_dsn_secret:
        env.append(
            {
                "name": "MESHWARD_ALERTS_DSN",
                "valueFrom": {"secretKeyRef": {"name": opts.alerts_dsn_secret, "key": "dsn"}},
            }
        )
    return env


def serve(opts: InstallOptions) -> list[Obj]:
    ns = opts.namespace
    volumes, mounts = _tmp_volumes()
    # the Istio route (docs/security.md): serve's own sidecar terminates the callers' mTLS and
    # appends them to x-forwarded-client-cert (By= serve's ServiceAccount identity), the only
    # thing serve trusts; STRICT PeerAuthentication for this pod is the operator's to apply
    identity = f"spiffe://cluster.local/ns/{ns}/sa/meshward-serve"
    container = {
        "name": "serve",
        "image": opts.image,
        # every replica shares the cluster store; API callers (node taps, people, the dashboard)
        # show Kubernetes tokens, reviewed by the API server: a generated API token would
        # differ per replica and live in an emptyDir no caller can read
        "args": [
            "serve",
            "--store",
            "kubernetes",
            "--auth",
            "kubernetes",
            "--log-level",
            "info",
            "--grpc-plaintext",
            "--identity",
            identity,
        ],
        "ports": [
            {"name": "grpc-authz", "containerPort": AUTHZ_PORT, "protocol": "TCP"},
            {"name": "grpc-tap", "containerPort": TAP_PORT, "protocol": "TCP"},
            {"name": "http-api", "containerPort": HTTP_PORT, "protocol": "TCP"},
        ],
        "env": serve_env(opts),
        "readinessProbe": _probe("/readyz", HTTP_PORT, 5),
        "livenessProbe": _probe("/healthz", HTTP_PORT, 10),
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "securityContext": _restricted(),
        "volumeMounts": mounts,
    }
    spread = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {"matchLabels": _selector("serve")},
                    },
                }
            ]
        }
    }
    pdb_version = "policy/v1" if opts.kube_version >= (1, 21) else "policy/v1beta1"
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta("meshward-serve", ns, "serve"),
            "spec": {
                "replicas": opts.replicas,
                "selector": {"matchLabels": _selector("serve")},
                "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": {
                    "metadata": {
                        "labels": {
                            **MANAGED,
                            **_selector("serve"),
                            "sidecar.istio.io/inject": "true",  # its own sidecar, always
                        }
                    },
                    "spec": _pod_spec("serve", container, affinity=spread, volumes=volumes),
                },
            },
        },
        {
            "apiVersion": pdb_version,
            "kind": "PodDisruptionBudget",
            "metadata": _meta("meshward-serve", ns, "serve"),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector("serve")}},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta("meshward", ns, "serve"),
            "spec": {
                "selector": _selector("serve"),
                "ports": [
                    # grpc- names: Istio then speaks HTTP/2 and applies mTLS on these ports
                    {
                        "name": "grpc-authz",
                        "port": AUTHZ_PORT,
                        "targetPort": AUTHZ_PORT,
                        "protocol": "TCP",
                    },
                    {
                        "name": "grpc-tap",
                        "port": TAP_PORT,
                        "targetPort": TAP_PORT,
                        "protocol": "TCP",
                    },
                    {
                        "name": "http-api",
                        "port": HTTP_PORT,
                        "targetPort": HTTP_PORT,
                        "protocol": "TCP",
                    },
                ],
            },
        },
    ]


def controller(opts: InstallOptions) -> list[Obj]:
    volumes, mounts = _tmp_volumes()
    container: Obj = {
        "name": "controller",
        "image": opts.image,
        "args": [
            "controller",
            "--namespace",
            opts.namespace,
            "--service",
            opts.service_host,
            "--style",
            opts.istio_style,
            "--metrics-port",
            str(CONTROLLER_METRICS_PORT),
            # the mesh guard's findings go to serve as alerts, with a token bound to this pod
            "--server",
            f"http://{opts.service_host}:{HTTP_PORT}",
            "--api-token-file",
            f"{NODE_TOKEN_DIR}/token",
        ],
        "ports": [
            {"name": "http-metrics", "containerPort": CONTROLLER_METRICS_PORT, "protocol": "TCP"}
        ],
        "env": [_field("POD_NAME", "metadata.name")],
        "livenessProbe": _probe("/healthz", CONTROLLER_METRICS_PORT, 10),
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": _restricted(),
        "volumeMounts": [
            *mounts,
            {"name": "api-token", "mountPath": NODE_TOKEN_DIR, "readOnly": True},
        ],
    }
    volumes = [*volumes, {"name": "api-token", **_api_token()}]
    extra: list[Obj] = []
    if opts.audit_webhook_secret:
        container["args"] += [
            "--audit-webhook-port",
            str(AUDIT_PORT),
            "--audit-webhook-cert",
            f"{AUDIT_DIR}/tls.crt",
            "--audit-webhook-key",
            f"{AUDIT_DIR}/tls.key",
            "--audit-webhook-token-file",
            f"{AUDIT_DIR}/token",
        ]
        container["ports"].append(
            {"name": "https-audit", "containerPort": AUDIT_PORT, "protocol": "TCP"}
        )
        container["volumeMounts"].append(
            {"name": "audit-webhook", "mountPath": AUDIT_DIR, "readOnly": True}
        )
        secret = {"secretName": opts.audit_webhook_secret, "defaultMode": 0o440}
        volumes.append({"name": "audit-webhook", "secret": secret})
        extra.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": _meta("meshward-controller-audit", opts.namespace, "controller"),
                "spec": {
                    "selector": _selector("controller"),
                    "ports": [
                        {
                            "name": "https-audit",
                            "port": 443,
                            "targetPort": AUDIT_PORT,
                            "protocol": "TCP",
                        }
                    ],
                },
            }
        )
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta("meshward-controller", opts.namespace, "controller"),
            "spec": {
                "replicas": 2,  # one leads (a Lease), the other waits to take over
                "selector": {"matchLabels": _selector("controller")},
                "template": {
                    "metadata": {"labels": {**MANAGED, **_selector("controller")}},
                    # fsGroup: the audit Secret's files are group-readable (0440), by this pod
                    "spec": _pod_spec(
                        "controller",
                        container,
                        volumes=volumes,
                        **({"securityContext": _pod_security(UID)} if extra else {}),
                    ),
                },
            },
        },
        *extra,
    ]


def _pod_security(fs_group: int) -> Obj:
    return {"seccompProfile": {"type": "RuntimeDefault"}, "fsGroup": fs_group}


def _api_token() -> Obj:
    """A projected ServiceAccount token for serve's API (audience meshward, rotated hourly)."""
    return {
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "meshward",
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                }
            ]
        }
    }


NODE_STATE = "/var/lib/meshward"  # the node tap's UDP peer baseline (a hostPath: it outlives pods)
NODE_TOKEN_DIR = "/var/run/secrets/meshward"  # the projected token for serve's API


def node_tap(opts: InstallOptions) -> list[Obj]:
    """The node-tap DaemonSet with the least privilege its options need (docs/node-tap.md)."""
    args = ["node-tap", "--node", "$(NODE_NAME)", "--server"]
    args += [f"http://{opts.service_host}:{HTTP_PORT}"]
    args += ["--baseline-file", f"{NODE_STATE}/udp-peers.json"]
    # serve's ingest takes a token bound to this pod (audience meshward), re-read on rotation
    args += ["--api-token-file", f"{NODE_TOKEN_DIR}/token"]
    for iface in opts.node_ifaces:
        args += ["--iface", iface]
    # the node's interfaces are in the node's network namespace, reached as PID 1's; the pod
    # keeps its own network (its NetworkPolicy and Service identity stay as they are)
    if opts.node_ifaces:
        args += ["--host-netns", "/proc/1/ns/net"]
    # /proc/PID/ns/net of other processes: the host's PIDs (hostPID) and CAP_SYS_PTRACE
    needs_proc = bool(opts.node_ifaces) or opts.node_proc_scan
    # AF_PACKET sockets (NET_RAW); entering pods' network namespaces with setns (SYS_ADMIN)
    caps = ["NET_RAW", "SYS_ADMIN", *(["SYS_PTRACE"] if needs_proc else [])]
    container = {
        "name": "node-tap",
        "image": opts.image,
        "args": args,
        "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _restricted(uid=None, add=caps),
        "volumeMounts": [
            {
                # containerd and CRI-O bind-mount pod namespaces here; HostToContainer: the
                # mounts of pods started after the agent show up too
                "name": "netns",
                "mountPath": "/var/run/netns",
                "readOnly": True,
                "mountPropagation": "HostToContainer",
            },
            {"name": "state", "mountPath": NODE_STATE},
            {"name": "api-token", "mountPath": NODE_TOKEN_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    token = _api_token()
    extra: Obj = {"hostPID": True} if needs_proc else {}
    state = {"path": f"{NODE_STATE}/node-tap", "type": "DirectoryOrCreate"}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": _meta("meshward-node-tap", opts.namespace, "node-tap"),
            "spec": {
                "selector": {"matchLabels": _selector("node-tap")},
                "template": {
                    "metadata": {"labels": {**MANAGED, **_selector("node-tap")}},
                    "spec": _pod_spec(
                        "node-tap",
                        container,
                        **extra,
                        tolerations=[{"operator": "Exists"}],
                        volumes=[
                            {"name": "netns", "hostPath": {"path": "/var/run/netns"}},
                            {"name": "state", "hostPath": state},
                            {"name": "api-token", **token},
                            {"name": "tmp", "emptyDir": {}},
                        ],
                    ),
                },
            },
        }
    ]


def network_policies(opts: InstallOptions) -> list[Obj]:
    """Default deny into meshward's namespace; 9191/9192 from any pod (the sidecars: Kubernetes
    cannot select a container), 9193 from the node taps and from namespaces labelled
    `meshward.io/operator: "true"`, the controller's 9194 (/metrics) from those namespaces
    only. Probes come from the kubelet on the node."""
    ns = opts.namespace
    operators = {"namespaceSelector": {"matchLabels": {"meshward.io/operator": "true"}}}
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("meshward-default-deny", ns),
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("meshward-serve", ns, "serve"),
            "spec": {
                "podSelector": {"matchLabels": _selector("serve")},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [{"namespaceSelector": {}}],
                        "ports": [
                            {"port": AUTHZ_PORT, "protocol": "TCP"},
                            {"port": TAP_PORT, "protocol": "TCP"},
                        ],
                    },
                    {
                        "from": [
                            {"podSelector": {"matchLabels": _selector("node-tap")}},
                            {"podSelector": {"matchLabels": _selector("controller")}},
                            operators,
                        ],
                        "ports": [{"port": HTTP_PORT, "protocol": "TCP"}],
                    },
                ],
            },
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta("meshward-controller", ns, "controller"),
            "spec": {
                "podSelector": {"matchLabels": _selector("controller")},
                "policyTypes": ["Ingress"],
                "ingress": [
                    {
                        "from": [operators],
                        "ports": [{"port": CONTROLLER_METRICS_PORT, "protocol": "TCP"}],
                    },
                    # the API server's audit webhook: not a pod, its address is the cluster's;
                    # the port itself authenticates (HTTPS, the Secret's token)
                    *(
                        [{"ports": [{"port": AUDIT_PORT, "protocol": "TCP"}]}]
                        if opts.audit_webhook_secret
                        else []
                    ),
                ],
            },
        },
    ]


def render(opts: InstallOptions) -> list[Obj]:
    """Every object, in the order `kubectl apply` needs them (namespace and types first)."""
    if opts.istio_style not in ISTIO_STYLES:
        raise ValueError(f"--istio-style must be one of {', '.join(ISTIO_STYLES)}")
    if opts.replicas < 1:
        raise ValueError("--replicas must be at least 1")
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": opts.namespace, "labels": {**MANAGED, MODE_LABEL: "off"}},
    }
    return [
        namespace,
        *crds(),
        *rbac(opts),
        *serve(opts),
        *controller(opts),
        *node_tap(opts),
        *network_policies(opts),
    ]


def mesh_config(opts: InstallOptions) -> Obj:
    """The `meshConfig` fragment for `--istio-style extension-provider`. It cannot go through
    `kubectl apply` (that would overwrite Istio's own ConfigMap): merge it with `istioctl
    install -f` or into the Helm values of istiod. The tap has no Istio provider kind, so it
    stays an EnvoyFilter in both styles."""
    from meshward.istio.envoyfilter import extension_provider

    provider = extension_provider(service=opts.service_host, authz_port=AUTHZ_PORT)
    return {"meshConfig": {"extensionProviders": [provider]}}


def audit_policy() -> Obj:
    """The API server's audit policy meshward needs (`--audit-policy-file`): the writes of the
    objects the configuration guard watches and nothing else, so the webhook carries little.
    RequestResponse for the mesh's policy objects and Namespaces (small; the response's
    resourceVersion joins a finding to its write exactly), Metadata for Pods (many, large; a
    pod is joined by its name). The API server has one policy for all its backends: in a
    cluster that has one, put these rules first and drop the last."""
    from meshward.app.meshguard import KINDS as GUARDED

    groups: dict[str, list[str]] = {}
    for k in GUARDED:
        plurals = groups.setdefault(k.group, [])
        if k.plural not in plurals:
            plurals.append(k.plural)
    mesh = [{"group": g, "resources": sorted(r)} for g, r in sorted(groups.items())]
    return {
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],  # only the outcome of each write
        "rules": [
            {
                "level": "RequestResponse",
                "verbs": list(AUDIT_VERBS),
                "resources": [*mesh, {"group": "", "resources": ["namespaces"]}],
            },
            {
                "level": "Metadata",
                "verbs": list(AUDIT_VERBS),
                "resources": [{"group": "", "resources": ["pods"]}],
            },
            {"level": "None"},  # everything else: not meshward's (drop in a merged policy)
        ],
    }
