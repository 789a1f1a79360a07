"""Content hashing: canonical JSON + sha256, used for idempotency and provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_BUF = 1 << 20


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 preserved."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(value: Any) -> str:
    return sha256_text(canonical_json(value))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_BUF):
            digest.update(chunk)
    return digest.hexdigest()
