"""Shared pytest configuration."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator

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


@pytest.fixture(autouse=True)
def _root_logging() -> Iterator[None]:
    """Give back the root logger a test changed: a command run in-process calls
    `jsonlog.setup`, whose handler writes to that test's captured stderr, closed afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


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
