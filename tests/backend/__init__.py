"""Tests of fastext.backend."""
