"""Retrieval evaluation (``sage-health eval retrieval``): recall@k, MRR and nDCG@10 of BM25, dense and hybrid
search over public QA files (PubMedQA, MedQuAD), indexed into a fresh temporary store.

Policy: ``evaluate`` (decided for the session's principal and purpose, a denial audited). The run reads only the
files it is given, never the store's records; it is audited once with the task, seed, sample size and the sha256
of each input file (never a path).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sage_health.core.errors import DataError
from sage_health.data.embed import embedder_for
from sage_health.data.governance.policy import Action
from sage_health.data.retrieval_eval import RetrievalEvalResult, evaluate_retrieval
from sage_health.services.session import Session

__all__ = ["RetrievalEvalResult", "evaluate"]


def evaluate(
    session: Session,
    pubmedqa: Path,
    medquad: Path | None = None,
    *,
    medquad_sample: int = 2000,
    seed: int = 13,
    on_progress: Callable[[str], None] | None = None,
) -> RetrievalEvalResult:
    """Score each retrieval mode on the PubMedQA task (and the MedQuAD task when ``medquad`` is given) with the
    embedder the settings configure. ``on_progress`` gets one line per phase."""
    session.decide(Action.EVALUATE, detail={"task": "retrieval"})
    files = [f for f in (pubmedqa, medquad) if f is not None]
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: no such file (pass a PubMedQA ori_pqal_*.json / MedQuAD JSONL file)")
    result = evaluate_retrieval(
        pubmedqa,
        medquad,
        medquad_sample=medquad_sample,
        seed=seed,
        embedder=embedder_for(session.settings),
        on_progress=on_progress,
    )
    inputs = [result.config.pubmedqa_file.sha256]
    if result.config.medquad_file is not None:
        inputs.append(result.config.medquad_file.sha256)
    session.audit(
        Action.EVALUATE.value,
        detail={"task": "retrieval", "seed": seed, "medquad_sample": medquad_sample,
                "files_sha256": inputs, "n_docs": result.n_docs},
    )  # fmt: skip
    return result
