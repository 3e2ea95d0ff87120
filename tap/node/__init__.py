"""The node tap: packet capture in pod network namespaces and on host interfaces."""
