"""Finding Linkerd-meshed pods and mapping them to network namespaces for the node tap."""
