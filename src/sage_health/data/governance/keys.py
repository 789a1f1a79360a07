"""Secret key files of the governance layer (the audit log's HMAC key, the de-identification key)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from sage_health.core.errors import ConfigError


def key_from_file(path: Path, *, what: str) -> bytes:
    """Read the key file, creating it (mode 0600, 32 random bytes as hex) when it does not exist.

    ``what`` names the key in errors ("audit", "de-identification"). A file that cannot be read or holds fewer
    than 16 characters is a :class:`ConfigError`."""
    try:
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(secrets.token_hex(32))
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read or create the {what} key file {path}: {type(exc).__name__}") from exc
    if len(key) < 16:
        raise ConfigError(f"the {what} key file {path} holds fewer than 16 characters; delete or fix it")
    return key.encode("ascii")
