"""Python SDK for the QES platform: push events into the metrics stream without ever blocking."""
