"""The sage-health CLI end to end on a real store: ingest (good + bad input), search, stats, show, doctor."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sage_health.interfaces.cli import app

pytestmark = [pytest.mark.e2e]
# commands act as the built-in clinician for treatment (SAGE_PRINCIPAL / SAGE_PURPOSE) unless they name another
runner = CliRunner(env={"SAGE_PRINCIPAL": "clinician", "SAGE_PURPOSE": "treatment"})
STEWARD = ["--as", "data_steward", "--purpose", "operations"]
CLINICIAN = ["--as", "clinician", "--purpose", "treatment"]


def _iu_lines(data_dir: Path, n: int) -> list[str]:
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        return [next(handle) for _ in range(n)]


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A store holding 60 real IU reports, 100 PubMedQA dev items and 3 Synthea patients."""
    root = tmp_path_factory.mktemp("cli")
    src = root / "src"
    src.mkdir()
    (src / "reports.jsonl").write_text("".join(_iu_lines(data_dir, 60)), encoding="utf-8")
    pubmedqa = json.loads((data_dir / "pubmedqa" / "ori_pqal_dev.json").read_text(encoding="utf-8"))
    subset = dict(list(pubmedqa.items())[:100])
    (src / "ori_pqal_part.json").write_text(json.dumps(subset), encoding="utf-8")
    for bundle in sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"))[:3]:
        shutil.copy(bundle, src / bundle.name)
    store = root / "store"
    result = runner.invoke(app, ["ingest", str(src), "--store", str(store), *STEWARD, "--json"])
    assert result.exit_code == 0, result.output
    return store


def test_ingest_reports_counts_and_is_idempotent(cli_store: Path, tmp_path: Path) -> None:
    stats = json.loads(runner.invoke(app, ["stats", "--store", str(cli_store), *STEWARD, "--json"]).stdout)
    assert stats["by_type"]["DiagnosticReport"] >= 60
    assert stats["by_type"]["KnowledgeDocument"] == 100
    assert stats["by_type"]["QAItem"] == 100
    assert stats["by_type"]["Patient"] == 3
    assert stats["chunks"] == stats["vectors"]
    files = stats["files"]
    again = runner.invoke(app, ["ingest", str(cli_store.parent / "src"), "--store", str(cli_store), *STEWARD, "--json"])
    assert again.exit_code == 0
    report = json.loads(again.stdout)
    assert report["total"]["inserted"] == report["total"]["updated"] == 0
    assert {s["reason"] for s in report["skipped"]} == {"unchanged since a completed ingest"}
    assert (
        json.loads(runner.invoke(app, ["stats", "--store", str(cli_store), *STEWARD, "--json"]).stdout)["files"]
        == files
    )


def test_search_json_has_scores_and_provenance(cli_store: Path) -> None:
    result = runner.invoke(
        app,
        ["search", "pleural effusion", "--store", str(cli_store), "-k", "5", "--type", "DiagnosticReport", "--json"],
    )
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert 1 <= len(hits) <= 5
    top = hits[0]
    assert top["resource_type"] == "DiagnosticReport"
    assert "effusion" in top["text"].lower()
    assert top["provenance"]["source_file"].endswith("reports.jsonl")
    assert top["provenance"]["locator"].startswith("line ")
    assert top["bm25_rank"] is not None or top["dense_rank"] is not None
    for mode in ("bm25", "dense"):
        only = json.loads(
            runner.invoke(
                app, ["search", "pleural effusion", "--store", str(cli_store), "--mode", mode, "--json"]
            ).stdout
        )
        assert all((h["bm25_rank"] if mode == "bm25" else h["dense_rank"]) is not None for h in only)


def test_search_filters_patient_dates_and_timeline(cli_store: Path) -> None:
    patients = json.loads(
        runner.invoke(
            app, ["search", "patient", "--store", str(cli_store), "--type", "Patient", *CLINICIAN, "--json"]
        ).stdout
    )
    pid = patients[0]["patient_id"]
    result = runner.invoke(
        app,
        [
            "search",
            "blood pressure",
            "--store",
            str(cli_store),
            "--patient",
            pid,
            "--since",
            "2015-01-01",
            "--until",
            "2018-12-31",
            "-k",
            "20",
            "--json",
        ],
    )
    hits = json.loads(result.stdout)
    assert hits, result.output
    assert {h["patient_id"] for h in hits} == {pid}
    assert all("2015-01-01" <= h["effective"][:10] <= "2018-12-31" for h in hits)
    timeline = runner.invoke(
        app, ["search", "blood pressure", "--store", str(cli_store), "--patient", pid, "--timeline", "--json"]
    )
    ctx = json.loads(timeline.stdout)
    dates = [e["effective"] for e in ctx["timeline"] if e["effective"]]
    assert dates == sorted(dates)
    assert {h["patient_id"] for h in ctx["hits"]} == {pid}


def test_show_prints_record_provenance_and_chunks(cli_store: Path) -> None:
    hit = json.loads(
        runner.invoke(
            app,
            ["search", "cardiomegaly", "--store", str(cli_store), "-k", "1", "--type", "DiagnosticReport", "--json"],
        ).stdout
    )[0]
    shown = json.loads(
        runner.invoke(app, ["show", hit["record_id"], "--store", str(cli_store), *CLINICIAN, "--json"]).stdout
    )
    assert shown["record"]["id"] == hit["record_id"]
    assert shown["record"]["provenance"]["locator"] == hit["provenance"]["locator"]
    assert shown["chunks"]
    assert shown["history"][0]["version"] == 1
    text = runner.invoke(app, ["show", hit["record_id"], "--store", str(cli_store), *CLINICIAN])
    assert "provenance" in text.stdout
    missing = runner.invoke(app, ["show", "iu-xray/DiagnosticReport/999999", "--store", str(cli_store), *CLINICIAN])
    assert missing.exit_code == 1
    assert "not found" in missing.stderr


def test_doctor_reports_healthy_store(cli_store: Path) -> None:
    result = runner.invoke(app, ["doctor", "--store", str(cli_store), "--json"])
    checks = {c["check"]: c for c in json.loads(result.stdout)}
    assert result.exit_code == 0, result.stdout
    assert checks["store"]["ok"]
    assert checks["offline embedder (all-MiniLM-L6-v2)"]["ok"]


def test_missing_store_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["search", "x", "--store", str(tmp_path / "nope"), *CLINICIAN])
    assert result.exit_code == 1
    assert "no store at" in result.stderr
    assert "sage-health ingest" in result.stderr


def test_bad_input_one_line_each_rest_continues_nothing_partial(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    good = _iu_lines(data_dir, 4)
    (src / "reports.jsonl").write_text(good[0] + good[1] + "{broken json\n" + good[2] + good[3], encoding="utf-8")
    (src / "bundle.json").write_text('{"resourceType": "Bundle", "type": "transaction", "entry": [', encoding="utf-8")
    (src / "note.txt").write_bytes("Patient très stable.".encode("latin-1"))
    (src / "blob.bin").write_bytes(b"\x00\x01binary")
    (src / "big.md").write_text("word " * 5000, encoding="utf-8")
    png = next((data_dir / "nih_chestxray14_samples" / "images").glob("*.png")).read_bytes()
    (src / "cut.png").write_bytes(png[: len(png) // 3])
    store = tmp_path / "store"
    result = runner.invoke(app, ["ingest", str(src), "--store", str(store), *STEWARD], env={"SAGE_MAX_FILE_MB": "0.02"})
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("rejected")]
    joined = "\n".join(lines)
    assert len(lines) == 6, joined
    assert "reports.jsonl:line 3: malformed JSON" in joined
    assert "bundle.json: malformed JSON" in joined
    assert "note.txt: not valid UTF-8" in joined
    assert "blob.bin: unknown format" in joined
    assert "big.md: file is" in joined
    assert "over the 0 MiB limit" in joined or "limit" in joined
    assert "cut.png:" in joined
    assert "très" not in result.stderr  # no content from the input in error lines

    db = sqlite3.connect(store / "sage.db")
    ids = [r[0] for r in db.execute("SELECT id FROM records ORDER BY id")]
    assert len(ids) == 4  # the four good reports, nothing from the bad files
    assert all(i.startswith("iu-xray/DiagnosticReport/") for i in ids)
    sources = {r[0] for r in db.execute("SELECT DISTINCT json_extract(provenance, '$.source_file') FROM records")}
    assert sources == {str((src / "reports.jsonl").resolve())}
    errors = db.execute("SELECT count(*), count(DISTINCT run_id) FROM ingest_errors").fetchone()
    assert errors == (6, 1)
    assert db.execute("SELECT status FROM ingest_runs").fetchone()[0] == "completed_with_errors"
