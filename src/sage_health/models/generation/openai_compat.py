"""A generator over any OpenAI-compatible chat-completions endpoint (vLLM, Ollama, llama.cpp server, hosted APIs,
or SAGE-Health's own ``sage-health serve``).

Plain ``httpx``: timeouts per request, retries with exponential backoff on timeouts, connection errors, 429
and 5xx; every other 4xx fails at once. The API key is a ``SecretStr`` and appears only in the
``Authorization`` header — never in errors or logs; error messages carry the status code and the
endpoint's own error message (not the prompt).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
from pydantic import SecretStr

from sage_health.core.errors import EmptyGenerationError, EndpointError, GenerationTimeoutError
from sage_health.models.generation.base import (
    ChatMessage,
    Generation,
    GenerationParams,
    ModelInfo,
    Stopwatch,
    validate_messages,
)

log = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


def _error_message(response: httpx.Response) -> str:
    """The endpoint's own error message (OpenAI shape ``{"error": {"message": ...}}`` or ours), truncated."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err.get("detail") or err)[:300]
        return str(err)[:300]
    return str(body)[:200]


class OpenAICompatibleGenerator:
    """Chat completions over HTTP. ``base_url`` ends in ``/v1`` (e.g. ``http://127.0.0.1:8000/v1``)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: SecretStr | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._api_key = api_key
        self._timeout = timeout_s
        self._max_retries = max_retries
        self._backoff = backoff_s
        self._transport = transport
        self._client: httpx.Client | None = None

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(model_id=self._model, version="remote", backend="openai", base_model=self._base_url)

    def _http(self) -> httpx.Client:
        if self._client is None:
            headers = {"Content-Type": "application/json"}
            if self._api_key is not None:
                headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
            self._client = httpx.Client(
                base_url=self._base_url, headers=headers, timeout=self._timeout, transport=self._transport
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _payload(self, messages: Sequence[ChatMessage], params: GenerationParams, stream: bool) -> dict[str, Any]:
        validate_messages(messages)
        body: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": stream,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def _send(self, body: dict[str, Any]) -> httpx.Response:
        """POST with retries; returns a successful streaming-capable response (caller closes it)."""
        client = self._http()
        attempt = 0
        while True:
            try:
                request = client.build_request("POST", "/chat/completions", json=body)
                response = client.send(request, stream=True)
            except httpx.TimeoutException as exc:
                if attempt < self._max_retries:
                    attempt += 1
                    time.sleep(self._backoff * 2 ** (attempt - 1))
                    continue
                raise GenerationTimeoutError(
                    f"{self._base_url} did not answer within {self._timeout:g}s after {attempt + 1} attempt(s): "
                    "raise SAGE_OPENAI_TIMEOUT_S or check the server"
                ) from exc
            except httpx.TransportError as exc:
                if attempt < self._max_retries:
                    attempt += 1
                    time.sleep(self._backoff * 2 ** (attempt - 1))
                    continue
                raise EndpointError(
                    f"cannot reach {self._base_url} ({type(exc).__name__}) after {attempt + 1} attempt(s): "
                    "check SAGE_OPENAI_BASE_URL and that the server runs",
                    status=0,
                ) from exc
            if response.status_code < 400:
                return response
            response.read()
            status = response.status_code
            message = _error_message(response)
            response.close()
            if status in _RETRY_STATUS and attempt < self._max_retries:
                attempt += 1
                delay = self._backoff * 2 ** (attempt - 1)
                retry_after = response.headers.get("retry-after")
                if retry_after and retry_after.isdigit():
                    delay = max(delay, min(float(retry_after), 30.0))
                log.warning("endpoint answered %s; retry %d/%d in %.1fs", status, attempt, self._max_retries, delay)
                time.sleep(delay)
                continue
            hint = {
                401: "check SAGE_OPENAI_API_KEY",
                403: "the key is not allowed to use this model",
                404: "check SAGE_OPENAI_BASE_URL (it must end in /v1) and the model name",
                429: "rate limited: retry later or raise SAGE_OPENAI_MAX_RETRIES",
            }.get(status, "see the endpoint's logs" if status >= 500 else "the request was rejected")
            raise EndpointError(
                f"{self._base_url}/chat/completions answered HTTP {status}: {message} ({hint})", status=status
            )

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Generation:
        params = params or GenerationParams()
        body = self._payload(messages, params, stream=False)
        with Stopwatch() as sw:
            response = self._send(body)
            try:
                response.read()
                data = response.json()
            except (json.JSONDecodeError, httpx.HTTPError) as exc:
                raise EndpointError(
                    f"{self._base_url} returned a response that is not JSON", status=response.status_code
                ) from exc
            finally:
                response.close()
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            finish = "length" if choice.get("finish_reason") == "length" else "stop"
            usage = data.get("usage") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise EndpointError(f"{self._base_url} returned no choices[0].message", status=200) from exc
        text = text.strip()
        if not text:
            raise EmptyGenerationError(f"{self._model} at {self._base_url} returned an empty completion")
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            latency_s=sw.seconds,
            model_id=str(data.get("model") or self._model),
            model_version="remote",
            finish_reason=finish,
        )

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Iterator[str]:
        """Server-sent events (``data: {...}`` lines, ``data: [DONE]`` at the end)."""
        params = params or GenerationParams()
        response = self._send(self._payload(messages, params, stream=True))
        try:
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    event = json.loads(data)
                    delta = event["choices"][0].get("delta", {}).get("content")
                except (json.JSONDecodeError, KeyError, IndexError, AttributeError) as exc:
                    raise EndpointError(f"{self._base_url} sent a malformed stream event", status=200) from exc
                if delta:
                    yield delta
        except httpx.TimeoutException as exc:
            raise GenerationTimeoutError(f"{self._base_url} stopped streaming for {self._timeout:g}s") from exc
        finally:
            response.close()
