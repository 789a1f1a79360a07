"""Model-layer commands end to end: label, models register/promote/rollback with eval report, generate and
serve with the real SmolLM2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from sage_health.interfaces.cli import app
from sage_health.models.generation.base import ChatMessage, GenerationParams
from sage_health.models.generation.transformers_backend import SmolLMGenerator

pytestmark = [pytest.mark.e2e]
# acting as the built-in admin (SAGE_PRINCIPAL / SAGE_PURPOSE) unless a command names another principal
runner = CliRunner(env={"SAGE_PRINCIPAL": "admin", "SAGE_PURPOSE": "operations"})


def _ok(args: list[str]) -> dict[str, object] | list[object]:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload: dict[str, object] | list[object] = json.loads(result.stdout)
    return payload


def test_label_command_reports_labels_with_evidence() -> None:
    payload = _ok(["label", "Mild cardiomegaly. No pleural effusion. Possible left basilar atelectasis.", "--json"])
    assert isinstance(payload, dict)
    labels = payload["labels"]
    assert isinstance(labels, dict)
    assert labels["Cardiomegaly"] == "positive"
    assert labels["Pleural Effusion"] == "negative"
    assert labels["Atelectasis"] == "uncertain"
    assert labels["Fracture"] == "blank"
    assert "Cardiomegaly" in payload["evidence"]  # type: ignore[operator]
    bad = runner.invoke(app, ["label"])
    assert bad.exit_code == 1
    assert "either as TEXT or with --file" in bad.output


def test_register_evaluate_promote_gate_and_rollback(data_dir: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    split = _ok(
        [
            "eval",
            "split-iu",
            "--reports",
            str(data_dir / "iu_xray" / "reports.jsonl"),
            "--annotation",
            str(data_dir / "iu_xray" / "r2gen_annotation.json"),
            "--out",
            str(tmp_path / "splits"),
            "--json",
        ]
    )
    assert isinstance(split, dict)
    train, val = split["train"]["path"], split["val"]["path"]  # type: ignore[index]
    for name in ("alice", "bob"):
        _ok(["principals", "add", name, "--role", "admin", "--store", store, "--json"])
    alice = ["--as", "alice", "--purpose", "operations"]
    _ok(["models", "register", "cxr", "--backend", "extractive", "--store", store, *alice, "--by", "alice", "--json"])
    _ok(["models", "register", "cxr", "--backend", "extractive", "--exemplars", "1", "--store", store, "--json"])

    def evaluate(ref: str) -> dict[str, object]:
        args = ["eval", "report", "--train", train, "--test", val, "--model", ref, "--limit", "15"]
        payload = _ok([*args, "--drop-leaks", "--store", store, "--json"])
        assert isinstance(payload, dict)
        return payload

    first = evaluate("cxr@1")
    assert first["model"] == "cxr@1"
    assert Path(first["report"]["html"]).is_file()  # type: ignore[index]
    _ok(["models", "promote", "cxr@1", "--store", store, *alice, "--json"])
    impostor = runner.invoke(app, ["models", "promote", "cxr@2", "--store", store, *alice, "--by", "bob"])
    assert impostor.exit_code == 1
    assert "differs from the acting principal 'alice'" in impostor.output
    refused = runner.invoke(app, ["models", "promote", "cxr@2", "--store", store])
    assert refused.exit_code == 1
    assert "refusing to promote cxr@2" in refused.output
    second = evaluate("cxr@2")
    assert second["eval_set"] == first["eval_set"]
    promoted = _ok(
        [
            "models",
            "promote",
            "cxr@2",
            "--store",
            store,
            "--as",
            "bob",
            "--purpose",
            "operations",
            "--reason",
            "nn beats lead",
            "--json",
        ]
    )
    assert isinstance(promoted, dict)
    assert promoted["stage"] == "production"
    assert promoted["promoted_by"] == "bob"
    restored = _ok(["models", "rollback", "cxr", "--store", store, "--json"])
    assert isinstance(restored, dict)
    assert restored["ref"] == "cxr@1"
    shown = _ok(["models", "show", "cxr@2", "--store", store, "--json"])
    assert isinstance(shown, dict)
    assert shown["stage"] == "archived"
    assert [e["action"] for e in shown["events"]][-2:] == ["rollback", "restore"]  # type: ignore[index]
    listed = _ok(["models", "list", "--store", store, "--json"])
    assert {"cxr@1", "cxr@2", "smollm2@q4_1-gguf", "extractive@1"} <= {m["ref"] for m in listed}  # type: ignore[index]


@pytest.mark.slow
def test_real_smollm2_generates_deterministically_and_streams(smollm2_cache: Path) -> None:
    gen = SmolLMGenerator(cache_dir=smollm2_cache)
    msgs = [
        ChatMessage(role="system", content="You are a radiologist. Answer in one sentence."),
        ChatMessage(role="user", content="Findings: The heart is normal in size. The lungs are clear. Impression?"),
    ]
    params = GenerationParams(max_new_tokens=24)
    a = gen.generate(msgs, params)
    assert a.text
    assert a.model_id == "smollm2-135m-instruct"
    assert 0 < a.completion_tokens <= 24
    assert gen.generate(msgs, params).text == a.text
    assert "".join(gen.stream(msgs, params)).strip() == a.text
    assert gen.info.context_window == 8192
    # the second load reads the cached de-quantised weights and gives the same answer
    assert any(smollm2_cache.iterdir())
    assert SmolLMGenerator(cache_dir=smollm2_cache).generate(msgs, params).text == a.text


def _serve(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "sage_health.interfaces.cli", "serve", *args]
    return subprocess.Popen(cmd, env=os.environ | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else "server exited"
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    proc.terminate()
    output, _ = proc.communicate(timeout=20)
    return output.decode()


def test_serve_requires_tokens_and_no_auth_is_loopback_only(tmp_path: Path) -> None:
    refused = runner.invoke(app, ["serve", "--no-auth", "--host", "0.0.0.0", "--store", str(tmp_path)])  # noqa: S104
    assert refused.exit_code == 1
    assert "--no-auth is refused on 0.0.0.0: bind 127.0.0.1 or serve with tokens" in refused.output

    env = {"SAGE_PRINCIPAL": "clinician", "SAGE_PURPOSE": "treatment"}
    port = _free_port()
    proc = _serve(["--port", str(port), "--store", str(tmp_path)], env)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_up(base, proc)
        # authentication is on by default, even on a fresh store: no token, no answer
        r = httpx.get(f"{base}/v1/models", headers={"X-Sage-Purpose": "treatment"})
        assert r.status_code == 401
        assert r.headers["www-authenticate"].startswith("Bearer")
    finally:
        _stop(proc)

    port = _free_port()
    proc = _serve(["--port", str(port), "--store", str(tmp_path), "--no-auth"], env)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_up(base, proc)
        r = httpx.get(f"{base}/v1/models")  # acts as SAGE_PRINCIPAL for SAGE_PURPOSE
        assert r.status_code == 200, r.text
        assert "extractive@1" in {m["id"] for m in r.json()["data"]}
        named = httpx.get(f"{base}/v1/models", headers={"X-Sage-Principal": "admin"})
        assert named.status_code == 403  # a caller still cannot choose who they are
    finally:
        output = _stop(proc)
    assert "warning: --no-auth: every request acts as clinician without credentials; loopback only" in " ".join(
        output.split()
    )


@pytest.mark.slow
def test_serve_command_answers_openai_requests_with_smollm2(tmp_path: Path, smollm2_cache: Path) -> None:
    port = _free_port()
    # a local single-user server: --no-auth on loopback acts as SAGE_PRINCIPAL (tokens: tests/integration)
    env = {"SAGE_MODEL_CACHE_DIR": str(smollm2_cache), "SAGE_PRINCIPAL": "clinician", "SAGE_PURPOSE": "treatment"}
    proc = _serve(["--port", str(port), "--store", str(tmp_path), "--no-auth"], env)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_up(base, proc)
        body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
        r = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"] == "smollm2@q4_1-gguf"
        assert answer["choices"][0]["message"]["content"]
        assert 0 < answer["usage"]["completion_tokens"] <= 8
    finally:
        _stop(proc)
