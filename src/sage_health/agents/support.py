"""Sentence-level support between draft text and evidence: the shared measure of the writer and the verifier.

``support(sentence, evidence_sentence)`` is the share of the sentence's content words (lower-cased, stop words
and punctuation removed, a plural ``s`` folded) that also occur in the evidence sentence. It is deliberately
lexical and explainable: a radiologist can see why a sentence was (not) considered supported. Negation and
laterality are *not* judged here — the verifier checks them with the labeler.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sage_health.agents.types import EvidenceItem
from sage_health.models.generation.extractive import sentences

_WORD = re.compile(r"[a-z][a-z0-9\-]*")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "been",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "the",
        "there",
        "this",
        "to",
        "was",
        "were",
        "with",
        "which",
        "within",
        "without",
        "also",
        "any",
        "both",
        "seen",
        "there's",
        "noted",
        "note",
        "is",
        "are",
        "xxxx",
    ]
)


def split_sentences(text: str) -> list[str]:
    return sentences(text)


def _fold(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def content_terms(text: str) -> frozenset[str]:
    return frozenset(_fold(w) for w in _WORD.findall(text.lower()) if w not in _STOP)


def support(sentence: str, evidence_sentence: str) -> float:
    terms = content_terms(sentence)
    if not terms:
        return 0.0
    return len(terms & content_terms(evidence_sentence)) / len(terms)


@dataclass(frozen=True)
class SupportMatch:
    evidence_id: str
    score: float
    evidence_sentence: str


def best_support(sentence: str, evidence: Sequence[EvidenceItem]) -> list[SupportMatch]:
    """For each evidence item, its best-supporting sentence; sorted best first (ties: evidence order)."""
    matches: list[SupportMatch] = []
    for item in evidence:
        best = max(
            ((support(sentence, ev), ev) for ev in split_sentences(item.text) or [item.text]),
            key=lambda pair: pair[0],
            default=(0.0, ""),
        )
        matches.append(SupportMatch(item.id, best[0], best[1]))
    return sorted(matches, key=lambda m: -m.score)
