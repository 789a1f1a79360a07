"""The REST API (FastAPI): routes parse the request, call one service and return its typed result."""

from sage_health.interfaces.api.app import create_app

__all__ = ["create_app"]
