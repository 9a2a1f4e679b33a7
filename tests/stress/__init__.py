"""Stress drivers run in subprocesses by tests/test_ring_stress.py (not collected)."""
