"""Ingest connectors (one per input format) and the streaming, atomic ingest pipeline."""
