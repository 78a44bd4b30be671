"""Cluster fixtures (issue 3)."""
