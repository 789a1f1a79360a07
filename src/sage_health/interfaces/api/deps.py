"""FastAPI dependencies shared by the API modules: settings, the process runtime and the authenticated session.

Identity comes from ``Authorization: Bearer <token>`` only. A header that names a principal (``X-Sage-Principal``)
is refused: a caller cannot choose who they are. The purpose of use is declared per request in ``X-Sage-Purpose``
and must be one the token's role allows. Missing or bad credentials are a 401 with ``WWW-Authenticate: Bearer``;
a denial is a 403. Both are audited with the token's public id, never the token.

An application created with ``auth=False`` (``sage-health serve --no-auth``, loopback only) acts as the
configured principal (``SAGE_PRINCIPAL``) of a store that does not require credentials.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation
from sage_health.services.session import Credentials, Runtime, Session, open_session


@lru_cache(maxsize=1)
def _default_settings() -> Settings:
    return Settings()


def get_settings() -> Settings:
    """The settings dependency (overridden in tests with ``app.dependency_overrides``)."""
    return _default_settings()


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return None


def get_session(request: Request, s: SettingsDep, runtime: RuntimeDep) -> Session:
    """The authenticated session of this request (see the module docstring)."""
    purpose = request.headers.get("x-sage-purpose") or None
    auth: bool = request.app.state.auth
    if request.headers.get("x-sage-principal"):
        raise PolicyViolation(
            "the X-Sage-Principal header is not accepted: the principal is the owner of the bearer token"
        )
    if auth:
        creds = Credentials(token=bearer_token(request), purpose=purpose, channel="api")
    else:
        creds = Credentials(principal=s.principal, purpose=purpose or s.purpose, channel="api")
    return open_session(s, creds, runtime=runtime, require_token=auth)


SessionDep = Annotated[Session, Depends(get_session)]
