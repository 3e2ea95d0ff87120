"""The UDP peer baseline file: round trip, atomic and private writes, bounded size, and broken,
foreign or oversized files ignored rather than believed or crashed on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from meshward.core.observation import Identity
from meshward.tap.node.netthreats import NetThreatConfig, NetworkMonitor
from meshward.tap.node.peerfile import PeerFile, decode, encode


def _monitor(**config: int) -> NetworkMonitor:
    return NetworkMonitor(NetThreatConfig(**config), resolve=lambda ip: Identity(ip=ip))


def _learned(peers: dict[str, list[tuple[str, str, int]]], **config: int) -> NetworkMonitor:
    mon = _monitor(**config)
    mon.load_baseline(peers)
    return mon


PEERS = {"shop/web": [("in", "external", 53), ("out", "shop/db", 5432)], "kube/dns": []}


def test_round_trip_and_private_atomic_write(tmp_path: Path) -> None:
    path = tmp_path / "state" / "udp-peers.json"
    pf = PeerFile(path)
    assert pf.load() == {}  # nothing yet
    mon = _learned(PEERS)
    pf.save(mon)
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert os.listdir(path.parent) == ["udp-peers.json"]  # no temp file left behind
    again = _monitor()
    again.load_baseline(PeerFile(path).load())
    assert again.baseline() == mon.baseline() == {"shop/web": sorted(PEERS["shop/web"])}
    writes = pf.writes
    pf.save(mon)  # nothing learned since: nothing written
    assert pf.writes == writes


def test_saved_on_the_loop_only_when_learned_and_due(tmp_path: Path) -> None:
    pf = PeerFile(tmp_path / "p.json", interval=30)
    mon = _learned(PEERS)
    pf.maybe_save(mon, now=100.0)
    assert pf._writer is not None
    pf._writer.join()
    assert pf.writes == 1
    mon.load_baseline({"shop/web": [("out", "shop/cache", 6379)]})
    pf.maybe_save(mon, now=110.0)  # learned, but not due yet
    assert pf.writes == 1
    pf.maybe_save(mon, now=131.0)
    assert pf._writer is not None
    pf._writer.join()
    assert pf.writes == 2
    assert ["out", "shop/cache", 6379] in json.loads(pf.path.read_bytes())["workloads"]["shop/web"]


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 2, "workloads": {}}',
        b'{"version": 1, "workloads": []}',
    ],
)
def test_broken_files_are_ignored(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(content)
    path.chmod(0o600)
    assert PeerFile(path).load() == {}


def test_bad_entries_are_skipped() -> None:
    doc = {
        "version": 1,
        "workloads": {
            "shop/web": [
                ["in", "external", 53],
                ["sideways", "x", 1],
                ["out", "shop/db", 70000],
                ["out", "shop/db", True],
                ["out", "", 1],
                "junk",
            ],
            "": [["in", "external", 53]],
        },
    }
    assert decode(json.dumps(doc).encode()) == {"shop/web": [("in", "external", 53)]}


def test_a_file_others_may_write_is_not_believed(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(encode({"shop/web": [("in", "external", 53)]}))
    path.chmod(0o666)
    assert PeerFile(path).load() == {}
    path.chmod(0o600)
    assert PeerFile(path).load() == {"shop/web": [("in", "external", 53)]}


def test_size_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    many = {f"ns/w{i}": [("in", f"ns/peer{j}", j) for j in range(50)] for i in range(100)}
    # the monitor's caps bound what is learned from a file, as from traffic
    capped = _learned(many, max_workloads=10, max_peers=5)
    assert len(capped.baseline()) == 10 and all(len(p) == 5 for p in capped.baseline().values())
    pf = PeerFile(path, max_bytes=1000)
    pf.save(_learned(many))
    assert not path.exists() and pf.failures == 1  # larger than max_bytes: not written
    path.write_bytes(encode(many))
    path.chmod(0o600)
    assert PeerFile(path, max_bytes=1000).load() == {}  # nor read
