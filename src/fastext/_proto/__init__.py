"""Modules generated from proto/ at build time (do not edit)."""
