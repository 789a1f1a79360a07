"""Our OpenAI-compatible server on 127.0.0.1, driven by the official ``openai`` client and by our own
``openai`` generator backend (real HTTP round trips; the model is the tiny local causal LM)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from sage_health.core.config import Settings
from sage_health.core.errors import EndpointError, GenerationTimeoutError
from sage_health.interfaces.api import create_app
from sage_health.models.generation.base import ChatMessage, GenerationParams
from sage_health.models.generation.openai_compat import OpenAICompatibleGenerator
from sage_health.models.generation.transformers_backend import TransformersGenerator
from sage_health.models.registry import ModelRegistry

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Server:
    def __init__(self, app: FastAPI) -> None:
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dir: Path) -> Settings:
    store = tmp_path_factory.mktemp("api-store")
    # the server acts for the built-in clinician unless a request sends X-Sage-Principal / X-Sage-Purpose
    s = Settings(store=store, api_key=SecretStr("test-key"), principal="clinician", purpose="treatment")
    ModelRegistry(s.db_path).register(
        "tiny",
        backend="transformers",
        version="1",
        config={"backend_options": {"path": str(tiny_lm_dir)}},
        description="tiny local test model",
    )
    return s


@pytest.fixture(scope="module")
def base_url(settings: Settings) -> Iterator[str]:
    with _Server(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="test-key", max_retries=0)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe the heart."}]


def _direct(tiny_lm_dir: Path, n: int) -> str:
    gen = TransformersGenerator(model_id="tiny", version="1", path=tiny_lm_dir)
    msgs = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Describe the heart.")]
    return gen.generate(msgs, GenerationParams(max_new_tokens=n)).text


def test_models_endpoint_lists_registered_versions(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"tiny@1", "smollm2@q4_1-gguf", "extractive@1"} <= ids


def test_chat_completion_matches_the_model_run_directly(client: openai.OpenAI, tiny_lm_dir: Path) -> None:
    resp = client.chat.completions.create(model="tiny@1", messages=MESSAGES, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert resp.choices[0].message.content == _direct(tiny_lm_dir, 8)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 8
    assert resp.model == "tiny@1"


def test_streaming_sse_concatenates_to_the_same_text(client: openai.OpenAI, tiny_lm_dir: Path) -> None:
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, stream=True)  # type: ignore[arg-type]
    chunks = [c for c in stream if c.choices]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    pieces = [c.choices[0].delta.content or "" for c in chunks]
    assert "".join(pieces).strip() == _direct(tiny_lm_dir, 8)


def test_errors_have_one_shape(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 404
    headers = {"Authorization": "Bearer test-key"}
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "tiny", "messages": []}, headers=headers)
    assert r.status_code == 422
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "code"}
    assert body["error"]["type"] == "InvalidRequest"
    assert "messages" in body["error"]["message"]
    r = httpx.get(f"{base_url}/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403
    assert r.json()["error"]["type"] == "PolicyViolation"
    long = [{"role": "user", "content": "heart " * 1500}]
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "tiny", "messages": long}, headers=headers)
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "ContextOverflowError"
    r = httpx.get(f"{base_url}/nowhere")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"type", "message", "code"}
    assert "paths" in httpx.get(f"{base_url}/openapi.json").json()


def test_our_openai_backend_round_trip(base_url: str, tiny_lm_dir: Path) -> None:
    gen = OpenAICompatibleGenerator(base_url=f"{base_url}/v1", model="tiny@1", api_key=SecretStr("test-key"))
    msgs = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Describe the heart.")]
    out = gen.generate(msgs, GenerationParams(max_new_tokens=8))
    assert out.text == _direct(tiny_lm_dir, 8)
    assert out.completion_tokens == 8
    assert out.finish_reason == "length"
    assert "".join(gen.stream(msgs, GenerationParams(max_new_tokens=8))).strip() == out.text
    bad = OpenAICompatibleGenerator(base_url=f"{base_url}/v1", model="tiny", api_key=SecretStr("nope"))
    with pytest.raises(EndpointError, match="HTTP 403") as info:
        bad.generate(msgs)
    assert info.value.status == 403
    assert "nope" not in str(info.value)  # the key never appears in errors


def _flaky_app(fail_times: int, delay_s: float = 0.0) -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    calls: list[int] = []

    @app.post("/v1/chat/completions")
    def chat() -> JSONResponse:
        calls.append(1)
        if delay_s:
            time.sleep(delay_s)
        if len(calls) <= fail_times:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        return JSONResponse(
            {
                "model": "upstream",
                "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1},
            }
        )

    return app, calls


def test_openai_backend_retries_5xx_then_gives_a_clear_error() -> None:
    msgs = [ChatMessage(role="user", content="hi")]
    app, calls = _flaky_app(fail_times=2)
    with _Server(app) as url:
        gen = OpenAICompatibleGenerator(base_url=f"{url}/v1", model="m", max_retries=2, backoff_s=0.01)
        assert gen.generate(msgs).text == "ok"
        assert len(calls) == 3
    app, calls = _flaky_app(fail_times=10)
    with _Server(app) as url:
        gen = OpenAICompatibleGenerator(base_url=f"{url}/v1", model="m", max_retries=1, backoff_s=0.01)
        with pytest.raises(EndpointError, match="HTTP 503: overloaded"):
            gen.generate(msgs)
        assert len(calls) == 2


def test_openai_backend_timeout_and_unreachable_endpoint() -> None:
    msgs = [ChatMessage(role="user", content="hi")]
    app, _calls = _flaky_app(fail_times=0, delay_s=1.0)
    with _Server(app) as url:
        gen = OpenAICompatibleGenerator(base_url=f"{url}/v1", model="m", timeout_s=0.2, max_retries=1, backoff_s=0.01)
        with pytest.raises(GenerationTimeoutError, match=r"did not answer within 0.2s after 2 attempt"):
            gen.generate(msgs)
    dead = OpenAICompatibleGenerator(base_url=f"http://127.0.0.1:{_free_port()}/v1", model="m", max_retries=0)
    with pytest.raises(EndpointError, match="cannot reach") as info:
        dead.generate(msgs)
    assert info.value.status == 0


def test_docs_example_runs_against_our_server(base_url: str, tiny_lm_dir: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "openai_client.py"
    env = os.environ | {"SAGE_API_KEY": "test-key"}
    args = [sys.executable, str(example), "--base-url", f"{base_url}/v1", "--model", "tiny@1", "--max-tokens", "8"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert "tiny@1" in lines["models"]
    expected = TransformersGenerator(model_id="tiny", version="1", path=tiny_lm_dir).generate(
        [
            ChatMessage(role="system", content="You are a radiologist. Answer in one sentence."),
            ChatMessage(role="user", content="Findings: The heart is normal in size. The lungs are clear. Impression?"),
        ],
        GenerationParams(max_new_tokens=8),
    )
    assert lines["answer"].strip() == expected.text
    assert lines["streamed"].strip() == expected.text
