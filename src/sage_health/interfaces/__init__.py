"""Interfaces: the ``sage-health`` CLI (Typer + Rich), REST/OpenAI-compatible API and web UI."""
