"""Locust scenarios for SREs: HTTP and gRPC users, SLO gates, and the local `make loadtest` run."""
