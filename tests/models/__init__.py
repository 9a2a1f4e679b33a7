"""Tests of fastext.models."""
