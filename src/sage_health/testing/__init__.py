"""Conformance suites and small fixtures that ship with the library (for backends and plugins)."""
