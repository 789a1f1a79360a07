"""Adaptive GenAI layer: generators, model registry, evaluation, adaptation, co-evolution (arrives with issue 3)."""
