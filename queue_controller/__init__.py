"""ckq: a checkpoint-aware batch queue controller for Kubernetes."""

__version__ = "0.1.0"
