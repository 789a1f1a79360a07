"""Agentic collaboration layer: planner, retriever, imaging, writer, verifier, safety agents and the runner."""
