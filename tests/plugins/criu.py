"""CRIU fixtures (issue 5)."""
