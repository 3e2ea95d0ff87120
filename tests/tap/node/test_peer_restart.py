"""A restarted node tap keeps its learned UDP peers (`--baseline-file`): the same DNS client
raises no `UDP.New.Peer` after a restart in monitor mode, a new peer still does, and without
the file the restart would have alerted the known peer (the control)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshward.core.observation import Observation, observation_from_dict
from tests.conftest import need_tools
from tests.support.netlab import start_dnsmasq
from tests.support.netns import Node, Pod, need_netns

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[3]


def _tap_run(
    node: Node, victim: Pod, mode: str, baseline: Path, traffic: list[list[str]]
) -> list[Observation]:
    """One node-tap process on the victim pod; `traffic` runs in the attacker pod meanwhile."""
    proc = node.popen(
        [
            sys.executable,
            "-m",
            "meshward",
            "node-tap",
            "--netns",
            victim.netns,
            "--pod",
            "lab/victim",
            "--mode",
            f"lab={mode}",
            "--baseline-file",
            str(baseline),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    opened = 0
    for line in proc.stderr:
        opened += '"capturing"' in line
        if opened == 2:  # lo and eth0
            break
    attacker = node.pods["attacker"]
    for cmd in traffic:
        attacker.run(["timeout", "5", *cmd], check=False, timeout=10)
    time.sleep(1.2)
    proc.terminate()
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err[-2000:]
    return [observation_from_dict(json.loads(line)) for line in out.splitlines()]


def _new_peers(alerts: list[Observation]) -> list[str]:
    return [t.evidence for a in alerts for t in a.threats if t.name == "UDP.New.Peer"]


def test_restart_remembers_udp_peers(tmp_path: Path) -> None:
    need_netns()
    need_tools("dig", "dnsmasq", "hping3", "timeout")
    with Node(subnet=f"10.216.{random.randrange(256)}") as node:
        node.add_pod("attacker")
        victim = node.add_pod("victim")
        start_dnsmasq(victim)
        dig = ["dig", f"@{victim.ip}", "+tries=1", "+time=2", "www.corp.test"]
        baseline = tmp_path / "state" / "udp-peers.json"

        assert _new_peers(_tap_run(node, victim, "learn", baseline, [dig])) == []
        saved = json.loads(baseline.read_bytes())
        assert saved["workloads"]["lab/victim"] == [["in", "external", 53]]

        stray = ["hping3", "-2", "-c", "1", "-p", "5353", victim.ip]
        after = _new_peers(_tap_run(node, victim, "monitor", baseline, [dig, stray]))
        assert len(after) == 1 and "on UDP port 5353" in after[0], after  # only the new one

        forgetful = _new_peers(_tap_run(node, victim, "monitor", tmp_path / "none.json", [dig]))
        assert len(forgetful) == 1 and "on UDP port 53," in forgetful[0], forgetful
