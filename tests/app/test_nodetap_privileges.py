"""The node-tap DaemonSet's privileges are the ones that work, and each one is needed: the agent
runs here under `setpriv` with exactly the capabilities `meshward install` renders (root
without the others, as in the container), against real pod namespaces, and fails clearly
without any one of them."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshward.app.install import InstallOptions, node_tap
from tests.conftest import need_tools
from tests.support.netns import Node, need_netns

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def _caps(opts: InstallOptions) -> list[str]:
    (ds,) = node_tap(opts)
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    return list(container["securityContext"]["capabilities"]["add"])


def _agent(
    caps: list[str], args: list[str], node: Node, traffic: list[str] | None = None
) -> tuple[int, list[str], str]:
    """Run node-tap for 3 s with only `caps`; returns (exit code, stdout lines, stderr)."""
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    cmd = ["setpriv", "--inh-caps=-all", f"--bounding-set={bounding}", "--", sys.executable]
    proc = subprocess.Popen(
        [*cmd, "-m", "meshward", "node-tap", *args, "--duration", "3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    early = []
    for line in proc.stderr:
        early.append(line)
        if '"capturing"' in line or "error" in line:
            break
    if traffic and proc.poll() is None:
        node.pods["attacker"].run(traffic, check=False)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out.splitlines(), "".join(early) + err


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    need_netns()
    need_tools("setpriv", "hping3")
    with Node(subnet=f"10.217.{random.randrange(256)}") as n:
        n.add_pod("attacker")
        n.add_pod("victim")
        yield n


def test_default_daemonset_caps_capture_a_named_pod_namespace(node: Node, tmp_path: Path) -> None:
    """NET_RAW and SYS_ADMIN only, no hostPID: pods named under /var/run/netns are captured,
    and the UDP peer baseline is written to the state directory."""
    caps = _caps(InstallOptions())
    assert sorted(caps) == ["NET_RAW", "SYS_ADMIN"]
    victim = node.pods["victim"]
    baseline = tmp_path / "udp-peers.json"
    args = ["--netns", victim.netns, "--pod", "lab/victim", "--baseline-file", str(baseline)]
    udp = ["hping3", "-2", "-c", "3", "-i", "u100000", "-p", "5353", victim.ip]
    code, _, err = _agent(caps, args, node, udp)
    assert code == 0, err[-2000:]
    stopped = [json.loads(x) for x in err.splitlines() if '"node-tap stopped"' in x][-1]
    assert stopped["net_packets"] >= 3
    assert json.loads(baseline.read_bytes())["workloads"]["lab/victim"] == [
        ["in", "external", 5353]
    ]


@pytest.mark.parametrize("missing", ["NET_RAW", "SYS_ADMIN"])
def test_each_default_cap_is_needed(node: Node, missing: str) -> None:
    caps = [c for c in _caps(InstallOptions()) if c != missing]
    victim = node.pods["victim"]
    code, _, err = _agent(caps, ["--netns", victim.netns, "--pod", "lab/victim"], node)
    assert code == 2 and "Operation not permitted" in err and victim.netns in err, err[-1000:]


def test_a_node_interface_needs_hostpid_and_sys_ptrace(node: Node) -> None:
    """--node-tap-iface: the bridge is in the node's namespace, reached as /proc/1/ns/net
    (here a process of the node namespace stands for PID 1): SYS_PTRACE is what opens it."""
    opts = InstallOptions(node_ifaces=(node.bridge,))
    (ds,) = node_tap(opts)
    assert ds["spec"]["template"]["spec"]["hostPID"] is True
    holder = node.popen(["sleep", "60"])
    # `ip netns exec` forks the command: its child holds the node namespace
    pid = subprocess.run(["pgrep", "-P", str(holder.pid)], capture_output=True, text=True)
    host_ns = f"/proc/{(pid.stdout.split() or [holder.pid])[0]}/ns/net"
    victim = node.pods["victim"]
    args = ["--iface", node.bridge, "--host-netns", host_ns]
    ping = ["ping", "-c", "3", "-i", "0.2", victim.ip]
    code, _, err = _agent(_caps(opts), args, node, ping)
    assert code == 0, err[-2000:]
    stopped = [json.loads(x) for x in err.splitlines() if '"node-tap stopped"' in x][-1]
    assert stopped["net_packets"] == 6  # pod to pod, on the bridge (promiscuous)
    without = [c for c in _caps(opts) if c != "SYS_PTRACE"]
    code, _, err = _agent(without, args, node)
    assert code == 2 and "Permission denied" in err, err[-1000:]
