"""Benchmarks. Run with ``python -m bench NAME`` (see bench/__main__.py)."""
