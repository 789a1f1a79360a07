"""Our OpenAI-compatible server on 127.0.0.1, driven by the official ``openai`` client and by our own
``openai`` generator backend (real HTTP round trips; the model is the tiny local causal LM), authenticated with real
bearer tokens: 401 for missing/bad/revoked credentials, 403 for denials, both in the pinned error shape and audited
with the token id (never the token)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from sage_health.core.config import Settings
from sage_health.core.errors import EndpointError, GenerationTimeoutError
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.identity import IdentityStore, token_id_of
from sage_health.data.governance.policy import PolicyEngine
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


@dataclass(frozen=True)
class Tokens:
    clinician: str
    steward: str
    revoked: str
    revoked_id: str


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dir: Path) -> Settings:
    store = tmp_path_factory.mktemp("api-store")
    s = Settings(store=store)
    ModelRegistry(s.db_path).register(
        "tiny",
        backend="transformers",
        version="1",
        config={"backend_options": {"path": str(tiny_lm_dir)}},
        description="tiny local test model",
    )
    return s


@pytest.fixture(scope="module")
def tokens(settings: Settings) -> Tokens:
    """Real tokens, issued as the built-in admin (the first token, an admin's, switches authentication on)."""
    policy = PolicyEngine(settings.db_path)
    admin = policy.access("admin", "operations")
    identity = IdentityStore(settings.db_path, policy)
    identity.create("admin", by=admin)
    revoked = identity.create("clinician", by=admin, label="revoked in the test")
    identity.revoke(revoked.info.id, by=admin)
    return Tokens(
        clinician=identity.create("clinician", by=admin).token,
        steward=identity.create("data_steward", by=admin).token,
        revoked=revoked.token,
        revoked_id=revoked.info.id,
    )


@pytest.fixture(scope="module")
def base_url(settings: Settings, tokens: Tokens) -> Iterator[str]:
    with _Server(create_app(settings)) as url:
        yield url


TREATMENT = {"X-Sage-Purpose": "treatment"}


@pytest.fixture(scope="module")
def client(base_url: str, tokens: Tokens) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=tokens.clinician, max_retries=0, default_headers=TREATMENT)


class _PurposeTransport(httpx.HTTPTransport):
    """A real HTTP transport that declares the purpose of use on every request (as a deployment's proxy would)."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.headers["X-Sage-Purpose"] = "treatment"
        return super().handle_request(request)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Describe the heart."}]


def _direct(tiny_lm_dir: Path, n: int) -> str:
    gen = TransformersGenerator(model_id="tiny", version="1", path=tiny_lm_dir)
    msgs = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Describe the heart.")]
    return gen.generate(msgs, GenerationParams(max_new_tokens=n)).text


def _bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **TREATMENT, **headers}


def _assert_error(r: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "code"}
    assert body["error"]["type"] == kind
    assert body["error"]["code"] == status
    return body


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


def test_errors_have_one_shape(client: openai.OpenAI, base_url: str, tokens: Tokens) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)  # type: ignore[arg-type]
    assert info.value.status_code == 404
    headers = _bearer(tokens.clinician)
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "tiny", "messages": []}, headers=headers)
    body = _assert_error(r, 422, "InvalidRequest")
    assert "messages" in body["error"]["message"]
    long = [{"role": "user", "content": "heart " * 1500}]
    r = httpx.post(f"{base_url}/v1/chat/completions", json={"model": "tiny", "messages": long}, headers=headers)
    _assert_error(r, 400, "ContextOverflowError")
    r = httpx.get(f"{base_url}/nowhere")
    assert r.status_code == 404
    assert set(r.json()["error"]) == {"type", "message", "code"}
    assert "paths" in httpx.get(f"{base_url}/openapi.json").json()


def test_authentication_401_and_denials_403_in_the_pinned_shape(base_url: str, tokens: Tokens) -> None:
    chat = {"model": "tiny@1", "messages": MESSAGES, "max_tokens": 2}
    for headers in ({}, TREATMENT):  # no credentials at all
        r = httpx.get(f"{base_url}/v1/models", headers=headers)
        body = _assert_error(r, 401, "AuthenticationError")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert "requires credentials" in body["error"]["message"]
    r = httpx.post(f"{base_url}/v1/chat/completions", json=chat, headers=_bearer("not-a-token"))
    assert "malformed token" in _assert_error(r, 401, "AuthenticationError")["error"]["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    forged = tokens.clinician[:-4] + ("AAAA" if not tokens.clinician.endswith("AAAA") else "BBBB")
    r = httpx.post(f"{base_url}/v1/chat/completions", json=chat, headers=_bearer(forged))
    assert "invalid token" in _assert_error(r, 401, "AuthenticationError")["error"]["message"]
    r = httpx.get(f"{base_url}/v1/models", headers=_bearer(tokens.revoked))
    message = _assert_error(r, 401, "AuthenticationError")["error"]["message"]
    assert message == f"token {tokens.revoked_id} is revoked"
    assert tokens.revoked not in r.text
    # a header naming a principal is refused, even beside a valid token
    r = httpx.get(f"{base_url}/v1/models", headers=_bearer(tokens.clinician, **{"X-Sage-Principal": "admin"}))
    assert "X-Sage-Principal" in _assert_error(r, 403, "PolicyViolation")["error"]["message"]
    # a purpose the role may not act for, and an action the policy denies
    r = httpx.get(f"{base_url}/v1/models", headers=_bearer(tokens.clinician, **{"X-Sage-Purpose": "research"}))
    _assert_error(r, 403, "PolicyViolation")
    r = httpx.post(
        f"{base_url}/v1/chat/completions",
        json=chat,
        headers=_bearer(tokens.steward, **{"X-Sage-Purpose": "operations"}),
    )
    assert "generate" in _assert_error(r, 403, "PolicyViolation")["error"]["message"]


def test_audit_log_names_the_token_id_never_the_token(settings: Settings, base_url: str, tokens: Tokens) -> None:
    chat = {"model": "tiny@1", "messages": MESSAGES, "max_tokens": 2}
    ok = httpx.post(f"{base_url}/v1/chat/completions", json=chat, headers=_bearer(tokens.clinician))
    assert ok.status_code == 200, ok.text
    denied = httpx.post(
        f"{base_url}/v1/chat/completions",
        json=chat,
        headers=_bearer(tokens.steward, **{"X-Sage-Purpose": "operations"}),
    )
    assert denied.status_code == 403
    revoked = httpx.get(f"{base_url}/v1/models", headers=_bearer(tokens.revoked))
    assert revoked.status_code == 401
    clinician_id, steward_id = (token_id_of(t) for t in (tokens.clinician, tokens.steward))
    events = AuditLog.for_settings(settings).events()
    generated = [e for e in events if e.action == "generate" and e.detail.get("outcome") == "ok"][-1]
    assert (generated.principal, generated.detail["token_id"], generated.detail["channel"]) == (
        "clinician",
        clinician_id,
        "api",
    )
    assert generated.detail["model"] == "tiny@1"
    assert generated.query_sha256 is not None  # the prompt by its hash only
    refusal = [e for e in events if e.action == "generate" and e.detail.get("outcome") == "denied"][-1]
    assert (refusal.principal, refusal.detail["token_id"]) == ("data_steward", steward_id)
    failed_auth = [e for e in events if e.action == "authenticate"][-1]
    assert failed_auth.detail["outcome"] == "denied"
    assert failed_auth.detail["token_id"] == tokens.revoked_id
    raw = b"".join(p.read_bytes() for p in settings.store.glob("sage.db*"))
    for token in (tokens.clinician, tokens.steward, tokens.revoked):
        secret = token.rsplit("_", 1)[1]
        assert secret.encode() not in raw
        assert token.encode() not in raw
    assert b"Describe the heart" not in raw  # prompts are never stored


def test_our_openai_backend_round_trip(base_url: str, tiny_lm_dir: Path, tokens: Tokens) -> None:
    gen = OpenAICompatibleGenerator(
        base_url=f"{base_url}/v1", model="tiny@1", api_key=SecretStr(tokens.clinician), transport=_PurposeTransport()
    )
    msgs = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Describe the heart.")]
    out = gen.generate(msgs, GenerationParams(max_new_tokens=8))
    assert out.text == _direct(tiny_lm_dir, 8)
    assert out.completion_tokens == 8
    assert out.finish_reason == "length"
    assert "".join(gen.stream(msgs, GenerationParams(max_new_tokens=8))).strip() == out.text
    bad = OpenAICompatibleGenerator(
        base_url=f"{base_url}/v1", model="tiny", api_key=SecretStr("nope"), transport=_PurposeTransport()
    )
    with pytest.raises(EndpointError, match="HTTP 401") as info:
        bad.generate(msgs)
    assert info.value.status == 401
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


def test_docs_example_runs_against_our_server(base_url: str, tiny_lm_dir: Path, tokens: Tokens) -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "examples" / "openai_client.py"
    env = os.environ | {"SAGE_TOKEN": tokens.clinician, "SAGE_PURPOSE": "treatment"}
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
