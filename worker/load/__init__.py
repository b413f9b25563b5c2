"""Serving under load: the load client, its plan and its statistics (jobs/load.py is the
contract)."""
