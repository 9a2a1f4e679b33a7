"""Tests of fastext.contract."""
