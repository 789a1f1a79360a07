"""Generators: the ``Generator`` protocol and its backends (smollm2, transformers, openai, llamacpp, extractive)."""
