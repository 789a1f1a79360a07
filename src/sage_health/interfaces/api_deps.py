"""FastAPI dependencies shared by the API modules: the settings dependency and bearer-token authorisation."""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation


@lru_cache(maxsize=1)
def _default_settings() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The settings dependency (overridden in tests with ``app.dependency_overrides``)."""
    return _default_settings()


SettingsDep = Annotated[Settings, Depends(get_settings)]


def authorize(request: Request, s: SettingsDep) -> None:
    """Bearer-token check when ``SAGE_API_KEY`` is set (constant-time comparison)."""
    if s.api_key is None:
        return
    header = request.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(token.encode(), s.api_key.get_secret_value().encode()):
        raise PolicyViolation("missing or wrong API key: send `Authorization: Bearer <SAGE_API_KEY>`")


def acting_settings(request: Request, s: SettingsDep) -> Settings:
    """The settings with the acting principal and purpose of this request: headers ``X-Sage-Principal`` and
    ``X-Sage-Purpose``, else ``SAGE_PRINCIPAL`` / ``SAGE_PURPOSE``. The policy engine then checks them; a missing
    or unknown principal or purpose is a 403 with the reason. (Behind ``SAGE_API_KEY`` the headers are trusted;
    a deployment that needs per-user keys puts an identity-aware proxy in front.)"""
    principal = request.headers.get("x-sage-principal") or s.principal
    purpose = request.headers.get("x-sage-purpose") or s.purpose
    return s.model_copy(update={"principal": principal, "purpose": purpose})


ActingDep = Annotated[Settings, Depends(acting_settings)]
