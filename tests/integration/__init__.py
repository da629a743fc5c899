"""Tests against real servers: PostgreSQL, Prometheus, Alertmanager, a local HTTP server."""
