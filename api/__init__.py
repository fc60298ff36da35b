"""Who reads it: the aiohttp REST API on :8000 and the Prometheus exporter on :8001."""
