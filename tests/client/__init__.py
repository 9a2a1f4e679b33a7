"""Tests of fastext.client."""
