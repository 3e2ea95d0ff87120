"""The one check for names the cluster accepts (namespaces, service hosts), used by the API, the
mode command and the sidecar/EnvoyFilter renderers."""

from __future__ import annotations

import pytest

from meshward.core.names import is_host_name, is_ip, is_kubernetes_name


@pytest.mark.parametrize("name", ["shop", "a", "x-1", "a" * 63, "0abc"])
def test_kubernetes_names(name: str) -> None:
    assert is_kubernetes_name(name)


@pytest.mark.parametrize("name", ["", "Shop", "-a", "a-", "a" * 64, "a.b", "shop\n", "a_b", "é"])
def test_not_kubernetes_names(name: str) -> None:
    assert not is_kubernetes_name(name)


@pytest.mark.parametrize(
    "host",
    [
        "meshward.meshward.svc.cluster.local",
        "localhost",
        "127.0.0.1",
        "::1",
        "fd00::2",
        "Meshward.Example.",
        "a" * 63 + ".b",
    ],
)
def test_host_names(host: str) -> None:
    assert is_host_name(host)


@pytest.mark.parametrize(
    "host", ["", "x;y", "a b", "a/b", "a..b", "-a.b", "a" * 64, ".", "a:80", "x\n", "1.2.3.4.5:"]
)
def test_not_host_names(host: str) -> None:
    assert not is_host_name(host)


def test_ip_literals_only() -> None:
    assert is_ip("10.0.0.1") and is_ip("::ffff:1.2.3.4")
    assert not is_ip("api.shop") and not is_ip("1.2.3") and not is_ip("")
