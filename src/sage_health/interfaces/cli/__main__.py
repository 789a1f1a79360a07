"""``python -m sage_health.interfaces.cli``: the same entry point as the ``sage-health`` script."""

from sage_health.interfaces.cli.app import main

main()
