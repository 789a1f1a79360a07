"""IU X-ray (JSONL / Open-i XML / Kaggle CSV), MedQuAD, PubMedQA, MIRAGE and note connectors on real rows."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from sage_health.core.errors import IngestionError
from sage_health.core.hashing import sha256_file
from sage_health.data.ingest.base import IngestContext, RecordProblem, read_head
from sage_health.data.ingest.iu_xray import IndianaCsvConnector, IUReportsJsonlConnector, OpenIXmlConnector
from sage_health.data.ingest.knowledge import MedQuADConnector, MirageConnector, PubMedQAConnector
from sage_health.data.ingest.notes import TextNoteConnector
from sage_health.data.ingest.registry import auxiliary_reason
from sage_health.data.schema import DiagnosticReport, DocumentReference, KnowledgeDocument, QAItem

CTX = IngestContext(run_id="run-test")


def _parse(connector, path: Path) -> list:  # type: ignore[no-untyped-def]
    assert connector.detect(path, read_head(path))
    return list(connector.parse(path, sha256_file(path), CTX))


def _first_iu_lines(data_dir: Path, n: int) -> list[dict]:  # type: ignore[type-arg]
    with (data_dir / "iu_xray" / "reports.jsonl").open(encoding="utf-8") as handle:
        return [json.loads(next(handle)) for _ in range(n)]


def openi_xml(obj: dict) -> str:  # type: ignore[type-arg]
    """The original Open-i XML layout for one report (what reports.jsonl was converted from)."""
    sections = "".join(
        f'<AbstractText Label="{label.upper()}">{escape(obj[label])}</AbstractText>'
        if obj.get(label) is not None
        else f'<AbstractText Label="{label.upper()}"/>'
        for label in ("comparison", "indication", "findings", "impression")
    )
    mesh = "".join(f"<major>{escape(m)}</major>" for m in obj["mesh_major"])
    mesh += "".join(f"<automatic>{escape(m)}</automatic>" for m in obj["mesh_automatic"])
    images = "".join(
        f'<parentImage id="{i["id"]}"><figureId>F1</figureId><caption>{escape(i["caption"])}</caption></parentImage>'
        for i in obj["images"]
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/><uId id="CXR{obj["uid"]}"/>'
        f'<IUXRId id="{obj["uid"]}"/><MedlineCitation Owner="Indiana University"><Article><Abstract>{sections}'
        f"</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{images}</eCitation>"
    )


def test_iu_jsonl_maps_sections_mesh_and_images(data_dir: Path, tmp_path: Path) -> None:
    rows = _first_iu_lines(data_dir, 3)
    path = tmp_path / "reports.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    records = _parse(IUReportsJsonlConnector(), path)
    assert [r.id for r in records] == [f"iu-xray/DiagnosticReport/{r['uid']}" for r in rows]
    first = records[0]
    assert isinstance(first, DiagnosticReport)
    assert first.report_sections.findings == rows[0]["findings"]
    assert first.report_sections.impression == rows[0]["impression"]
    assert first.mesh_major == rows[0]["mesh_major"]
    assert first.image_ids == [i["id"] for i in rows[0]["images"]]
    assert [s.name for s in first.sections()] == ["indication", "comparison", "findings", "impression"]
    assert first.provenance.locator == "line 1"
    assert first.provenance.source_sha256 == sha256_file(path)


def test_openi_xml_and_jsonl_give_identical_records(data_dir: Path, tmp_path: Path) -> None:
    for obj in _first_iu_lines(data_dir, 5):
        xml = tmp_path / f"{obj['uid']}.xml"
        xml.write_text(openi_xml(obj), encoding="utf-8")
        jsonl = tmp_path / f"{obj['uid']}.jsonl"
        jsonl.write_text(json.dumps(obj) + "\n", encoding="utf-8")
        (from_xml,) = _parse(OpenIXmlConnector(), xml)
        (from_jsonl,) = _parse(IUReportsJsonlConnector(), jsonl)
        assert from_xml.id == from_jsonl.id
        assert from_xml.content_hash() == from_jsonl.content_hash()


def test_malformed_xml_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "9.xml"
    path.write_text('<eCitation><AbstractText Label="FINDINGS">unclosed', encoding="utf-8")
    with pytest.raises(IngestionError, match=r"9\.xml: malformed XML"):
        _parse(OpenIXmlConnector(), path)


def test_indiana_csv_rows_become_the_same_report_ids(data_dir: Path) -> None:
    path = data_dir / "iu_xray" / "indiana_reports.csv"
    connector = IndianaCsvConnector()
    assert connector.detect(path, read_head(path))
    records = []
    for item in connector.parse(path, "0" * 64, CTX):
        records.append(item)
        if len(records) == 3:
            break
    assert records[0].id == "iu-xray/DiagnosticReport/1"
    assert records[0].mesh_major == ["normal"]
    assert auxiliary_reason(path) is not None  # beside reports.jsonl it is a duplicate and skipped


def test_iu_jsonl_bad_lines_are_problems_and_the_rest_continues(data_dir: Path, tmp_path: Path) -> None:
    rows = _first_iu_lines(data_dir, 2)
    path = tmp_path / "reports.jsonl"
    path.write_text(
        json.dumps(rows[0])
        + "\n{not json\n"
        + json.dumps({"uid": "abc", "impression": "x"})
        + "\n"
        + json.dumps(rows[1])
        + "\n",
        encoding="utf-8",
    )
    items = _parse(IUReportsJsonlConnector(), path)
    problems = [i for i in items if isinstance(i, RecordProblem)]
    assert [p.locator for p in problems] == ["line 2", "line 3"]
    assert "malformed JSON" in problems[0].reason
    assert "uid" in problems[1].reason
    assert [i.id for i in items if not isinstance(i, RecordProblem)] == [
        f"iu-xray/DiagnosticReport/{rows[0]['uid']}",
        f"iu-xray/DiagnosticReport/{rows[1]['uid']}",
    ]


def test_medquad_answers_are_knowledge_documents_titled_by_focus(data_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "medquad.jsonl.gz"
    with gzip.open(data_dir / "medquad" / "medquad.jsonl.gz", "rt", encoding="utf-8") as src:
        lines = [next(src) for _ in range(20)]
    with gzip.open(path, "wt", encoding="utf-8") as dst:
        dst.writelines(lines)
    records = _parse(MedQuADConnector(), path)
    first_obj = json.loads(lines[0])
    doc = records[0]
    assert isinstance(doc, KnowledgeDocument)
    assert doc.id == "medquad/KnowledgeDocument/1_CancerGov_QA:0000001_1-1"
    assert doc.metadata["medquad_id"] == first_obj["id"]
    assert doc.title == first_obj["focus"]
    assert "  " not in doc.text
    assert doc.metadata["question"] == first_obj["question"]
    assert first_obj["question"] not in doc.render()  # questions are not indexed (retrieval eval queries them)


def test_pubmedqa_gives_abstract_and_question_records(data_dir: Path) -> None:
    path = data_dir / "pubmedqa" / "ori_pqal_dev.json"
    records = _parse(PubMedQAConnector(), path)
    docs = [r for r in records if isinstance(r, KnowledgeDocument)]
    qas = [r for r in records if isinstance(r, QAItem)]
    assert len(docs) == len(qas) == 500
    raw = json.loads(path.read_text(encoding="utf-8"))
    pmid = next(iter(raw))
    qa = next(q for q in qas if q.id == f"pubmedqa/QAItem/{pmid}")
    assert qa.answer == raw[pmid]["final_decision"]
    assert qa.context_ids == [f"pubmedqa/KnowledgeDocument/{pmid}"]
    doc = next(d for d in docs if d.id == qa.context_ids[0])
    assert raw[pmid]["QUESTION"] not in doc.text
    assert doc.effective is not None
    assert doc.effective.year == int(raw[pmid]["YEAR"])


def test_mirage_questions_keep_options_and_answers(data_dir: Path) -> None:
    path = data_dir / "mirage" / "mmlu.json"
    records = _parse(MirageConnector(), path)
    assert len(records) == 1089
    assert all(isinstance(r, QAItem) and r.answer in r.options for r in records)
    assert records[0].id.startswith("mirage/QAItem/mmlu:")


def test_note_front_matter_and_encoding(tmp_path: Path) -> None:
    note = tmp_path / "discharge.md"
    note.write_text(
        "---\npatient: synthea/Patient/abc\ndate: 2021-04-05\ntype: discharge-summary\n---\n"
        "# Discharge summary\nStable, discharged home.\n",
        encoding="utf-8",
    )
    (record,) = _parse(TextNoteConnector(), note)
    assert isinstance(record, DocumentReference)
    assert record.patient_id == "synthea/Patient/abc"
    assert record.effective is not None
    assert record.effective.isoformat() == "2021-04-05T00:00:00+00:00"
    assert record.title == "Discharge summary"
    latin = tmp_path / "latin.txt"
    latin.write_bytes("Patient très stable.".encode("latin-1"))
    with pytest.raises(IngestionError, match=r"latin\.txt: not valid UTF-8 \(byte offset 10\)"):
        _parse(TextNoteConnector(), latin)
