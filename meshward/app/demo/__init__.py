"""`meshward demo`: a sample shop in a live mini-mesh of real Envoy sidecars and meshward serve."""
