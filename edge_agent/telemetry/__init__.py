"""Telemetry: the MQTT contract, aggregation per interval, and store-and-forward."""
