"""A small Kubernetes-like node built from network namespaces, for integration tests (root).

Layout (nothing touches the host's own interfaces or addresses):

    netns <run>-node   bridge `br0` with the node address 10.213.0.1/24 (the "host" side)
      ├─ veth vp0 ── netns <run>-<pod0>   eth0 10.213.0.2/24, lo up, default route via .1
      ├─ veth vp1 ── netns <run>-<pod1>   eth0 10.213.0.3/24, ...
      ...

Every pod is its own network namespace, so the same 10.213.0.0/24 subnet can be used by many
test runs at once without clashing; namespace names carry the test process id and a random part
(`mwt<pid>x<hex>-...`) so parallel runs never collide, and stale namespaces of dead runs are
removed by `sweep_stale()` (called by every new Node).

API:

    from tests.support.netns import Node, need_netns

    need_netns()                       # pytest.skip unless root and `ip` is present
    with Node() as node:               # or Node(subnet="10.213.7") for another /24 prefix
        srv = node.add_pod("server")   # -> Pod(name, netns, ip, veth, path)
        cli = node.add_pod("client")
        srv.ip                         # "10.213.0.2"
        srv.netns                      # namespace name for `ip netns exec` / `--netns NAME`
        srv.path                       # "/run/netns/<name>", for setns()
        p = srv.popen(["python", "-m", "http.server"], stdout=PIPE)   # subprocess.Popen
        r = cli.run(["ping", "-c1", srv.ip], timeout=5)               # CompletedProcess
        srv.wait_port(8080)            # poll until something listens on srv.ip:8080 (TCP)
        node.run([...]); node.popen([...])   # same helpers inside the node (bridge) namespace
        node.bridge                    # "br0": sees only traffic to/from the node address (.1)
        srv.veth                       # "vp0": the pod's veth end in the node namespace; it
                                       # sees all of that pod's traffic (a host-side interface)
    # on exit (also on exceptions): every process started by popen() is killed (its whole
    # process group), then every process still inside the namespaces (`ip netns pids`), then
    # the namespaces are deleted.

`run()` and `popen()` take the same keyword arguments as `subprocess.run` / `subprocess.Popen`;
`run()` defaults to check=True, capture_output=True, text=True, timeout=30. `popen()` starts
each process in its own session so cleanup can kill its children too.

As a pytest fixture:

    @pytest.fixture
    def node():
        need_netns()
        with Node() as n:
            yield n
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

_PREFIX = "mwt"
_NAME = re.compile(rf"^{_PREFIX}(?P<pid>\d+)x[0-9a-f]+-")


def need_netns() -> None:
    """Skip the calling test unless network namespaces can be built here."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if shutil.which("ip") is None:
        pytest.skip("missing tool: ip (iproute2)")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=15)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_netns_processes(netns: str) -> None:
    """Kill whatever still runs inside one of our namespaces (daemons that forked away)."""
    out = _ip("netns", "pids", netns, check=False).stdout.split()
    for pid in out:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _delete_netns(netns: str) -> None:
    _kill_netns_processes(netns)
    _ip("netns", "del", netns, check=False)


def sweep_stale() -> None:
    """Delete namespaces left behind by test runs whose process is gone (e.g. SIGKILLed)."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split(" ", 1)[0]
        m = _NAME.match(name)
        if m and not _pid_alive(int(m["pid"])):
            _delete_netns(name)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=3)


@dataclass
class _Space:
    """A network namespace plus the processes the test started in it."""

    netns: str
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    def command(self, cmd: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *cmd]

    def run(self, cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run a command inside the namespace (defaults: check, capture, text, 30 s timeout)."""
        kw.setdefault("check", True)
        kw.setdefault("timeout", 30)
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.command(cmd), **kw)

    def popen(self, cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace; it is killed when the node closes."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.command(cmd), **kw)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            _kill_group(proc)
        self.procs.clear()


@dataclass
class Pod(_Space):
    """One pod: a namespace with `lo` up and `eth0` on the node's bridge."""

    name: str = ""
    ip: str = ""
    veth: str = ""  # the node-side end of the veth pair (inside the node namespace)

    def wait_port(self, port: int, host: str | None = None, timeout: float = 15.0) -> None:
        """Wait until a TCP listener accepts on host (default the pod IP):port in this pod."""
        host = host or self.ip
        probe = (
            "import socket,sys\n"
            f"s=socket.create_connection(({host!r},{port}),timeout=0.5);s.close()"
        )
        deadline = time.monotonic() + timeout
        while True:
            r = self.run([sys.executable, "-c", probe], check=False, timeout=5)
            if r.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} in {self.netns}")
            time.sleep(0.1)


class Node(_Space):
    """The node: a bridge namespace and the pods attached to it. Use it as a context manager."""

    def __init__(self, subnet: str = "10.213.0") -> None:
        if not re.fullmatch(r"10\.\d{1,3}\.\d{1,3}", subnet):
            raise ValueError("subnet must be a 10.x.y prefix (a private /24 inside our netns)")
        self.run_id = f"{_PREFIX}{os.getpid()}x{secrets.token_hex(3)}"
        super().__init__(netns=f"{self.run_id}-node")
        self.subnet = subnet
        self.bridge = "br0"
        self.ip = f"{subnet}.1"
        self.pods: dict[str, Pod] = {}
        self._created: list[str] = []

    def __enter__(self) -> Node:
        sweep_stale()
        try:
            self._create_netns(self.netns)
            n = self.netns
            _ip("-n", n, "link", "set", "lo", "up")
            _ip("-n", n, "link", "add", self.bridge, "type", "bridge")
            _ip("-n", n, "addr", "add", f"{self.ip}/24", "dev", self.bridge)
            _ip("-n", n, "link", "set", self.bridge, "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _create_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._created.append(name)
        # no IPv6 chatter (router solicitations, DAD) on the test links
        _ip(
            "netns",
            "exec",
            name,
            "sysctl",
            "-q",
            "-w",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
            check=False,
        )

    def add_pod(self, name: str) -> Pod:
        """Create a pod namespace on the bridge with the next free address of the subnet."""
        valid = re.fullmatch(r"[a-z0-9][a-z0-9-]{0,20}", name) and name != "node"
        if not valid or name in self.pods:
            raise ValueError(f"bad or duplicate pod name {name!r}")
        index = len(self.pods)
        if index > 250:
            raise ValueError("at most 251 pods per node")
        pod = Pod(
            netns=f"{self.run_id}-{name}",
            name=name,
            ip=f"{self.subnet}.{index + 2}",
            veth=f"vp{index}",
        )
        self.pods[name] = pod
        self._wire(pod)
        return pod

    def restart_sandbox(self, name: str, rename: bool = True) -> Pod:
        """What a pod sandbox restart does: the CNI deletes the pod's network namespace and
        veth, and sets up a new namespace with the same IP (named anew, as runtimes do, or
        with `rename=False` at the same path). The old processes die with it."""
        old = self.pods[name]
        old.stop_all()
        _ip("-n", self.netns, "link", "del", old.veth, check=False)
        _delete_netns(old.netns)
        if old.netns in self._created:
            self._created.remove(old.netns)
        netns = f"{old.netns}-r{secrets.token_hex(2)}" if rename else old.netns
        pod = Pod(netns=netns, name=name, ip=old.ip, veth=old.veth)
        self.pods[name] = pod
        self._wire(pod)
        return pod

    def _wire(self, pod: Pod) -> None:
        """A pod namespace with `lo` up and `eth0` on the bridge (a veth), at `pod.ip`."""
        self._create_netns(pod.netns)
        n, p = self.netns, pod.netns
        _ip("-n", n, "link", "add", pod.veth, "type", "veth", "peer", "name", "eth0", "netns", p)
        _ip("-n", n, "link", "set", pod.veth, "master", self.bridge, "up")
        _ip("-n", p, "link", "set", "lo", "up")
        _ip("-n", p, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        _ip("-n", p, "link", "set", "eth0", "up")
        _ip("-n", p, "route", "add", "default", "via", self.ip)

    def close(self) -> None:
        """Kill every process, then delete every namespace; safe to call twice."""
        for pod in self.pods.values():
            pod.stop_all()
        self.stop_all()
        for name in reversed(self._created):
            _delete_netns(name)
        self._created.clear()


def free_port_in(space: _Space, host: str = "0.0.0.0") -> int:
    """An ephemeral TCP port that is free inside the namespace right now."""
    code = f"import socket;s=socket.socket();s.bind(({host!r},0));print(s.getsockname()[1])"
    return int(space.run([sys.executable, "-c", code]).stdout.strip())


__all__ = ["Node", "Pod", "free_port_in", "need_netns", "sweep_stale"]
