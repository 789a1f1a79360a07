"""Core: errors, settings, provenance and hashing shared by every layer (imports nothing above it)."""
