"""Conformance suite for :class:`~sage_health.data.store.protocol.DocumentStore` backends.

Every backend runs the same tests by subclassing :class:`DocumentStoreConformance` and providing a
``document_store`` fixture that yields a fresh, empty store built with the real offline embedder
(haystack's ``testing/document_store.py`` pattern)::

    class TestSqliteStore(DocumentStoreConformance):
        @pytest.fixture
        def document_store(self, tmp_path, embedder):
            with SqliteDocumentStore(tmp_path / "sage.db", embedder) as store:
                yield store

The records below are small and written here on purpose: the suite tests the store contract, not data.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from sage_health.core.errors import StoreError
from sage_health.core.provenance import Provenance, Transform
from sage_health.data.schema import (
    Coding,
    DiagnosticReport,
    KnowledgeDocument,
    Observation,
    Quantity,
    ReportSections,
    Section,
)
from sage_health.data.store.protocol import DocumentStore, SearchFilters, SearchMode, SearchQuery


def _prov(locator: str) -> Provenance:
    return Provenance(
        source_file="conformance.jsonl",
        locator=locator,
        source_sha256="0" * 64,
        transforms=(Transform(name="ingest.conformance", version="1"),),
    )


def report(n: int, findings: str, impression: str, patient: str | None = None) -> DiagnosticReport:
    return DiagnosticReport(
        id=f"conf/DiagnosticReport/{n}",
        source="conformance",
        patient_id=patient,
        effective=datetime(2020, 1, n % 28 + 1, tzinfo=UTC),
        report_sections=ReportSections(indication="Cough.", findings=findings, impression=impression),
        provenance=_prov(f"line {n}"),
    )


def knowledge(n: int, title: str, text: str, source: str = "conformance-kb") -> KnowledgeDocument:
    return KnowledgeDocument(
        id=f"{source}/KnowledgeDocument/{n}",
        source=source,
        title=title,
        text=text,
        provenance=_prov(f"doc {n}"),
    )


def observation(n: int, patient: str, day: datetime, name: str, value: float, unit: str) -> Observation:
    return Observation(
        id=f"conf/Observation/{n}",
        source="conformance",
        patient_id=patient,
        effective=day,
        code=Coding(system="http://loinc.org", code=str(4000 + n), display=name),
        value=Quantity(value=value, unit=unit),
        provenance=_prov(f"obs {n}"),
    )


def corpus() -> list[DiagnosticReport | KnowledgeDocument | Observation]:
    return [
        report(1, "The heart is enlarged. Small left pleural effusion.", "Cardiomegaly with left effusion.", "P1"),
        report(2, "Lungs are clear. No pneumothorax.", "No acute cardiopulmonary disease.", "P2"),
        report(3, "Right upper lobe consolidation.", "Right upper lobe pneumonia.", "P1"),
        knowledge(1, "Glaucoma", "Glaucoma damages the optic nerve and can cause gradual loss of side vision."),
        knowledge(2, "Asthma", "Asthma narrows the airways and causes wheezing and shortness of breath."),
        knowledge(3, "Anemia", "Anemia means the blood has too few healthy red blood cells to carry oxygen."),
        observation(1, "P1", datetime(2019, 3, 2, tzinfo=UTC), "Hemoglobin A1c", 6.1, "%"),
        observation(2, "P1", datetime(2021, 6, 1, tzinfo=UTC), "Hemoglobin A1c", 7.4, "%"),
        observation(3, "P2", datetime(2020, 5, 5, tzinfo=UTC), "Body weight", 80.0, "kg"),
    ]


class _ExplodingReport(DiagnosticReport):
    """A record whose sections cannot be computed: the write must fail before anything is stored."""

    def sections(self) -> list[Section]:
        raise RuntimeError("boom")


class DocumentStoreConformance:
    """The DocumentStore contract. Subclass and provide a ``document_store`` fixture."""

    @pytest.fixture
    def filled(self, document_store: DocumentStore) -> DocumentStore:
        result = document_store.write(corpus(), run_id="run-conf")
        assert result.inserted == len(corpus())
        return document_store

    # ---------------------------------------------------------------- write / get
    def test_write_then_get_returns_record_with_provenance(self, filled: DocumentStore) -> None:
        stored = filled.get("conf/DiagnosticReport/1")
        assert stored is not None
        assert stored.version == 1
        assert stored.is_current
        blank = {"provenance": Provenance()}
        assert stored.record.model_copy(update=blank) == corpus()[0].model_copy(update=blank)
        prov = stored.record.provenance
        assert prov.locator == "line 1"
        assert prov.run_id == "run-conf"
        assert prov.content_hash == stored.content_hash == corpus()[0].content_hash()
        assert stored.chunk_count >= 3  # indication, findings, impression

    def test_get_unknown_returns_none(self, filled: DocumentStore) -> None:
        assert filled.get("conf/DiagnosticReport/999") is None

    def test_rewriting_identical_records_changes_nothing(self, filled: DocumentStore) -> None:
        again = filled.write(corpus(), run_id="run-2")
        assert (again.inserted, again.updated, again.unchanged, again.chunks) == (0, 0, len(corpus()), 0)
        stored = filled.get("conf/DiagnosticReport/1")
        assert stored is not None
        assert stored.version == 1
        assert stored.record.provenance.run_id == "run-conf"

    def test_changed_record_gets_new_version_and_old_keeps_provenance(self, filled: DocumentStore) -> None:
        changed = report(2, "Lungs are clear. Tiny right apical pneumothorax.", "Small pneumothorax.", "P2")
        changed = changed.model_copy(update={"provenance": _prov("line 2 (edited)")})
        result = filled.write([changed], run_id="run-edit")
        assert (result.inserted, result.updated) == (0, 1)
        current = filled.get("conf/DiagnosticReport/2")
        old = filled.get("conf/DiagnosticReport/2", version=1)
        assert current is not None
        assert old is not None
        assert current.version == 2
        assert not old.is_current
        assert old.record.provenance.locator == "line 2"
        assert current.record.provenance.locator == "line 2 (edited)"
        hits = filled.search(SearchQuery(text="apical pneumothorax", k=5, mode="bm25"))
        assert [h.record_id for h in hits] == ["conf/DiagnosticReport/2"]
        assert hits[0].record_version == 2
        stale = filled.search(SearchQuery(text="acute cardiopulmonary disease", k=10, mode="bm25"))
        assert all(h.record_id != "conf/DiagnosticReport/2" for h in stale)

    def test_failed_write_stores_nothing(self, document_store: DocumentStore) -> None:
        bad = _ExplodingReport(
            id="conf/DiagnosticReport/66",
            source="conformance",
            report_sections=ReportSections(findings="x"),
        )
        with pytest.raises(RuntimeError, match="boom"):
            document_store.write([*corpus()[:3], bad], run_id="run-bad")
        for rec in corpus()[:3]:
            assert document_store.get(rec.id) is None
        assert document_store.search(SearchQuery(text="pleural effusion", k=5)) == []

    def test_conflicting_duplicates_in_one_batch_are_rejected(self, document_store: DocumentStore) -> None:
        first = report(1, "Normal.", "Normal chest.")
        second = report(1, "Abnormal.", "Pneumonia.")
        with pytest.raises(StoreError, match="appears twice"):
            document_store.write([first, second])
        assert document_store.get(first.id) is None

    # ---------------------------------------------------------------- delete
    def test_delete_removes_record_versions_and_index_entries(self, filled: DocumentStore) -> None:
        edited = report(1, "The heart is enlarged.", "Cardiomegaly.", "P1")
        filled.write([edited])
        assert filled.delete(["conf/DiagnosticReport/1", "conf/DiagnosticReport/404"]) == 1
        assert filled.get("conf/DiagnosticReport/1") is None
        assert filled.get("conf/DiagnosticReport/1", version=1) is None
        for mode in ("bm25", "dense", "hybrid"):
            hits = filled.search(SearchQuery(text="enlarged heart cardiomegaly", k=10, mode=mode))
            assert all(h.record_id != "conf/DiagnosticReport/1" for h in hits)
        assert filled.delete([]) == 0

    # ---------------------------------------------------------------- search
    def test_bm25_finds_exact_terms(self, filled: DocumentStore) -> None:
        hits = filled.search(SearchQuery(text="consolidation", k=3, mode="bm25"))
        assert hits[0].record_id == "conf/DiagnosticReport/3"
        assert hits[0].bm25_score is not None
        assert hits[0].bm25_score > 0
        assert hits[0].dense_score is None

    def test_dense_finds_paraphrase_without_shared_words(self, filled: DocumentStore) -> None:
        hits = filled.search(SearchQuery(text="illness of the eye that harms peripheral sight", k=1, mode="dense"))
        assert hits[0].record_id == "conformance-kb/KnowledgeDocument/1"
        assert hits[0].bm25_score is None
        assert hits[0].dense_score is not None
        assert 0 < hits[0].dense_score <= 1.0001

    def test_hybrid_fuses_both_and_reports_components(self, filled: DocumentStore) -> None:
        hits = filled.search(SearchQuery(text="wheezing airways", k=3, mode="hybrid"))
        top = hits[0]
        assert top.record_id == "conformance-kb/KnowledgeDocument/2"
        assert top.bm25_rank == 1
        assert top.dense_rank == 1
        # weighted RRF, k = 60: BM25 weight 1, dense weight the store's (1 when it has none)
        assert top.score == pytest.approx((1 + getattr(filled, "dense_weight", 1.0)) / 61)
        assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        assert all(a.score >= b.score for a, b in itertools.pairwise(hits))

    def test_hits_carry_provenance_and_transforms(self, filled: DocumentStore) -> None:
        hit = filled.search(SearchQuery(text="anemia red blood cells", k=1))[0]
        assert hit.provenance.source_file == "conformance.jsonl"
        assert hit.provenance.locator == "doc 3"
        assert hit.provenance.derived_from == (hit.record_id,)
        names = [t.name for t in hit.provenance.transforms]
        assert names[0] == "ingest.conformance"
        assert "embed" in names

    def test_k_and_one_hit_per_record(self, filled: DocumentStore) -> None:
        hits = filled.search(SearchQuery(text="lungs heart pneumonia effusion", k=2))
        assert len(hits) == 2
        many = filled.search(SearchQuery(text="lungs heart pneumonia effusion", k=20))
        assert len({h.record_id for h in many}) == len(many)
        chunks = filled.search(SearchQuery(text="lungs heart pneumonia effusion", k=20, one_per_record=False))
        assert len(chunks) > len(many)

    def test_stopword_only_query_returns_no_keyword_hits(self, filled: DocumentStore) -> None:
        assert filled.search(SearchQuery(text="the of and", k=5, mode="bm25")) == []

    # ---------------------------------------------------------------- filters
    @pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
    def test_patient_filter(self, filled: DocumentStore, mode: SearchMode) -> None:
        hits = filled.search(
            SearchQuery(text="hemoglobin pneumonia effusion", k=10, mode=mode, filters=SearchFilters(patient_id="P1"))
        )
        assert hits
        assert {h.patient_id for h in hits} == {"P1"}

    @pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
    def test_excluded_patients_never_returned_but_unlinked_records_are(
        self, filled: DocumentStore, mode: SearchMode
    ) -> None:
        q = "hemoglobin pneumonia effusion glaucoma anemia"
        hits = filled.search(SearchQuery(text=q, k=20, mode=mode, filters=SearchFilters(exclude_patients=("P1",))))
        assert hits
        assert "P1" not in {h.patient_id for h in hits}
        assert None in {h.patient_id for h in hits}  # knowledge documents have no patient and stay visible
        both = filled.search(
            SearchQuery(text=q, k=20, mode=mode, filters=SearchFilters(patient_id="P1", exclude_patients=("P1",)))
        )
        assert both == []

    @pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
    def test_type_source_and_section_filters(self, filled: DocumentStore, mode: SearchMode) -> None:
        q = "pleural effusion cardiomegaly blood airways"
        by_type = filled.search(
            SearchQuery(text=q, k=10, mode=mode, filters=SearchFilters(resource_types=("KnowledgeDocument",)))
        )
        assert by_type
        assert {h.resource_type for h in by_type} == {"KnowledgeDocument"}
        by_source = filled.search(
            SearchQuery(text=q, k=10, mode=mode, filters=SearchFilters(sources=("conformance-kb",)))
        )
        assert {h.source for h in by_source} == {"conformance-kb"}
        by_section = filled.search(
            SearchQuery(text=q, k=10, mode=mode, one_per_record=False, filters=SearchFilters(sections=("impression",)))
        )
        assert by_section
        assert {h.section for h in by_section} == {"impression"}

    @pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
    def test_date_range_filter_is_inclusive(self, filled: DocumentStore, mode: SearchMode) -> None:
        filters = SearchFilters(
            patient_id="P1",
            since=datetime(2019, 3, 2, tzinfo=UTC),
            until=datetime(2019, 12, 31, tzinfo=UTC),
        )
        hits = filled.search(SearchQuery(text="hemoglobin A1c", k=10, mode=mode, filters=filters))
        assert [h.record_id for h in hits] == ["conf/Observation/1"]
        assert hits[0].text == "2019-03-02 Hemoglobin A1c 6.1 %"

    @pytest.mark.parametrize("mode", ["bm25", "dense", "hybrid"])
    def test_filters_apply_inside_retrievers_not_after_top_k(
        self, document_store: DocumentStore, mode: SearchMode
    ) -> None:
        # 60 strong matches for other patients, one weak match for P9: a post-filtered top-k would miss it.
        crowd = [
            knowledge(100 + i, "Pneumonia", f"Pneumonia case {i}: lobar pneumonia with consolidation and fever.")
            for i in range(60)
        ]
        target = report(7, "Minimal basilar opacity, possibly early pneumonia.", "Possible pneumonia.", "P9")
        document_store.write([*crowd, target])
        hits = document_store.search(
            SearchQuery(
                text="lobar pneumonia consolidation fever",
                k=1,
                mode=mode,
                candidates=5,
                filters=SearchFilters(patient_id="P9"),
            )
        )
        assert [h.record_id for h in hits] == ["conf/DiagnosticReport/7"]

    def test_filter_matching_nothing_returns_empty(self, filled: DocumentStore) -> None:
        hits = filled.search(SearchQuery(text="pneumonia", k=5, filters=SearchFilters(patient_id="nobody")))
        assert hits == []

    def test_empty_store_search_returns_empty(self, document_store: DocumentStore) -> None:
        assert document_store.search(SearchQuery(text="pneumonia", k=5)) == []
