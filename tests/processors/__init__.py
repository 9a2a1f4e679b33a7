"""Tests of fastext.processors."""
