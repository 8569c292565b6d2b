"""Scaling policies: pure functions from a cluster snapshot to a decision (see registry.py)."""
