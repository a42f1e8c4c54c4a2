"""Locust suite for the TradeScore engine: gRPC users, load profiles, SLO gates (see loadtest/README.md)."""
