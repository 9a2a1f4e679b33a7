"""Tests of fastext.vision."""
