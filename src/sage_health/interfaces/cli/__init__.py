"""The ``sage-health`` command line (Typer + Rich): commands parse options, call one service and render its result."""

from sage_health.interfaces.cli.app import app, main

__all__ = ["app", "main"]
