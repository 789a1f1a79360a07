"""The evaluation harness on the real IU X-ray / PubMedQA / MIRAGE files with the real labeler and embedder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sage_health.core.config import Settings
from sage_health.core.errors import EvaluationError
from sage_health.data.embed import MiniLMEmbedder
from sage_health.models.catalog import generator_for, resolve_model
from sage_health.models.evaluation.harness import (
    QAExample,
    load_qa_file,
    load_report_file,
    parse_answer,
    run_qa_eval,
    run_report_eval,
    write_r2gen_splits,
)
from sage_health.models.evaluation.labeler import CheXpertLabeler
from sage_health.models.registry import ModelRegistry

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def splits(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_r2gen_splits(
        data_dir / "iu_xray" / "reports.jsonl",
        data_dir / "iu_xray" / "r2gen_annotation.json",
        tmp_path_factory.mktemp("splits"),
    )


@pytest.fixture(scope="module")
def labeler(data_dir: Path) -> CheXpertLabeler:
    return CheXpertLabeler.from_dir(data_dir / "chexpert_labeler")


def _head(src: Path, dst: Path, n: int) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)[:n]
    dst.write_text("".join(lines), encoding="utf-8")
    return dst


def test_r2gen_splits_match_the_annotation_and_copy_lines_verbatim(splits: dict[str, Path], data_dir: Path) -> None:
    assert set(splits) == {"train", "val"}  # the test split is held out of the shared data
    counts = {k: len(v.read_text(encoding="utf-8").splitlines()) for k, v in splits.items()}
    assert counts == {"train": 2069, "val": 296}
    original = set((data_dir / "iu_xray" / "reports.jsonl").read_text(encoding="utf-8").splitlines())
    assert set(splits["val"].read_text(encoding="utf-8").splitlines()) <= original


def test_report_eval_extractive_nn_uses_only_train_memory(
    splits: dict[str, Path], labeler: CheXpertLabeler, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "sage.db")
    train = _head(splits["train"], tmp_path / "train.jsonl", 300)
    mv = reg.register("nn", backend="extractive", config={"exemplars": 1})
    outcome = run_report_eval(
        train_file=train,
        test_file=splits["val"],
        task="impression",
        model=mv,
        generator=generator_for(mv, Settings()),
        registry=reg,
        labeler=labeler,
        embedder=embedder,
        out_dir=tmp_path / "reports",
        limit=25,
        seed=3,
        drop_leaks=True,
    )
    run = outcome.run
    train_impressions = {s.impression for s in load_report_file(train)}
    assert len(run.items) == 25
    assert all(item.prediction in train_impressions for item in run.items)  # nearest-neighbour = a train impression
    test_ids = {s.id for s in load_report_file(splits["val"])}
    assert {i.id for i in run.items} <= test_ids
    text = run.metrics["text"]
    assert isinstance(text, dict)
    assert 0 < float(text["bleu_1"]) <= 1
    assert 0 < float(text["rouge_l"]) <= 1
    assert 0 < float(text["distinct_output_ratio"]) <= 1
    ce = run.metrics["ce"]
    assert isinstance(ce, dict)
    assert 0 <= float(ce["micro_f1"]) <= 1
    assert run.config["exemplars"] == 1
    assert run.seed == 3
    assert outcome.files.json_path.is_file()
    assert outcome.files.html_path.is_file()
    stored = reg.get("nn", mv.version).metrics_for(outcome.eval_set)
    assert stored is not None
    assert stored["text"] == text
    assert json.loads(outcome.files.json_path.read_text(encoding="utf-8"))["run_id"] == run.run_id


def test_leak_guard_refuses_shared_ids_and_duplicate_examples(
    splits: dict[str, Path], labeler: CheXpertLabeler, embedder: MiniLMEmbedder, tmp_path: Path
) -> None:
    reg = ModelRegistry(tmp_path / "sage.db")
    mv = resolve_model(reg, "extractive")
    gen = generator_for(mv, Settings())
    val = _head(splits["val"], tmp_path / "val.jsonl", 40)
    mixed = tmp_path / "train_with_val.jsonl"
    mixed.write_text(
        splits["train"].read_text(encoding="utf-8")[:20000].rsplit("\n", 1)[0]
        + "\n"
        + val.read_text(encoding="utf-8").splitlines(keepends=True)[5],
        encoding="utf-8",
    )
    kwargs = {
        "task": "impression",
        "model": mv,
        "generator": gen,
        "registry": reg,
        "labeler": labeler,
        "embedder": embedder,
        "out_dir": tmp_path / "r",
    }
    with pytest.raises(EvaluationError, match=r"train/test leak: 1 id\(s\) in both files"):
        run_report_eval(train_file=mixed, test_file=val, **kwargs)  # type: ignore[arg-type]
    # the same study under another id is still a leak
    row = json.loads(val.read_text(encoding="utf-8").splitlines()[5])
    row["uid"] = 999999
    renamed = tmp_path / "train_renamed.jsonl"
    renamed.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(EvaluationError, match="1 test item\\(s\\) are identical to a train item"):
        run_report_eval(train_file=renamed, test_file=val, **kwargs)  # type: ignore[arg-type]
    outcome = run_report_eval(train_file=renamed, test_file=val, drop_leaks=True, **kwargs)  # type: ignore[arg-type]
    run_block = outcome.run.metrics["run"]
    assert isinstance(run_block, dict)
    assert run_block["leaked_test_items_dropped"] == 1
    assert f"iu:{json.loads(val.read_text(encoding='utf-8').splitlines()[5])['uid']}" not in {
        i.id for i in outcome.run.items
    }
    assert "minus-train-" in outcome.eval_set


def test_malformed_report_file_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"uid": 1, "findings": "ok"}\n{"uid": 2, "findings": \n', encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"bad.jsonl:2: not valid JSON"):
        load_report_file(bad)
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"uid": 1}\n{"uid": 1}\n', encoding="utf-8")
    with pytest.raises(EvaluationError, match=r"dup.jsonl:2: duplicate study uid 1"):
        load_report_file(dup)


def test_qa_loaders_and_answer_parsing(data_dir: Path) -> None:
    pub = load_qa_file(data_dir / "pubmedqa" / "ori_pqal_dev.json", "pubmedqa")
    assert len(pub) == 500
    assert {q.answer for q in pub} <= {"yes", "no", "maybe"}
    assert pub[0].contexts
    medqa = load_qa_file(data_dir / "mirage" / "medqa.json", "mirage")
    assert len(medqa) == 1273
    assert medqa[0].labels == ("A", "B", "C", "D")
    mc = QAExample(
        id="x", question="q", options=("A. aspirin", "B. metformin"), labels=("A", "B"), answer="B", contexts=()
    )
    assert parse_answer("B", mc) == "B"
    assert parse_answer("(a) aspirin", mc) == "A"
    assert parse_answer("The answer is B.", mc) == "B"
    assert parse_answer("I would give metformin", mc) == "B"
    assert parse_answer("no idea", mc) == "invalid"
    yn = QAExample(id="y", question="q", options=(), labels=("yes", "no", "maybe"), answer="no", contexts=())
    assert parse_answer("No, it does not.", yn) == "no"
    assert parse_answer("Perhaps", yn) == "invalid"


def test_qa_eval_records_accuracy_consistent_with_items(data_dir: Path, tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "sage.db")
    mv = resolve_model(reg, "extractive")
    gen = generator_for(mv, Settings())
    outcome = run_qa_eval(
        test_file=data_dir / "pubmedqa" / "ori_pqal_dev.json",
        fmt="pubmedqa",
        model=mv,
        generator=gen,
        registry=reg,
        out_dir=tmp_path / "r",
        retrieval=True,
        limit=30,
    )
    qa = outcome.run.metrics["qa"]
    assert isinstance(qa, dict)
    correct = sum(i.scores["correct"] for i in outcome.run.items)
    assert qa["accuracy"] == pytest.approx(correct / 30)
    assert qa["n_items"] == 30
    assert outcome.run.config["retrieval"] is True
    with pytest.raises(EvaluationError, match="not available for MIRAGE"):
        run_qa_eval(
            test_file=data_dir / "mirage" / "mmlu.json",
            fmt="mirage",
            model=mv,
            generator=gen,
            registry=reg,
            out_dir=tmp_path / "r",
            retrieval=True,
        )
