"""Adaptive GenAI layer: generators, model registry, evaluation harness (adaptation, co-evolution: issue 6)."""
