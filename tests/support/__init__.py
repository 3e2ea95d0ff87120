"""Test support code shared by several test packages (fixtures that start real servers)."""
