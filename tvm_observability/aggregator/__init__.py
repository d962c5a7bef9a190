"""The central telemetry_aggregator service: ingest, fleet state, Prometheus exposition."""
