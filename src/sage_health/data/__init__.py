"""Data layer: the Sustainable Medical Data Ecosystem (schema, ingest, store, embeddings, retrieval)."""
