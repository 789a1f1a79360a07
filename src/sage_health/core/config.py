"""Settings: one object, built at the entry point and passed down (never read at import time)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path("../shared/data")


class Settings(BaseSettings):
    """All configuration, from ``SAGE_*`` environment variables (or a ``.env`` file) and explicit overrides."""

    model_config = SettingsConfigDict(env_prefix="SAGE_", env_file=".env", extra="ignore")

    store: Path = Field(default=Path(".sage"), description="Store directory (holds sage.db).")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Public data directory.")
    max_file_mb: float = Field(default=256.0, gt=0, description="Files larger than this are rejected.")
    batch_records: int = Field(default=256, ge=1, description="Records per atomic write batch.")
    embed_batch_size: int = Field(default=32, ge=1, description="Texts per embedder forward pass.")
    chunk_words: int = Field(default=160, ge=16, description="Maximum words per chunk (~256 wordpieces).")
    chunk_overlap_words: int = Field(default=24, ge=0, description="Words of overlap between chunks.")
    embedder: str = Field(default="minilm", description="Embedder backend name (built-ins: minilm).")
    embed_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto = bf16 autocast where the CPU has native bf16, else fp32."
    )
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal-rank-fusion constant.")

    @property
    def db_path(self) -> Path:
        return self.store / "sage.db"
