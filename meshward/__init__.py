"""meshward: a security layer for service meshes (learned L7 allowlists and threat detection)."""

__version__ = "0.1.0"
