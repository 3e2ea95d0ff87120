"""Envoy filter config, sidecar bootstraps and Istio objects (EnvoyFilter, AuthorizationPolicy)."""
