"""Shared pytest configuration."""

from __future__ import annotations

import os
import shutil

import pytest

# fixtures shared across the tree (Envoy, a running serve, the CLI), kept in tests/support
pytest_plugins = [
    "tests.support.envoy",
    "tests.support.envoy_http",
    "tests.support.cli",
    "tests.support.apiserver",
    "tests.support.replicas",
    "tests.support.postgres",
]


@pytest.fixture
def need_root() -> None:
    """Skip a test that needs root (network namespaces, packet capture)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, packet capture)")


def need_tools(*names: str) -> None:
    """Skip when an external tool the test drives is not installed."""
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)} (make system-deps installs them)")
