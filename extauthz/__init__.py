"""The envoy.service.auth.v3.Authorization gRPC service: CheckRequest -> Observation -> verdict."""
