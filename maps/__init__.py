"""Offline base-map ingest and feature-cache builder (``edge-maps``); writes the formats edge_runtime reads."""
