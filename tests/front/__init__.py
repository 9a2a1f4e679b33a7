"""Tests of fastext.front."""
