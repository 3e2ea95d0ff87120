"""Observation sources: the Envoy tap (ext_proc, admin /tap, tap files) and the node tap."""
