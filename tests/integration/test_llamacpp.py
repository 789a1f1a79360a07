"""The optional llama.cpp backend on the SmolLM2 GGUF (runs when the [llamacpp] extra is installed)."""

from __future__ import annotations

import sys

import pytest

from sage_health.core.errors import ContextOverflowError, ModelLoadError
from sage_health.models.generation.base import ChatMessage, GenerationParams
from sage_health.models.generation.llamacpp import LlamaCppGenerator

MSGS = [ChatMessage(role="user", content="Findings: the lungs are clear. Write a one-line impression.")]


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import fails as if the extra were absent
    with pytest.raises(ModelLoadError, match=r"\[llamacpp\] extra: run `make llamacpp`"):
        LlamaCppGenerator().generate(MSGS)


@pytest.mark.slow
def test_llamacpp_generates_deterministically_and_streams() -> None:
    pytest.importorskip("llama_cpp", reason="the [llamacpp] extra is not installed: `make llamacpp`")
    gen = LlamaCppGenerator(n_ctx=512, threads=2)
    params = GenerationParams(max_new_tokens=20)
    a = gen.generate(MSGS, params)
    assert a.text
    assert 0 < a.completion_tokens <= 20
    assert a.model_version.startswith("gguf-")
    assert gen.generate(MSGS, params).text == a.text
    assert "".join(gen.stream(MSGS, params)).strip() == a.text
    with pytest.raises(ContextOverflowError, match="512-token context"):
        gen.generate([ChatMessage(role="user", content="lungs " * 600)], params)
