"""The radiology workflow from the command line with the real SmolLM2, embedder, labeler and image model:
draft → edit → approve → trace; crash (SIGKILL) mid-run and resume; a study with a trained image model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sage_health.agents.trace import TraceStore
from sage_health.data.feedback import FeedbackStore

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STEWARD = ["--as", "data_steward", "--purpose", "operations"]
ADMIN = ["--as", "admin", "--purpose", "operations"]
STEPS = ["plan", "retrieve", "screen", "imaging", "write", "verify", "safety"]


def _env(store: Path, models: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SAGE_STORE": str(store),
            "SAGE_MODEL_CACHE_DIR": str(models),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
            "COLUMNS": "250",  # Rich wraps at the terminal width (80 without a terminal)
            "SAGE_PRINCIPAL": "clinician",  # commands act as the built-in clinician unless they name another
            "SAGE_PURPOSE": "treatment",
            **extra,
        }
    )
    return env


def _cli(args: list[str], env: dict[str, str], *, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sage_health.interfaces.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _json(args: list[str], env: dict[str, str]) -> dict[str, object]:
    result = _cli([*args, "--json"], env)
    assert result.returncode == 0, result.stderr[-2000:]
    payload: dict[str, object] = json.loads(result.stdout)
    return payload


@pytest.fixture(scope="module")
def study_store(data_dir: Path, tmp_path_factory: pytest.TempPathFactory, smollm2_cache: Path) -> dict[str, object]:
    root = tmp_path_factory.mktemp("radiology-e2e")
    corpus = root / "iu"
    (corpus / "images").mkdir(parents=True)
    lines = (data_dir / "iu_xray" / "reports.jsonl").read_text(encoding="utf-8").splitlines()
    keep = lines[:250] + [ln for ln in lines[250:] if json.loads(ln)["uid"] in (7, 1900)]
    (corpus / "reports.jsonl").write_text("\n".join(keep) + "\n", encoding="utf-8")
    shutil.copy(data_dir / "iu_xray" / "images.csv", corpus / "images.csv")
    for png in (data_dir / "iu_xray" / "images").glob("*.png"):
        shutil.copy(png, corpus / "images" / png.name)
    store = root / "store"
    env = _env(store, smollm2_cache, SAGE_DATA_DIR=str(data_dir))  # the verifier's labeler reads the data
    # NIH samples (labels.csv sidecar) give the image model both classes of some observations
    result = _cli(["ingest", str(corpus), str(data_dir / "nih_chestxray14_samples" / "images"), *STEWARD], env)
    assert result.returncode == 0, result.stderr[-2000:]
    return {"store": store, "env": env, "root": root}


def test_draft_edit_approve_and_trace(study_store: dict[str, object]) -> None:
    env = study_store["env"]
    assert isinstance(env, dict)
    draft_file = Path(str(study_store["root"])) / "draft.txt"
    outcome = _json(["radiology", "draft", "--study-id", "iu-xray/DiagnosticReport/7", "--out", str(draft_file)], env)
    assert outcome["status"] == "paused"
    assert str(outcome["model_ref"]).startswith("smollm2@")
    run_id = str(outcome["run_id"])
    draft = outcome["draft"]
    assert isinstance(draft, dict)
    for sentence in draft["sentences"]:
        assert sentence["citations"], sentence  # every kept sentence cites evidence
    text = draft_file.read_text(encoding="utf-8")
    assert text.startswith("FINDINGS:")
    assert "IMPRESSION:" in text
    edited = Path(str(study_store["root"])) / "edited.txt"
    edited.write_text(
        "FINDINGS: Heart size and mediastinal contours are normal. The lungs are clear. No pleural effusion.\n\n"
        "IMPRESSION: No acute cardiopulmonary abnormality.\n",
        encoding="utf-8",
    )
    _json(["principals", "add", "dr-e2e", "--role", "clinician", *ADMIN], env)
    review = _json(
        [
            "radiology",
            "review",
            run_id,
            "--edit-file",
            str(edited),
            "--approve",
            "--as",
            "dr-e2e",
            "--signer",
            "dr-e2e",
        ],
        env,
    )
    assert review["signer"] == "dr-e2e"
    assert review["status"] == "approved"
    assert review["record_id"] == f"sage-radiology/DiagnosticReport/{run_id}"
    assert "+IMPRESSION: No acute cardiopulmonary abnormality." in str(review["diff"])
    shown = _json(["show", str(review["record_id"])], env)
    assert "No acute cardiopulmonary abnormality" in json.dumps(shown)
    tree = _cli(["trace", run_id], env)
    assert tree.returncode == 0, tree.stderr
    for step in [*STEPS, "review"]:
        assert f"{step} (" in tree.stdout
    assert f"signed sage-radiology/DiagnosticReport/{run_id} v1 (edited) by dr-e2e" in tree.stdout
    store = Path(str(study_store["store"]))
    (event,) = FeedbackStore(store / "sage.db").events(run_id=run_id)
    assert event.kind == "edited"
    assert event.signer == "dr-e2e"
    again = _cli(["radiology", "review", run_id, "--approve"], env)
    assert again.returncode == 1
    assert "already reviewed" in again.stderr


def test_killed_run_resumes_from_last_finished_step(study_store: dict[str, object]) -> None:
    env = study_store["env"]
    assert isinstance(env, dict)
    db = Path(str(study_store["store"])) / "sage.db"
    traces = TraceStore(db)
    before = {r.run_id for r in traces.list_runs(limit=1000)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sage_health.interfaces.cli", "radiology", "draft", "--indication", "Chest pain",
         "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run_id = None
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            new = [r for r in traces.list_runs(limit=1000) if r.run_id not in before] if db.exists() else []
            if new and [s.step for s in traces.steps(new[0].run_id)] == STEPS[:4]:
                run_id = new[0].run_id
                break  # the writer (SmolLM2) is generating now
            assert proc.poll() is None, "the draft finished before it could be interrupted"
            time.sleep(0.2)
        assert run_id is not None, "the run never reached the writer"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert traces.get_run(run_id).status == "running"
    assert [s.step for s in traces.steps(run_id)] == STEPS[:4]
    resumed = _json(["runs", "resume", run_id], env)
    assert resumed["status"] == "paused"
    steps = traces.steps(run_id)
    assert [s.step for s in steps] == STEPS  # nothing re-run, nothing lost
    assert all(s.status == "ok" for s in steps)
    listed = _cli(["runs", "--status", "paused", "--json"], env)
    assert run_id in listed.stdout


def test_study_with_a_trained_image_model(study_store: dict[str, object]) -> None:
    env = study_store["env"]
    assert isinstance(env, dict)
    trained = _json(["train", "image-model", "--image-size", "32", "--epochs", "1", *ADMIN], env)
    assert trained["n_train"] or trained.get("n_heldout") is not None
    # a 1-epoch model has no validated held-out AUROC: the default gate (0.7) makes the agent abstain
    gated = _json(["radiology", "draft", "--study-id", "iu-xray/DiagnosticReport/1900", "--model", "extractive"], env)
    assert gated["imaging"]["abstained"] is True  # type: ignore[index]
    assert "held-out AUROC" in str(gated["imaging"]["reason"])  # type: ignore[index]
    # with only the training guard and a low confidence bar, it reports what it saw both classes of
    confident = dict(env, SAGE_IMAGE_CONFIDENCE="0.51", SAGE_IMAGE_MIN_AUROC="none")
    outcome = _json(["radiology", "draft", "--study-id", "iu-xray/DiagnosticReport/1900", "--model", "extractive"],
                    confident)  # fmt: skip
    imaging = outcome["imaging"]
    assert isinstance(imaging, dict)
    assert imaging["model_ref"]
    assert str(imaging["model_ref"]).startswith("cxr-densenet121@")
    assert imaging["abstained"] is False
    assert imaging["findings"]
    assert any("imaging (cxr-densenet121@" in n for n in outcome["notes"])  # type: ignore[union-attr]
    strict = _json(["radiology", "draft", "--study-id", "iu-xray/DiagnosticReport/1900", "--model", "extractive"],
                   dict(env, SAGE_IMAGE_CONFIDENCE="0.999", SAGE_IMAGE_MIN_AUROC="none"))  # fmt: skip
    strict_imaging = strict["imaging"]
    assert isinstance(strict_imaging, dict)
    assert strict_imaging["abstained"] is True
    assert "low confidence" in str(strict_imaging["reason"])


def test_bad_input_from_the_cli_is_one_clear_line_and_stores_nothing(
    study_store: dict[str, object], tmp_path: Path
) -> None:
    env = study_store["env"]
    assert isinstance(env, dict)
    traces = TraceStore(Path(str(study_store["store"])) / "sage.db")
    before = len(traces.list_runs(limit=1000))
    broken = tmp_path / "scan.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    cases = [
        (["--indication", "  "], "empty indication"),
        (["--indication", "Cough", "--patient", "synthea/Patient/unknown"], "unknown patient synthea/Patient/unknown"),
        (["--indication", "Cough", "--images", str(broken)], f"{broken}: unreadable image"),
    ]
    for args, message in cases:
        result = _cli(["radiology", "draft", *args], env)
        assert result.returncode == 1, result.stdout
        assert message in " ".join(result.stderr.split())
    assert len(traces.list_runs(limit=1000)) == before
    review = _cli(["radiology", "review", "no-such-run", "--approve"], env)
    assert review.returncode == 1
    assert "no agent run no-such-run" in review.stderr
