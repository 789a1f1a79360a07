"""LoRA adapter tuning (``sage_health.models.adaptation.lora`` and ``sage-health train lora``) on real snapshots of
IU X-ray reports in a real SQLite store, with the tiny local causal LM (and once with the real SmolLM2): the harness's
exact prompts, training, registration and lineage, loading through the generator pool, exact resume after SIGKILL,
and the refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, StoreError, ValidationError
from sage_health.core.hashing import sha256_file
from sage_health.data.datasets import SnapshotInfo, create_snapshot, get_snapshot
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.governance.access import open_governed
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.lineage import LineageStore, snapshot_node
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.interfaces.cli import app
from sage_health.models.adaptation.lora import (
    LoraConfig,
    LoraResult,
    base_registry_fields,
    chat_example,
    encode_example,
    lora_run_dir,
    register_lora_candidate,
    snapshot_train_items,
    train_lora,
)
from sage_health.models.catalog import GeneratorPool
from sage_health.models.evaluation.harness import REPORT_TASKS, load_qa_file, load_report_file
from sage_health.models.generation.base import GenerationParams
from sage_health.models.generation.prompts import MULTIPLE_CHOICE, PUBMEDQA
from sage_health.models.registry import ModelRegistry

pytestmark = [pytest.mark.integration]

N_REPORTS = 40
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The tiny LM's tokenizer was trained on six sentences: IU prompts are ~450 of its tokens (~160 for SmolLM2).
TINY_MAX_LENGTH = 512
CLI_ENV = {
    "SAGE_PRINCIPAL": "admin",
    "SAGE_PURPOSE": "operations",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
runner = CliRunner(env=CLI_ENV)


@pytest.fixture(scope="module")
def base_store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, embedder: MiniLMEmbedder) -> Path:
    """The first IU X-ray reports ingested into a real store, with impression, findings and text snapshots made
    by a data steward."""
    root = tmp_path_factory.mktemp("lora-base")
    reports = root / "reports.jsonl"
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        reports.write_text("".join(next(handle) for _ in range(N_REPORTS)), encoding="utf-8")
    store_dir = root / "store"
    settings = Settings(store=store_dir, data_dir=data_dir)
    with SqliteDocumentStore(settings.db_path, embedder) as raw:
        assert IngestPipeline(raw).run([reports]).problems == []
        steward = open_governed(settings, raw, principal="data_steward", purpose="operations")
        for name, task in (("iu-imp", "impression"), ("iu-find", "findings"), ("iu-text", "text")):
            create_snapshot(steward, settings, name, "DiagnosticReport:iu-xray", task=task, deid=True)
        for name, task in (("iu-imp-identified", "impression"), ("iu-find-identified", "findings")):
            create_snapshot(steward, settings, name, "DiagnosticReport:iu-xray", task=task)
    return store_dir


@pytest.fixture
def settings(tmp_path: Path, base_store: Path, data_dir: Path) -> Settings:
    store_dir = tmp_path / "store"
    shutil.copytree(base_store, store_dir)
    return Settings(store=store_dir, data_dir=data_dir)


@pytest.fixture
def imp(settings: Settings) -> SnapshotInfo:
    return get_snapshot(settings, "iu-imp")


def _tiny_config(**kw: Any) -> LoraConfig:
    values: dict[str, Any] = {"task": "impression", "batch_size": 4, "max_length": TINY_MAX_LENGTH, "warmup_steps": 2}
    values.update(kw)
    return LoraConfig(**values)


def _mean_loss(model: Any, tokenizer: Any, items: Sequence[Mapping[str, Any]]) -> float:
    """Mean target-token cross-entropy of ``model`` on the items, encoded exactly as training encodes them."""
    model.eval()
    losses = []
    for item in items:
        ids, n_prompt = encode_example(tokenizer, "impression", item, TINY_MAX_LENGTH)
        x = torch.tensor([ids])
        labels = x.clone()
        labels[0, :n_prompt] = -100
        with torch.no_grad():
            losses.append(float(model(input_ids=x, labels=labels).loss))
    return float(np.mean(losses))


def _weights(result_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(result_dir / "adapter_model.safetensors"))


def _assert_same_run(a: LoraResult | Mapping[str, Any], b: LoraResult | Mapping[str, Any]) -> None:
    def parts(r: LoraResult | Mapping[str, Any]) -> tuple[np.ndarray[Any, Any], Path]:
        if isinstance(r, LoraResult):
            return np.array(r.loss_curve), r.adapter_dir
        return np.array(r["loss_curve"]), Path(r["adapter_dir"])

    (curve_a, dir_a), (curve_b, dir_b) = parts(a), parts(b)
    assert curve_a.shape == curve_b.shape
    np.testing.assert_allclose(curve_a, curve_b, rtol=0, atol=1e-6)
    wa, wb = _weights(dir_a), _weights(dir_b)
    assert sorted(wa) == sorted(wb)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)  # measured: bit-identical on this CPU


# ---------------------------------------------------------------------------------------------- prompts


def test_examples_are_the_harness_prompts(settings: Settings, data_dir: Path, tmp_path: Path) -> None:
    """Snapshot items become exactly the messages the evaluation harness sends for the same studies/questions."""
    lines = (data_dir / "iu_xray" / "reports.jsonl").read_text(encoding="utf-8").splitlines()[:N_REPORTS]
    reports = tmp_path / "reports.jsonl"
    reports.write_text("\n".join(lines) + "\n", encoding="utf-8")
    studies = {s.id.removeprefix("iu:"): s for s in load_report_file(reports)}
    for snap, task in (("iu-imp-identified", "impression"), ("iu-find-identified", "findings")):
        spec = REPORT_TASKS[task]
        items = snapshot_train_items(get_snapshot(settings, snap))
        assert len(items) >= 10
        for item in items:
            study = studies[str(item["record_id"]).rsplit("/", 1)[1]]
            messages, target = chat_example(task, item)
            # a findings snapshot item carries the indication (or 'none'), not the comparison the harness adds
            expected_input = spec.input_of(replace(study, comparison="", indication=study.indication or "none"))
            assert messages == spec.template.messages(expected_input, exemplars=[])
            assert target == spec.reference_of(study)

    pubmed = {ex.id: ex for ex in load_qa_file(data_dir / "pubmedqa" / "ori_pqal_dev.json", "pubmedqa")}
    raw_pubmed = json.loads((data_dir / "pubmedqa" / "ori_pqal_dev.json").read_text(encoding="utf-8"))
    for pmid, row in list(raw_pubmed.items())[:20]:  # items as the snapshot builder writes the ingested QAItems
        options = {"A": "yes", "B": "no", "C": "maybe"}
        item = {
            "record_id": f"pubmedqa/QAItem/{pmid}",
            "question": row["QUESTION"],
            "options": options,
            "input": row["QUESTION"] + "\n(A) yes\n(B) no\n(C) maybe",
            "target": row["final_decision"],
        }
        ex = pubmed[f"pubmedqa:{pmid}"]
        assert chat_example("qa", item) == (PUBMEDQA.messages(None, evidence=[], question=ex.question), ex.answer)
    mirage = json.loads((data_dir / "mirage" / "mmlu.json").read_text(encoding="utf-8"))
    mmlu = {ex.id: ex for ex in load_qa_file(data_dir / "mirage" / "mmlu.json", "mirage")}
    for key, row in list(mirage["mmlu"].items())[:20]:
        item = {"record_id": key, "question": row["question"], "options": row["options"], "target": row["answer"]}
        ex = mmlu[f"mmlu:{key}"]
        expected = MULTIPLE_CHOICE.messages(None, evidence=[], question=ex.question, options=ex.options)
        assert chat_example("qa", item) == (expected, ex.answer)
    with pytest.raises(ValidationError, match="neither yes/no/maybe nor one of the item's option letters"):
        chat_example("qa", {"record_id": "medquad/1", "question": "What is asthma?", "target": "A lung disease."})
    with pytest.raises(ValidationError, match="item iu/1: empty input or target"):
        chat_example("impression", {"record_id": "iu/1", "input": "Clear lungs.", "target": "  "})


def test_truncation_cuts_the_input_never_the_target(tiny_lm_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    findings = " ".join(["The heart is normal in size. The lungs are clear."] * 60)
    item = {"record_id": "r1", "input": findings, "target": "No acute cardiopulmonary abnormality."}
    full, n_full = encode_example(tok, "impression", item, 4096)
    ids, n_prompt = encode_example(tok, "impression", item, 600)
    assert len(full) > 1000
    assert 600 >= len(ids) > 580
    assert ids[n_prompt:] == full[n_full:]  # the target and its eos are intact
    assert ids[-1] == tok.eos_token_id
    assert tok.decode(ids[n_prompt:-1]) == "No acute cardiopulmonary abnormality."
    prompt = tok.decode(ids[:n_prompt])
    assert prompt.startswith(tok.decode(full[:40]))  # system prompt untouched
    assert "The heart is normal in size." in prompt
    assert prompt.endswith("</input>\nWrite the impression for these findings.<|im_end|>\n<|im_start|>assistant\n")
    long_target = {"record_id": "r2", "input": "Clear.", "target": findings}
    with pytest.raises(ValidationError, match="item r2: the target alone does not fit max_length 600"):
        encode_example(tok, "impression", long_target, 600)


# ---------------------------------------------------------------------------------------------- library


def test_train_register_and_generate_with_the_tiny_lm(settings: Settings, imp: SnapshotInfo, tiny_lm_dir: Path) -> None:
    items = snapshot_train_items(imp)
    assert len(items) >= 10
    repeated = items[:4]  # a tiny dataset, seen again and again: the loss must fall
    config = _tiny_config(steps=30, learning_rate=3e-3, checkpoint_every=10)
    base = str(tiny_lm_dir)
    run_dir = lora_run_dir(
        settings, name="lora-impression", snapshot_ref=imp.ref, config=config, base=base, init_adapter=None
    )
    assert run_dir.parent == settings.models_dir / "lora-runs"
    assert run_dir.name.startswith(f"lora-impression-{imp.hash}-impression-")
    seen: list[tuple[int, int, float]] = []
    result = train_lora(
        repeated,
        base=base,
        settings=settings,
        run_dir=run_dir,
        config=config,
        progress=lambda s, t, loss: seen.append((s, t, loss)),
        snapshot_ref=imp.ref,
    )

    assert (result.steps, result.examples, result.skipped, result.resumed_from) == (30, 4, 0, None)
    assert seen == [(s, 30, loss) for s, loss in result.loss_curve]
    losses = [loss for _, loss in result.loss_curve]
    assert [s for s, _ in result.loss_curve] == list(range(1, 31))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 1.0, losses  # measured: about 7.0 -> 5.0
    metrics = result.metrics()
    assert metrics["first_loss"] == round(losses[0], 6)
    assert metrics["last_loss"] == round(losses[-1], 6)
    assert metrics["mean_loss_last_10"] == pytest.approx(np.mean(losses[-10:]), abs=1e-5)
    assert metrics["seconds_per_step"] > 0
    assert result.total_seconds >= result.seconds > 0
    assert 4 * 300 < result.tokens_per_step <= 4 * TINY_MAX_LENGTH  # four sequences per step, no padding counted
    assert result.adapter_sha256 == sha256_file(result.adapter_dir / "adapter_model.safetensors")
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 8
    assert result.loss_plot.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000020", "step-000030"]
    record = json.loads((run_dir / "training.json").read_text(encoding="utf-8"))
    assert record["snapshot"] == imp.ref
    assert record["base"] == base
    assert record["loss_curve"] == [[s, v] for s, v in result.loss_curve]
    assert record["prompt_template"] == "cxr-impression-from-findings@1"
    assert set(record["versions"]) >= {"torch", "peft", "transformers"}

    registry = ModelRegistry(settings.db_path)
    fields = base_registry_fields(base)
    mv = register_lora_candidate(
        registry,
        result,
        name="lora-impression",
        snapshot_ref=imp.ref,
        base=base,
        registry_fields=fields,
        parent=None,
        actor="admin",
    )
    assert (mv.stage, mv.backend, mv.dataset_snapshot_id) == ("candidate", "transformers", imp.ref)
    assert mv.adapter_sha256 == result.adapter_sha256
    stable = Path(str(mv.adapter_path))
    assert stable.parent == settings.models_dir / "lora"
    assert stable != result.adapter_dir
    assert sha256_file(stable / "adapter_model.safetensors") == result.adapter_sha256
    assert mv.config["parent"] is None
    assert mv.config["base"] == base
    assert mv.config["task"] == "impression"
    assert mv.config["training"] == config.as_dict()
    assert mv.config["metrics"]["last_loss"] == metrics["last_loss"]
    assert mv.config["backend_options"] == {"path": str(tiny_lm_dir.resolve())}
    again = register_lora_candidate(
        registry,
        result,
        name="lora-impression",
        snapshot_ref=imp.ref,
        base=base,
        registry_fields=fields,
        parent=None,
        actor="admin",
    )
    assert again.ref == mv.ref
    assert len(registry.list_versions("lora-impression")) == 1

    # the generator pool loads base + the registered adapter; it is the trained model (lower loss on its items)
    _, gen = GeneratorPool(settings, registry).get(mv.ref)
    assert gen.info.adapter_sha256 == result.adapter_sha256
    messages, _ = chat_example("impression", repeated[0])
    assert gen.generate(messages, GenerationParams(max_new_tokens=8)).text.strip()
    from transformers import AutoModelForCausalLM

    tuned_model, tokenizer = gen.ensure_loaded()
    base_loss = _mean_loss(AutoModelForCausalLM.from_pretrained(tiny_lm_dir), tokenizer, repeated)
    tuned_loss = _mean_loss(tuned_model, tokenizer, repeated)
    assert tuned_loss < base_loss - 1.0, (base_loss, tuned_loss)


def test_resume_rules_and_incomplete_checkpoints(settings: Settings, imp: SnapshotInfo, tiny_lm_dir: Path) -> None:
    items = snapshot_train_items(imp)
    config = _tiny_config(steps=10, checkpoint_every=5, limit=6)
    base = str(tiny_lm_dir)
    run_dir = settings.models_dir / "lora-runs" / "crashing"

    def crash(step: int, total: int, loss: float) -> None:
        if step == 7:
            raise KeyboardInterrupt  # dies between checkpoints 5 and 10

    with pytest.raises(KeyboardInterrupt):
        train_lora(items, base=base, settings=settings, run_dir=run_dir, config=config, progress=crash)
    assert not (run_dir / "adapter").exists()
    assert not (run_dir / "training.json").exists()
    with pytest.raises(
        ValidationError,
        match=r"already holds a training run \(checkpoints up to step 5\); pass "
        "--resume to continue it, or remove the folder",
    ):
        train_lora(items, base=base, settings=settings, run_dir=run_dir, config=config)
    with pytest.raises(ValidationError, match=r"nothing to resume in .*: no complete checkpoint there"):
        train_lora(items, base=base, settings=settings, run_dir=_empty_dir(settings), config=config, resume=True)
    with pytest.raises(ValidationError, match="holds a run with another config"):
        train_lora(
            items,
            base=base,
            settings=settings,
            run_dir=run_dir,
            config=_tiny_config(steps=11, checkpoint_every=5, limit=6),
            resume=True,
        )

    # a later checkpoint folder without its completion marker (a crash while writing it) is ignored
    junk = run_dir / "checkpoints" / "step-000009"
    junk.mkdir()
    (junk / "state.pt").write_bytes(b"half written")
    resumed = train_lora(items, base=base, settings=settings, run_dir=run_dir, config=config, resume=True)
    assert resumed.resumed_from == 5
    assert resumed.steps == 10
    assert not junk.exists()
    straight = train_lora(items, base=base, settings=settings, run_dir=settings.models_dir / "straight", config=config)
    _assert_same_run(resumed, straight)
    assert resumed.adapter_sha256 == straight.adapter_sha256

    # a finished run with --resume is returned as it is, without training again
    stamp = (run_dir / "training.json").stat().st_mtime_ns
    again = train_lora(items, base=base, settings=settings, run_dir=run_dir, config=config, resume=True)
    assert (again.adapter_sha256, again.loss_curve, again.resumed_from) == (
        resumed.adapter_sha256,
        resumed.loss_curve,
        10,
    )
    assert (run_dir / "training.json").stat().st_mtime_ns == stamp


def _empty_dir(settings: Settings) -> Path:
    return settings.models_dir / "lora-runs" / "empty"


def test_no_usable_item_is_one_clear_error(settings: Settings, imp: SnapshotInfo, tiny_lm_dir: Path) -> None:
    bad = [{"record_id": "a", "input": "Clear lungs.", "target": ""}, {"record_id": "b", "input": None, "target": "x"}]
    with pytest.raises(
        ValidationError,
        match=f"snapshot {imp.ref} has no usable train item for task impression "
        r"\(2 item\(s\); skipped: empty input or target: 2\)",
    ):
        train_lora(
            bad,
            base=str(tiny_lm_dir),
            settings=settings,
            run_dir=_empty_dir(settings),
            config=_tiny_config(),
            snapshot_ref=imp.ref,
        )
    assert not (_empty_dir(settings) / "checkpoints").exists()
    # bad items among good ones are skipped and counted
    items = [*bad, *snapshot_train_items(imp)[:3]]
    result = train_lora(
        items, base=str(tiny_lm_dir), settings=settings, run_dir=_empty_dir(settings), config=_tiny_config(steps=2)
    )
    assert (result.examples, result.skipped, dict(result.skipped_reasons)) == (3, 2, {"empty input or target": 2})


# ---------------------------------------------------------------------------------------------- CLI


def _error(stderr: str) -> str:
    """The error a failed command printed (Rich wraps long lines at the console width: joined back here)."""
    assert "Traceback" not in stderr
    assert stderr.count("error: ") == 1, stderr
    return " ".join(stderr[stderr.index("error: ") :].split())


@pytest.mark.e2e
def test_cli_trains_registers_lineage_audit_and_continues(
    settings: Settings, imp: SnapshotInfo, tiny_lm_dir: Path
) -> None:
    store = str(settings.store)
    args = [
        "train",
        "lora",
        "--snapshot",
        "iu-imp",
        "--base",
        str(tiny_lm_dir),
        "--steps",
        "6",
        "--batch-size",
        "4",
        "--max-length",
        str(TINY_MAX_LENGTH),
        "--limit",
        "12",
        "--checkpoint-every",
        "3",
        "--store",
        store,
    ]
    first = runner.invoke(app, [*args, "--json"])
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    ref = payload["model"]
    assert (ref, payload["stage"], payload["snapshot"], payload["parent"]) == (
        "lora-impression@1",
        "candidate",
        imp.ref,
        None,
    )
    assert payload["metrics"]["steps"] == 6
    assert payload["metrics"]["examples"] == 12
    assert len(payload["loss_curve"]) == 6
    assert "6/6" in first.stderr  # the progress bar
    registry = ModelRegistry(settings.db_path)
    mv = registry.resolve(ref)
    assert mv.dataset_snapshot_id == imp.ref
    assert mv.adapter_sha256 == payload["adapter_sha256"]
    assert mv.config["training"]["limit"] == 12
    assert mv.config["training"]["alpha"] == 16

    up = runner.invoke(app, ["lineage", f"model:{ref}", "--up", "--json", "--store", store])
    assert up.exit_code == 0, up.output
    tree = json.loads(up.stdout)
    assert [(c["node"], c["relation"]) for c in tree["children"]] == [(f"snapshot:{imp.ref}", "trained on")]
    down = runner.invoke(app, ["lineage", f"snapshot:{imp.ref}", "--json", "--store", store])
    assert (f"model:{ref}", "trained") in [(c["node"], c["relation"]) for c in json.loads(down.stdout)["children"]]
    trained = AuditLog(settings.db_path).events(action="train")[-1]
    assert trained.principal == "admin"
    assert (trained.detail["model"], trained.detail["snapshot"]) == (ref, imp.ref)

    # the same command again: refused without --resume; with it, the finished run and the same registration
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    assert "already holds a training run (checkpoints up to step 6); pass --resume to continue it" in _error(
        again.stderr
    )
    resumed = runner.invoke(app, [*args, "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    assert (json.loads(resumed.stdout)["model"], json.loads(resumed.stdout)["adapter_sha256"]) == (
        ref,
        payload["adapter_sha256"],
    )
    assert len(registry.list_versions("lora-impression")) == 1

    # continue the registered adapter (table output); its base comes from the parent
    cont = runner.invoke(
        app,
        [
            "train",
            "lora",
            "--snapshot",
            imp.ref,
            "--init-adapter",
            ref,
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--max-length",
            str(TINY_MAX_LENGTH),
            "--store",
            store,
        ],
    )
    assert cont.exit_code == 0, cont.output
    assert "LoRA adapter lora-impression@2" in cont.stdout
    assert "adapter sha256" in cont.stdout
    child = registry.get("lora-impression", "2")
    assert child.config["parent"] == ref
    assert child.config["base"] == str(tiny_lm_dir)
    assert child.adapter_sha256 != mv.adapter_sha256
    mismatch = runner.invoke(
        app, ["train", "lora", "--snapshot", "iu-imp", "--init-adapter", ref, "--base", "smollm2", "--store", store]
    )
    assert mismatch.exit_code == 1
    assert "differs from the base of lora-impression@1" in _error(mismatch.stderr)


@pytest.mark.e2e
def test_cli_refusals_are_one_line(settings: Settings, imp: SnapshotInfo, tiny_lm_dir: Path) -> None:
    store = str(settings.store)
    common = ["--base", str(tiny_lm_dir), "--steps", "2", "--max-length", str(TINY_MAX_LENGTH), "--store", store]

    def refused(args: list[str], message: str, env: dict[str, str] | None = None) -> None:
        result = runner.invoke(app, ["train", "lora", *args, *common], env=env)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: "), result.stderr  # nothing else was printed
        assert message in _error(result.stderr)

    text = get_snapshot(settings, "iu-text")
    refused(["--snapshot", "iu-text"], f"snapshot {text.ref} is a 'text' snapshot; LoRA trains impression, findings")
    refused(["--snapshot", "iu-imp", "--task", "findings"], "holds impression items, whose input/target are not")
    refused(["--snapshot", "iu-imp", "--steps", "3", "--epochs", "1"], "give either --steps or --epochs, not both")
    refused(["--snapshot", "nope"], "no dataset snapshot named 'nope'")
    refused(["--snapshot", "iu-imp"], "no principal given", env={"SAGE_PRINCIPAL": ""})
    refused(["--snapshot", "iu-imp", "--as", "clinician", "--purpose", "treatment"], "train")
    refused(["--snapshot", "iu-imp-identified"], "is not de-identified and admin only receives de-identified data")

    LineageStore(settings.db_path).taint([snapshot_node(imp.name, imp.hash)], "records erased")
    refused(["--snapshot", "iu-imp"], f"snapshot {imp.ref} is tainted (records erased); build a fresh snapshot")
    denied = AuditLog(settings.db_path).events(action="train")[-1]
    assert denied.detail["outcome"] == "denied"
    assert denied.detail["snapshot"] == imp.ref
    with pytest.raises(PolicyViolation, match="is tainted"):
        snapshot_train_items(get_snapshot(settings, "iu-imp"))

    find = get_snapshot(settings, "iu-find")
    (find.path / "train.jsonl").write_text('{"record_id": "x", "input": "none", "target": "Clear."}\n')
    refused(["--snapshot", "iu-find"], f"snapshot {find.ref}: train.jsonl is missing or changed since creation")
    with pytest.raises(StoreError, match="changed since creation"):
        snapshot_train_items(find)
    # nothing was trained or registered by any refusal
    assert not (settings.models_dir / "lora-runs").exists()
    assert ModelRegistry(settings.db_path).list_versions() == []


@pytest.mark.e2e
@pytest.mark.slow
def test_sigkilled_cli_run_resumes_to_the_same_adapter(
    settings: Settings, imp: SnapshotInfo, tiny_lm_dir: Path
) -> None:
    """`train lora` killed with SIGKILL right after its first checkpoint, then run again with --resume, ends with
    the loss curve and adapter weights of an uninterrupted run of the same command."""
    store = str(settings.store)
    args = [
        "train",
        "lora",
        "--snapshot",
        "iu-imp",
        "--base",
        str(tiny_lm_dir),
        "--steps",
        "60",
        "--batch-size",
        "4",
        "--max-length",
        str(TINY_MAX_LENGTH),
        "--limit",
        "12",
        "--checkpoint-every",
        "5",
        "--store",
        store,
    ]
    env = {**os.environ, **CLI_ENV, "SAGE_DATA_DIR": str(settings.data_dir), "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "sage_health.interfaces.cli", *args, "--json"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    runs = settings.models_dir / "lora-runs"
    deadline = time.monotonic() + 180
    try:
        while not list(runs.glob("*/checkpoints/step-*/COMPLETE")):
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = runs.iterdir()
    assert not (run_dir / "training.json").exists()
    assert not (run_dir / "adapter").exists()
    killed_at = max(int(p.parent.name.split("-")[1]) for p in run_dir.glob("checkpoints/step-*/COMPLETE"))
    assert 5 <= killed_at < 60

    resumed = runner.invoke(app, [*args, "--resume", "--json"])
    assert resumed.exit_code == 0, resumed.output
    after = json.loads(resumed.stdout)
    assert after["resumed_from"] == killed_at
    assert after["metrics"]["steps"] == 60
    assert after["metrics"]["total_seconds"] >= after["metrics"]["seconds"]
    straight = runner.invoke(app, [*args, "--name", "uninterrupted", "--json"])
    assert straight.exit_code == 0, straight.output
    reference = json.loads(straight.stdout)
    assert reference["resumed_from"] is None
    _assert_same_run(after, reference)
    assert after["adapter_sha256"] == reference["adapter_sha256"]


# ---------------------------------------------------------------------------------------------- SmolLM2


@pytest.fixture
def smollm2_settings(settings: Settings, smollm2_cache: Path) -> Iterator[Settings]:
    return settings.model_copy(update={"model_cache_dir": smollm2_cache})


@pytest.mark.slow
def test_smollm2_lora_trains_registers_and_loads(smollm2_settings: Settings, imp: SnapshotInfo) -> None:
    settings = smollm2_settings
    config = LoraConfig(task="impression", steps=3, batch_size=2, max_length=128, checkpoint_every=2)
    run_dir = lora_run_dir(
        settings, name="smollm2", snapshot_ref=imp.ref, config=config, base="smollm2", init_adapter=None
    )
    assert run_dir.name == f"smollm2-{imp.hash}-impression-{config.digest()}"
    result = train_lora(
        snapshot_train_items(imp),
        base="smollm2",
        settings=settings,
        run_dir=run_dir,
        config=config,
        snapshot_ref=imp.ref,
    )
    assert result.steps == 3
    assert len(result.loss_curve) == 3
    assert all(0.0 < loss < 15.0 for _, loss in result.loss_curve)
    assert result.truncated > 0  # at 128 tokens most IU prompts lose the end of their findings
    assert result.tokens_per_step <= 2 * 128
    registry = ModelRegistry(settings.db_path)
    mv = register_lora_candidate(
        registry,
        result,
        name="smollm2",
        snapshot_ref=imp.ref,
        base="smollm2",
        registry_fields=base_registry_fields("smollm2"),
        parent=None,
        actor="admin",
    )
    assert (mv.backend, mv.dataset_snapshot_id, mv.adapter_sha256) == ("smollm2", imp.ref, result.adapter_sha256)
    _, gen = GeneratorPool(settings, registry).get(mv.ref)
    assert gen.info.adapter_sha256 == result.adapter_sha256
    messages, _ = chat_example("impression", snapshot_train_items(imp)[0])
    assert gen.generate(messages, GenerationParams(max_new_tokens=12)).text.strip()
