"""The Envoy tap: ext_proc observability streams, the admin /tap stream, both-ends join."""
