"""Stress drivers run in subprocesses by tests/backend/test_ring_stress.py (not collected)."""
