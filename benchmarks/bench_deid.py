"""De-identification benchmark: span P/R/F1 (strict + relaxed) on the Presidio synthetic PII dev file, the same
figures under template-grouped 5-fold cross-validation (settings chosen on the other folds), eponym over-redaction
on IU X-ray + MedQuAD sentences, and throughput (the whole detector and the learned NER alone), for SAGE-Health's
``PresidioDeidentifier`` (rules + learned NER, and rules only) and, side by side, presidio-analyzer's **stock**
recognizers.

The peer: presidio's default configuration loads spaCy's ``en_core_web_lg`` (NER for names and places), which is
not installable offline here. The peer is therefore presidio's predefined recognizers (patterns, checksums,
context words; ``SpacyRecognizer`` finds nothing) on the same blank spaCy pipeline — labelled "presidio stock
patterns (no NER model)". Its ``tldextract`` lookups are pointed at the bundled suffix list (no network).

Writes results/<date>_deid.{json,md} and results/latest_deid.{json,md}.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import _common as c
from sage_health.data.governance.deid import PhiSpan, PresidioDeidentifier
from sage_health.data.governance.deid.engine import resolve
from sage_health.data.governance.deid.fusion import DEFAULT_FUSION, Fusion
from sage_health.data.governance.deid.learned import MODEL_DIR, find_learned, find_learned_many, load_model
from sage_health.data.governance.deid_eval import (
    DEV_FILE,
    MATCHING_RULE,
    SpanEvaluation,
    evaluate_cv,
    evaluate_over_redaction,
    evaluate_spans,
    load_presidio_file,
    rows,
)

KEY = b"benchmark-deid-key-0123456789abcdef"
PEER_MAP = {
    "PERSON": "NAME",
    "LOCATION": "LOCATION",
    "DATE_TIME": "DATE",
    "PHONE_NUMBER": "PHONE",
    "EMAIL_ADDRESS": "EMAIL",
    "US_SSN": "SSN",
    "IP_ADDRESS": "IP",
    "URL": "URL",
    "CREDIT_CARD": "ID",
    "IBAN_CODE": "ID",
    "US_DRIVER_LICENSE": "ID",
    "US_PASSPORT": "ID",
    "US_BANK_NUMBER": "ID",
    "US_ITIN": "ID",
    "MEDICAL_LICENSE": "ID",
    "CRYPTO": "ID",
}


class PresidioStockPatterns:
    """presidio-analyzer's predefined recognizers on the blank spaCy pipeline (the offline stock configuration)."""

    name = "presidio-stock-patterns"
    version = "stock"

    def __init__(self) -> None:
        import tldextract
        from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

        from sage_health.data.governance.deid.engine import _blank_nlp_engine

        offline = tldextract.TLDExtract(suffix_list_urls=())
        tldextract.extract = offline  # presidio's e-mail/URL validation calls tldextract.extract (no network)
        engine = _blank_nlp_engine()
        engine.load()
        registry = RecognizerRegistry(supported_languages=["en"])
        registry.load_predefined_recognizers(nlp_engine=engine, languages=["en"])
        self.analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"])

    def detect(self, text: str) -> list[PhiSpan]:
        results = self.analyzer.analyze(text=text, language="en")
        hits = [
            (r.start, r.end, PEER_MAP[r.entity_type], float(r.score), "presidio-stock")
            for r in results
            if r.entity_type in PEER_MAP
        ]
        return resolve(text, hits)  # type: ignore[arg-type]

    def deidentify(self, text: str, *, patient_key: str | None, mode: str = "tag") -> Any:
        raise NotImplementedError


def _throughput(detector: Any, texts: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    chars = 0
    for text in texts:
        detector.detect(text)
        chars += len(text)
    seconds = time.perf_counter() - started
    return {
        "texts": len(texts),
        "seconds": round(seconds, 2),
        "texts_per_second": round(len(texts) / seconds, 1),
        "kchars_per_second": round(chars / seconds / 1000, 1),
    }


def _metric_rows(evaluation: Any, system: str, split: str) -> list[dict[str, Any]]:
    return [
        {
            "system": system,
            "split": split,
            "label": m.label,
            "support": m.support,
            "predicted": m.predicted,
            "P_strict": m.precision_strict,
            "R_strict": m.recall_strict,
            "F1_strict": m.f1_strict,
            "P_relaxed": m.precision_relaxed,
            "R_relaxed": m.recall_relaxed,
            "F1_relaxed": m.f1_relaxed,
            "R_strict_typed": m.recall_strict_typed,
            "target_met": m.meets_target,
        }
        for m in rows(evaluation)
    ]


def _learned_throughput(texts: list[str]) -> dict[str, float]:
    load_model()
    single = _throughput(type("Learned", (), {"detect": staticmethod(find_learned)})(), texts)
    started = time.perf_counter()
    find_learned_many(texts)
    seconds = time.perf_counter() - started
    return {
        "texts": len(texts),
        "single_texts_per_second": single["texts_per_second"],
        "batched_texts_per_second": round(len(texts) / seconds, 1),
    }


def _summary(spans: Any, labels: tuple[str, ...] = ("NAME", "ADDRESS", "PHONE", "LOCATION")) -> str:
    def fmt(m: Any) -> str:
        r, p = m.recall_strict, m.precision_strict
        return f"{r:.3f} / {p:.3f}" if r is not None and p is not None else "-"

    by = {m.label: m for m in spans.per_label}
    return " | ".join([fmt(spans.overall)] + [fmt(by[label]) if label in by else "-" for label in labels])


def main() -> int:
    c.setup_env()
    data = c.data_dir()
    dev = data / DEV_FILE
    texts = [str(s["full_text"]) for s in load_presidio_file(dev)]
    iu_texts = [
        line
        for line in (Path(data / "iu_xray" / "reports.jsonl").read_text(encoding="utf-8").splitlines()[:300])
        if line.strip()
    ]
    systems: dict[str, Any] = {}
    t0 = time.perf_counter()
    ours = PresidioDeidentifier(KEY)
    ours.detect("warm-up: John Smith, 2019-03-03")
    load_ours = time.perf_counter() - t0
    rules = PresidioDeidentifier(KEY, fusion=Fusion(learned=False, join=DEFAULT_FUSION.join))
    rules.detect("warm-up: John Smith, 2019-03-03")
    t0 = time.perf_counter()
    peer = PresidioStockPatterns()
    peer.detect("warm-up: John Smith, 2019-03-03")
    load_peer = time.perf_counter() - t0
    meta = load_model().meta
    payload: dict[str, Any] = {
        "benchmark": "deid",
        "machine": c.machine_info(),
        "dev_file": str(dev),
        "matching_rule": MATCHING_RULE,
        "default_fusion": DEFAULT_FUSION.name,
        "learned_model": {
            "path": str(MODEL_DIR.relative_to(c.REPO_ROOT)),
            "recipe": meta.get("sage_recipe"),
            "validation_on_held_out_generator_templates": meta.get("sage_validation"),
        },
        "peer_note": "presidio stock recognizers on a blank spaCy pipeline: en_core_web_lg (its NER) cannot be "
        "installed offline, so the peer has no person/location NER",
    }
    table: list[dict[str, Any]] = []
    for name, detector, load in (
        (f"sage {DEFAULT_FUSION.name} (default)", ours, load_ours),
        (f"sage {rules.fusion.name}", rules, 0.0),
        ("presidio stock patterns", peer, load_peer),
    ):
        spans = evaluate_spans(detector, dev)
        # ours: its settings are chosen inside the folds; the others have nothing to choose
        cv = evaluate_cv(detector if detector is ours else {name: detector}, dev, cv_by="template", folds=5)
        over = evaluate_over_redaction(detector, data)
        systems[name] = {
            "load_seconds": round(load, 2),
            "spans": spans.model_dump(mode="json"),
            "cross_validation": cv.model_dump(mode="json"),
            "over_redaction": over.model_dump(mode="json"),
            "throughput_dev": _throughput(detector, texts),
            "throughput_iu_reports": _throughput(detector, iu_texts),
        }
        table += _metric_rows(spans, name, "dev")
        table += _metric_rows(cv.spans, name, "template-CV")
    learned_speed = _learned_throughput(texts)
    payload["systems"] = systems
    payload["learned_throughput_dev"] = learned_speed
    payload["rows"] = table
    cv_ours = systems[f"sage {DEFAULT_FUSION.name} (default)"]["cross_validation"]
    recipe = meta.get("sage_recipe") or {}
    md = [
        "# De-identification",
        "",
        f"Dev file: `{DEV_FILE}` ({len(texts)} synthetic general-domain sentences; not clinical notes).",
        f"Matching rule: {MATCHING_RULE}.",
        "",
        "Template-CV: 5 folds grouped by `template_id`; each fold is scored by the setting chosen on the other four "
        f"({cv_ours['selection_rule']}). Candidates for sage: {', '.join(cv_ours['candidates'])}. Chosen per fold: "
        f"{', '.join(f['selected'] for f in cv_ours['per_fold'])}; on the whole dev file: "
        f"{cv_ours['selected_on_all']} (shipped default: {DEFAULT_FUSION.name}).",
        "",
        f"Learned NER (`{payload['learned_model']['path']}`): spaCy NER (HashEmbedCNN width {recipe.get('width')}, "
        f"depth {recipe.get('depth')}) trained for {recipe.get('epochs')} epochs on {recipe.get('examples')} "
        "generated texts (templates and faker identities of `deid/generate.py`) and "
        f"{recipe.get('medical_negatives')} PubMedQA abstract sentences as texts without identifiers; no evaluation "
        "text. Exact-span validation on generator templates held out of training: "
        f"{(meta.get('sage_validation') or {}).get('ALL')}.",
        "",
        "Peer: " + payload["peer_note"] + ".",
        "",
        "| system | split | overall R / P (strict) | NAME | ADDRESS | PHONE | LOCATION |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in systems.items():
        for split, spans_json in (("dev", result["spans"]), ("template-CV", result["cross_validation"]["spans"])):
            md.append(f"| {name} | {split} | {_summary(SpanEvaluation.model_validate(spans_json))} |")
    md += [
        "",
        c.md_table(table),
        "",
        "| system | load s | texts/s (dev) | texts/s (IU report JSON lines) | eponym occurrences redacted | "
        "eponym sentences with any redaction | other clinical sentences with any redaction |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, result in systems.items():
        over = result["over_redaction"]
        md.append(
            f"| {name} | {result['load_seconds']} | {result['throughput_dev']['texts_per_second']} | "
            f"{result['throughput_iu_reports']['texts_per_second']} | {over['eponym_occurrences_redacted']}/"
            f"{over['eponym_occurrences']} ({over['eponym_redaction_rate']:.1%}) | "
            f"{over['eponym_sentences_with_any_redaction']:.1%} | {over['other_sentences_with_any_redaction']:.1%} |"
        )
    md += [
        "",
        f"Learned NER alone on the dev sentences: {learned_speed['single_texts_per_second']} texts/s one at a time, "
        f"{learned_speed['batched_texts_per_second']} texts/s batched (`find_learned_many`). Throughput depends on "
        "what else runs on the 2 cores: see the load average below.",
        "",
        c.machine_md(payload["machine"]),
    ]
    c.write_results("deid", payload, "\n".join(md))
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
