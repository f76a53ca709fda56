"""Hostile and broken input: crafted files, stores and calls, each a named error or a correct result."""
