"""Upstream stages: the shared HTTP client (transport boundary) and the replica pools."""
