"""Checkpoint backends: one interface, several ways to save and restore a job's pods."""
