"""Bring results made outside orch into the store, one module per source."""
