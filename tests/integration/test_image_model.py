"""The chest X-ray image model end to end on real public images: training set, training, registry, inference and
the imaging agent.

One small store per module: the 5 IU X-ray PNGs with their 3 reports, the 9 NIH ChestX-ray14 PNGs with their
labels, 31 COVID-19 collection PNGs (the first two of every finding value) with their ``images.csv`` rows, and two
non-chest DICOMs. Training runs at 64 px for one epoch.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sage_health.agents.base import AgentContext
from sage_health.agents.imaging import MIN_HELDOUT_AUROC, NO_MODEL_REASON, ImagingAgent, ImagingInput
from sage_health.core.config import Settings
from sage_health.core.errors import ModelLoadError, StudyInputError
from sage_health.core.hashing import sha256_file
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.governance.access import open_governed
from sage_health.data.governance.lineage import LineageStore, model_node, record_node
from sage_health.data.ingest.pipeline import IngestPipeline
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.interfaces.cli.imaging import train_app
from sage_health.models.evaluation.labeler import NO_FINDING, OBSERVATIONS, CheXpertLabeler, Label
from sage_health.models.imaging.encoder import WEIGHTS_FILE, MonaiDenseNetImageEncoder
from sage_health.models.imaging.training import (
    TrainingSet,
    TrainResult,
    auroc,
    build_training_set,
    split_heldout,
    train_image_model,
)
from sage_health.models.registry import ModelRegistry
from sage_health.services.erasure import erase
from sage_health.services.session import Credentials, open_session

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IU_STUDIES = (3, 7, 1900)
NIH_EXPECTED = {  # NIH label -> the CheXpert observation it names (None: no CheXpert observation)
    "Cardiomegaly": "Cardiomegaly",
    "Hernia": None,
    "Effusion": "Pleural Effusion",
    "Emphysema": None,
    "Infiltration": "Lung Opacity",
    "Pneumothorax": "Pneumothorax",
    "Atelectasis": "Atelectasis",
}
TRAIN_ARGS: dict[str, Any] = {"epochs": 1, "image_size": 64, "batch_size": 8, "seed": 7}


class Env:
    def __init__(
        self,
        root: Path,
        settings: Settings,
        store: SqliteDocumentStore,
        labeler: CheXpertLabeler,
        training_set: TrainingSet,
        result: TrainResult,
        covid_rows: list[dict[str, str]],
        reports: dict[int, dict[str, Any]],
    ) -> None:
        self.root = root
        self.settings = settings
        self.store = store
        self.labeler = labeler
        self.training_set = training_set
        self.result = result
        self.covid_rows = covid_rows
        self.reports = reports


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, embedder: MiniLMEmbedder) -> Any:
    root = tmp_path_factory.mktemp("image-model")
    reports: dict[int, dict[str, Any]] = {}
    lines = []
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            obj = json.loads(line)
            if obj["uid"] in IU_STUDIES:
                reports[obj["uid"]] = obj
                lines.append(line.strip())
    assert sorted(reports) == list(IU_STUDIES)
    (root / "reports.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    covid = root / "covid"
    (covid / "images").mkdir(parents=True)
    with (data_dir / "covid_chestxray_subset" / "images.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    taken: Counter[str] = Counter()
    picked = []
    for row in rows:
        if taken[row["finding"]] < 2:
            taken[row["finding"]] += 1
            picked.append(row)
    with (covid / "images.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(picked)
    for row in picked:
        shutil.copyfile(data_dir / "covid_chestxray_subset" / row["image_file"], covid / row["image_file"])

    settings = Settings(store=root / "store", data_dir=data_dir)
    with SqliteDocumentStore(settings.db_path, embedder) as store:
        report = IngestPipeline(store).run(
            [
                data_dir / "iu_xray" / "images",
                root / "reports.jsonl",
                data_dir / "nih_chestxray14_samples" / "images",
                covid,
                data_dir / "dicom_samples" / "CT_small.dcm",
                data_dir / "dicom_samples" / "dicomdir" / "77654033" / "CR1" / "6154",
            ]
        )
        assert report.failed_files == 0
        labeler = CheXpertLabeler.from_data_dir(data_dir)
        training_set = build_training_set(store, labeler, min_size=settings.image_min_size)
        result = train_image_model(settings, store, labeler, name="cxr-test", actor="pytest", **TRAIN_ARGS)
        yield Env(root, settings, store, labeler, training_set, result, picked, reports)


def _positives(labels: dict[str, Label]) -> set[str]:
    return {name for name, label in labels.items() if label in (Label.POSITIVE, Label.UNCERTAIN)}


def test_training_set_matches_the_inputs(env: Env) -> None:
    by_id = {ex.record_id: ex for ex in env.training_set.examples}
    covid_labelled = [r for r in env.covid_rows if r["finding"] != "todo"]
    assert len(env.covid_rows) == 31
    assert len(by_id) == 5 + 9 + len(covid_labelled) == 43
    assert dict(env.training_set.skipped) == {
        "no report and no dataset labels": len(env.covid_rows) - len(covid_labelled),  # "todo": not labelled
        "not a chest image (body part CSPINE)": 1,
        "not a radiograph (modality CT)": 1,
    }

    # IU X-ray: labelled from the linked report's findings + impression, never from anything else.
    for uid, obj in env.reports.items():
        text = "\n".join(t for t in (obj["findings"], obj["impression"]) if t)
        expected = dict(env.labeler.label(text).labels)
        images = [ex for ex in by_id.values() if ex.group == f"iu-xray/DiagnosticReport/{uid}"]
        assert images, uid
        for ex in images:
            assert ex.label_source == "report"
            assert dict(ex.labels) == expected
    assert by_id["iu-xray/Image/CXR7_IM-2263-1001"].labels["Atelectasis"] is Label.POSITIVE  # "Basilar atelectasis."
    assert by_id["iu-xray/Image/CXR3_IM-1384-1001"].labels[NO_FINDING] is Label.POSITIVE
    assert by_id["iu-xray/Image/CXR3_IM-1384-1001"].labels["Pneumothorax"] is Label.NEGATIVE

    # NIH ChestX-ray14: the dataset labels.
    with (env.settings.data_dir / "nih_chestxray14_samples" / "labels.csv").open(encoding="utf-8") as handle:
        nih = {r["image"]: r["finding_labels"].split("|") for r in csv.DictReader(handle)}
    for image, labels in nih.items():
        ex = by_id[f"nih-cxr14/Image/{Path(image).stem}"]
        assert ex.label_source == "dataset"
        if labels == ["No Finding"]:
            assert {k: v for k, v in ex.labels.items() if v is not Label.BLANK} == {NO_FINDING: Label.POSITIVE}
            continue
        assert ex.labels[NO_FINDING] is Label.NEGATIVE
        assert _positives(dict(ex.labels)) == {NIH_EXPECTED[lab] for lab in labels} - {None}
        assert not any(v is Label.NEGATIVE for k, v in ex.labels.items() if k != NO_FINDING)

    # COVID-19 collection: pathogens are pneumonia, ARDS is bilateral opacity, "No Finding" is normal.
    for row in covid_labelled:
        ex = by_id[f"covid-cxr/Image/{Path(row['image_file']).stem.replace(' ', '_')}"]
        finding = row["finding"]
        if finding == "No Finding":
            assert _positives(dict(ex.labels)) == {NO_FINDING}
            continue
        expected = set() if finding == "ARDS" else {"Pneumonia"}
        if "ARDS" in finding:
            expected.add("Lung Opacity")
        assert _positives(dict(ex.labels)) == expected, finding
        assert ex.labels[NO_FINDING] is Label.NEGATIVE

    counts = env.training_set.label_counts()
    assert sum(counts[NO_FINDING].values()) == 43
    assert counts["Pneumonia"]["positive"] == sum(
        1 for r in covid_labelled if r["finding"] not in ("No Finding", "ARDS")
    )


def test_model_files_and_registry_entry(env: Env) -> None:
    result = env.result
    folder = Path(result.folder)
    assert folder == env.settings.models_dir / "image" / f"cxr-test-{result.version}"
    assert result.version.endswith(result.weights_sha256[:8])
    assert sorted(p.name for p in folder.iterdir()) == sorted([WEIGHTS_FILE, "meta.json"])
    assert not list(folder.parent.glob(".tmp-*"))  # no temp folder left behind
    assert sha256_file(folder / WEIGHTS_FILE) == result.weights_sha256

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    assert meta["observations"] == list(OBSERVATIONS)
    assert (meta["image_size"], meta["epochs"], meta["seed"], meta["batch_size"]) == (64, 1, 7, 8)
    assert meta["n_train"] + meta["n_heldout"] == len(env.training_set) == 43
    assert meta["label_counts"] == env.training_set.label_counts()
    assert meta["source_digest"] == result.source_digest
    assert meta["label_sources"] == {"report": 5, "dataset": 38}

    train, held = split_heldout(env.training_set.examples)
    assert (result.n_train, result.n_heldout) == (len(train), len(held))
    assert held
    assert not {e.group for e in held} & {e.group for e in train}
    assert 0.1 <= len({e.group for e in held}) / len({e.group for e in env.training_set.examples}) <= 0.3

    mv = ModelRegistry(env.settings.db_path).get("cxr-test", result.version)
    assert (mv.backend, mv.stage, mv.created_by) == ("monai-densenet121", "candidate", "pytest")
    assert mv.adapter_path == str(folder)
    assert mv.adapter_sha256 == sha256_file(folder / WEIGHTS_FILE)
    assert mv.config == meta
    assert mv.dataset_snapshot_id == f"image-records:{result.source_digest[:16]}"
    assert [e.eval_set for e in mv.evaluations] == [result.eval_set]
    assert mv.evaluations[0].metrics == result.heldout.model_dump()
    assert result.eval_set.startswith("image-heldout:")
    assert len(result.train_loss) == 1
    assert math.isfinite(result.train_loss[0])


def test_lineage_names_the_training_records_and_erasing_one_taints_the_model(env: Env, tmp_path: Path) -> None:
    node = model_node("cxr-test", env.result.version)
    train, held = split_heldout(env.training_set.examples)
    parents = LineageStore(env.settings.db_path).parents(node)
    assert {e.relation for e in parents} == {"trained"}
    expected = {record_node(ex.record_id) for ex in train}
    expected |= {record_node(ex.label_record_id) for ex in train if ex.label_record_id}
    assert {e.parent for e in parents} == expected
    assert any(ex.label_record_id for ex in train)  # the reports the labels came from are inputs too
    assert not {record_node(ex.record_id) for ex in held} & expected  # held-out images only measured it

    # on a copy of the store: the model in production, then one of its training patients is erased
    copy = env.settings.model_copy(update={"store": tmp_path / "store"})
    shutil.copytree(env.settings.store, copy.store, ignore=shutil.ignore_patterns("models"))
    patient = next(
        p for ex in train if (stored := env.store.get(ex.record_id)) is not None and (p := stored.record.patient_id)
    )
    registry = ModelRegistry(copy.db_path)
    registry.promote("cxr-test", env.result.version, actor="admin", reason="test: in production")
    steward = open_session(copy, Credentials(principal="data_steward", purpose="operations"))
    erased = erase(steward, patient, reason="erasure request (test)")
    assert node in erased.tainted
    mv = registry.get("cxr-test", env.result.version)
    assert registry.taint(mv) is not None
    assert mv.stage == "archived"  # demoted: nothing else was ever production, so no production is left
    assert registry.production("cxr-test") is None
    assert erased.consistent


def test_saved_model_reproduces_the_recorded_heldout_metrics(env: Env) -> None:
    _, held = split_heldout(env.training_set.examples)
    encoder = MonaiDenseNetImageEncoder(Path(env.result.folder), expected_sha256=env.result.weights_sha256)
    probs = encoder.predict([Path(e.path) for e in held])
    losses = []
    for i, name in enumerate(OBSERVATIONS):
        pairs = [(p[name], e.targets()[0][i]) for p, e in zip(probs, held, strict=True) if e.targets()[1][i] > 0]
        losses.extend(-(y * math.log(p) + (1 - y) * math.log(1 - p)) for p, y in pairs)
        value = auroc([p for p, _ in pairs], [y for _, y in pairs]) if pairs else None
        if value is None:
            assert name not in env.result.heldout.auroc
        else:
            assert env.result.heldout.auroc[name] == pytest.approx(value, abs=1e-4)
        assert env.result.heldout.labelled[name] == len(pairs)
    assert env.result.heldout.loss == pytest.approx(float(np.mean(losses)), abs=1e-4)


def test_inference_is_deterministic_and_loads_lazily(
    env: Env, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png"
    first = MonaiDenseNetImageEncoder(Path(env.result.folder))
    assert capsys.readouterr().err == ""  # constructing reads nothing
    a = first.predict([image])
    assert "loading image model" in capsys.readouterr().err
    b = MonaiDenseNetImageEncoder(Path(env.result.folder)).predict([image, image])  # a second, fresh load
    assert "loading image model" in capsys.readouterr().err
    assert len(a) == 1
    assert len(b) == 2
    assert list(a[0]) == list(OBSERVATIONS)
    assert all(0.0 <= p <= 1.0 for p in a[0].values())
    assert a[0] == b[0] == b[1]
    first.predict([image])
    assert capsys.readouterr().err == ""  # loaded once
    assert first.info.weights_sha256 == env.result.weights_sha256
    assert first.info.image_size == 64


def test_missing_or_changed_weights_fail_with_a_fix(env: Env, tmp_path: Path, data_dir: Path) -> None:
    image = data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png"
    broken = tmp_path / "broken"
    shutil.copytree(env.result.folder, broken)
    with pytest.raises(ModelLoadError, match="changed since it was registered"):
        MonaiDenseNetImageEncoder(broken, expected_sha256="0" * 64).predict([image])
    (broken / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        MonaiDenseNetImageEncoder(broken).predict([image])
    (broken / WEIGHTS_FILE).unlink()
    with pytest.raises(ModelLoadError, match=r"has no weights .*sage-health train image-model"):
        MonaiDenseNetImageEncoder(broken).predict([image])
    (broken / "meta.json").unlink()
    with pytest.raises(ModelLoadError, match=r"has no meta\.json"):
        MonaiDenseNetImageEncoder(broken).predict([image])


def _ctx(env: Env, **overrides: Any) -> AgentContext:
    settings = env.settings.model_copy(update={"image_model": "cxr-test", **overrides})
    return AgentContext.create(settings, open_governed(settings, env.store, principal="clinician", purpose="treatment"))


def test_agent_reports_only_confident_trained_observations(env: Env, data_dir: Path) -> None:
    images = data_dir / "iu_xray" / "images"
    study = ImagingInput(
        image_paths=(str(images / "CXR7_IM-2263-1001.png"), str(images / "CXR7_IM-2263-2001.png")),
        views=("Frontal", "Lateral"),
        study_id="iu-xray/DiagnosticReport/7",
    )
    ctx = _ctx(env, image_confidence=0.51, image_min_auroc=None)
    agent = ImagingAgent()  # gate unset: only observations with both classes seen in training
    result = agent.run(study, ctx)
    assert [q.view for q in result.images] == ["Frontal", "Lateral"]
    assert all(q.usable for q in result.images)
    assert result.model_ref is not None
    assert result.model_ref.startswith("cxr-test@")
    assert result.model_note is not None
    assert "newest untainted candidate" in result.model_note

    # Only the frontal image is read; a finding is reported only past the threshold, for trained observations.
    encoder = MonaiDenseNetImageEncoder(Path(env.result.folder))
    probs = encoder.predict([images / "CXR7_IM-2263-1001.png"])[0]
    trained = {n for n, c in env.result.meta["train_targets"].items() if c["positive"] and c["negative"]}
    expected = {n for n in trained if probs[n] >= 0.51 or probs[n] <= 0.49}
    assert {f.observation for f in result.findings} == expected
    assert result.abstained is (not expected)
    for f in result.findings:
        assert f.image_id == "CXR7_IM-2263-1001"
        assert f.evidence_id == f"image:CXR7_IM-2263-1001#{f.observation}"
        assert f.present is (probs[f.observation] >= 0.51)
        assert f.probability == pytest.approx(probs[f.observation], abs=1e-4)
    untrained = set(OBSERVATIONS) - trained
    assert "Edema" in untrained  # no image in the set says anything about edema
    assert not {f.observation for f in result.findings} & untrained

    assert len([k for k in ctx.extras if k.startswith("imaging.encoder:")]) == 1
    agent.run(study, ctx)
    assert len([k for k in ctx.extras if k.startswith("imaging.encoder:")]) == 1  # cached, loaded once


def test_agent_reports_only_validated_observations(env: Env, data_dir: Path) -> None:
    image = data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png"
    study = ImagingInput(image_paths=(str(image),))
    recorded = env.result.heldout.auroc
    assert recorded  # the held-out images hold both classes of at least one observation (No Finding)
    ctx = _ctx(env, image_confidence=0.51)

    strict = ImagingAgent(min_heldout_auroc=max(recorded.values()) + 0.01).run(study, ctx)
    assert strict.abstained
    assert strict.findings == ()
    best = max(recorded, key=lambda n: recorded[n])
    assert strict.reason == (
        f"no validated observation: no observation of {strict.model_ref} has a held-out AUROC >= "
        f"{max(recorded.values()) + 0.01:.2f} (best: {best} {recorded[best]:.2f}); train it on more labelled chest "
        "X-rays"
    )
    suggested = ImagingAgent(min_heldout_auroc=MIN_HELDOUT_AUROC).run(study, ctx)
    assert suggested.abstained is (max(recorded.values()) < MIN_HELDOUT_AUROC)

    gate = min(recorded.values())
    validated = {n for n, v in recorded.items() if v >= gate}
    probs = MonaiDenseNetImageEncoder(Path(env.result.folder)).predict([image])[0]
    result = ImagingAgent(min_heldout_auroc=gate).run(study, ctx)
    assert {f.observation for f in result.findings} == {n for n in validated if abs(probs[n] - 0.5) >= 0.01}


def test_agent_abstains_when_unsure(env: Env, data_dir: Path) -> None:
    image = str(data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png")
    result = ImagingAgent().run(
        ImagingInput(image_paths=(image,)), _ctx(env, image_confidence=0.999, image_min_auroc=None)
    )
    assert result.abstained
    assert result.findings == ()
    assert result.reason is not None
    assert result.reason.startswith("low confidence: ")
    assert result.model_ref is not None


def test_agent_abstains_without_a_model_or_images(env: Env, data_dir: Path, tmp_path: Path) -> None:
    image = str(data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png")
    empty = env.settings.model_copy(update={"store": tmp_path / "no-models"})
    ctx = AgentContext.create(empty, open_governed(empty, env.store, principal="clinician", purpose="treatment"))
    result = ImagingAgent().run(ImagingInput(image_paths=(image,)), ctx)
    assert (result.abstained, result.reason, result.findings) == (True, NO_MODEL_REASON, ())
    assert [q.image_id for q in result.images] == ["CXR3_IM-1384-1001"]

    none = ImagingAgent().run(ImagingInput(image_paths=()), ctx)
    assert (none.abstained, none.reason) == (True, "no images in the study")

    ct = str(data_dir / "dicom_samples" / "CT_small.dcm")
    small = ImagingAgent().run(ImagingInput(image_paths=(ct,)), _ctx(env))
    assert small.abstained
    assert (
        small.reason == "no usable image (CT_small: image is 128x128 pixels, smaller than the minimum of 256 on a side)"
    )


def test_agent_rejects_an_unreadable_image(env: Env, data_dir: Path, tmp_path: Path) -> None:
    good = data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png"
    bad = tmp_path / "cut.png"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(StudyInputError) as info:
        ImagingAgent().run(ImagingInput(image_paths=(str(good), str(bad))), _ctx(env))
    assert str(info.value).startswith(f"{bad}: unreadable image (")
    assert "\n" not in str(info.value)


def test_retraining_with_the_same_seed_gives_identical_weights(env: Env) -> None:
    again = train_image_model(env.settings, env.store, env.labeler, name="cxr-test", actor="pytest", **TRAIN_ARGS)
    assert again.weights_sha256 == env.result.weights_sha256
    assert again.version != env.result.version
    assert again.heldout == env.result.heldout
    assert again.eval_set == env.result.eval_set
    versions = ModelRegistry(env.settings.db_path).list_versions("cxr-test")
    assert [v.version for v in versions][-2:] == [env.result.version, again.version]


def test_cli_trains_and_reports(env: Env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAGE_DATA_DIR", str(env.settings.data_dir))
    app = typer.Typer()
    app.add_typer(train_app, name="train")
    runner = CliRunner(env={"SAGE_PRINCIPAL": "admin", "SAGE_PURPOSE": "operations"})
    args = ["train", "image-model", "--store", str(env.settings.store), "--epochs", "1", "--image-size", "32"]
    refused = runner.invoke(app, [*args, "--as", "clinician", "--purpose", "treatment"])
    assert refused.exit_code == 1
    assert "may not train" in refused.output
    res = runner.invoke(app, [*args, "--limit", "10", "--name", "cxr-cli", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["n_train"] + payload["n_heldout"] == 10
    assert payload["ref"].startswith("cxr-cli@")
    assert payload["meta"]["seed"] == 3
    assert ModelRegistry(env.settings.db_path).get("cxr-cli", payload["version"]).stage == "candidate"

    table = runner.invoke(app, [*args, "--limit", "6", "--name", "cxr-cli"])
    assert table.exit_code == 0, table.output
    assert "held-out mean AUROC" in table.stdout
    assert "Pleural Effusion" in table.stdout

    empty_store = tmp_path / "empty-store"
    no_store = runner.invoke(app, ["train", "image-model", "--store", str(empty_store), "--epochs", "1"])
    assert no_store.exit_code == 1
    assert f"error: no store at {empty_store}; run `sage-health ingest PATH" in " ".join(no_store.output.split())
    with SqliteDocumentStore(empty_store / "sage.db", MiniLMEmbedder()) as created:
        assert created.stats()["records"] == 0
    failed = runner.invoke(app, ["train", "image-model", "--store", str(empty_store), "--epochs", "1"])
    assert failed.exit_code == 1
    assert "error: only 0 labelled chest image(s) in the store" in " ".join(failed.output.split())
    assert not (empty_store / "models" / "image").exists()


def test_agent_never_serves_a_tainted_image_model(env: Env, data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "store"
    shutil.copytree(env.settings.store, copy)  # the taint below must not reach the module's shared store
    settings = env.settings.model_copy(update={"store": copy, "image_model": "cxr-test"})
    versions = ModelRegistry(settings.db_path).list_versions("cxr-test")
    assert versions
    LineageStore(settings.db_path).taint([model_node(v.name, v.version) for v in versions],
                                         "built from records of an erased patient")  # fmt: skip
    ctx = AgentContext.create(settings, open_governed(settings, env.store, principal="clinician", purpose="treatment"))
    image = str(data_dir / "iu_xray" / "images" / "CXR3_IM-1384-1001.png")
    result = ImagingAgent().run(ImagingInput(image_paths=(image,)), ctx)
    assert result.abstained
    assert result.model_ref is None
    assert result.findings == ()
    assert result.reason is not None
    assert "tainted" in result.reason
    assert result.reason != NO_MODEL_REASON
