"""Find a pod's network namespace from its IP, with no help from the container runtime.

Two places on a node name network namespaces:

- `/var/run/netns/*`: where `ip netns` (and runtimes using CNI's netns helper: containerd,
  CRI-O) bind-mount them;
- `/proc/PID/ns/net` of every process: always there, whatever the runtime, but only visible
  with the host's PID namespace (the DaemonSet's `hostPID: true`) and readable for processes of
  other users with CAP_SYS_PTRACE.

Both are scanned; namespaces are deduplicated by (device, inode) (many processes share one),
the node's own namespace is left out, and each remaining namespace's addresses are read once
(netlink, from a thread joined to it). The result is an index IP -> namespace path, rebuilt
when a pod's IP is not in it (a new pod); an address two namespaces hold is used for neither.
The CRI API would be a shortcut, but no container runtime runs on the test machines, so it is
not used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from meshward.core.log import event

log = logging.getLogger("meshward.node-tap")

NETNS_DIRS = ("/var/run/netns", "/run/netns")
Inode = tuple[int, int]  # st_dev, st_ino
AddressReader = Callable[[str], list[str]]


def inode(path: str) -> Inode | None:
    """Which namespace `path` is now (None when it is gone or unreadable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def candidates(
    netns_dirs: Iterable[str] = NETNS_DIRS, proc: str = "/proc", own: str = "/proc/self/ns/net"
) -> dict[Inode, str]:
    """Every network namespace on the node but the node's own, one path each (named mounts
    preferred over /proc paths: they outlive the process)."""
    found: dict[Inode, str] = {}
    mine = inode(own)
    for folder in netns_dirs:
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            key = inode(path)
            if key is not None and key != mine:
                found.setdefault(key, path)
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        pids = []
    for pid in pids:
        path = f"{proc}/{pid}/ns/net"
        key = inode(path)  # a process may be gone already, or not ours to read
        if key is not None and key != mine:
            found.setdefault(key, path)
    return found


@dataclass
class NamespaceIndex:
    """IP -> network namespace path, built lazily from `candidates()`."""

    read_addresses: AddressReader
    scan: Callable[[], dict[Inode, str]] = candidates
    _by_ip: dict[str, tuple[Inode, str]] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)
    scans: int = 0
    errors: int = 0

    def find(self, ip: str) -> str | None:
        """The namespace holding `ip`, rescanning once if it is not known (or went stale)."""
        hit = self._by_ip.get(ip)
        if hit is not None and inode(hit[1]) == hit[0] and ip not in self.ambiguous:
            return hit[1]
        self.refresh()
        hit = self._by_ip.get(ip)
        return hit[1] if hit is not None and ip not in self.ambiguous else None

    def refresh(self) -> None:
        """Rebuild the index from every namespace on the node (a miss means a new pod: its
        namespace is new, and reading all again keeps stale or doubled addresses out)."""
        self.scans += 1
        by_ip: dict[str, tuple[Inode, str]] = {}
        ambiguous: set[str] = set()
        for key, path in self.scan().items():
            try:
                addresses = self.read_addresses(path)
            except OSError as exc:  # gone meanwhile, or not ours: the next scan tries again
                self.errors += 1
                event(log, "netns unreadable", logging.DEBUG, path=path, error=str(exc)[:200])
                continue
            for ip in addresses:
                other = by_ip.get(ip)
                if other is not None and other[0] != key:
                    # two namespaces hold one address: attributing traffic to either could name
                    # the wrong pod, so neither is used until one goes
                    ambiguous.add(ip)
                by_ip[ip] = (key, path)
        self._by_ip, self.ambiguous = by_ip, ambiguous

    def forget(self, ip: str) -> None:
        """A pod went away: its IP may soon belong to another namespace."""
        self._by_ip.pop(ip, None)

    def __len__(self) -> int:
        return len(self._by_ip)
