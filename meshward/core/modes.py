"""The namespace modes (README, "Modes"): the one definition every command and adapter imports.

`off`: meshward renders no filters for the namespace. An observation that reaches meshward from
an `off` namespace all the same (a node tap, a sidecar not yet re-rendered) is allowed and not
learned; a threat on it is still alerted (Engine._decide).
"""

from meshward.core.names import is_kubernetes_name

MODES = ("off", "learn", "monitor", "enforce")
DEFAULT_MODE = "learn"
# the namespace name of "every namespace not set by name" (`meshward mode set '*' MODE`): stored
# beside the others, never a Kubernetes name; in a cluster the Namespace labels decide instead
EVERY_OTHER = "*"


def settable(namespace: str) -> bool:
    """Whether a mode may be set for `namespace`: a Kubernetes name, or `*` (every other)."""
    return namespace == EVERY_OTHER or is_kubernetes_name(namespace)
