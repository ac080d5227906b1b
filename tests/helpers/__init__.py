"""Builders of tiny models and of official-format data files for the tests (no network)."""
