"""Tests on a real Prefect server with real workers (fixtures in stack.py)."""
