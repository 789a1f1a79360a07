"""The ``extractive`` generator: no language model, output composed only from the quoted data.

It is the retrieval baseline every generative result is compared against. Given a chat built by a
:class:`~sage_health.models.generation.prompts.PromptTemplate` it answers, in order of preference:

1. with in-context exemplars: the output of the exemplar whose input is most similar to the current input
   (nearest-neighbour report baseline — the exemplars were retrieved from the training memory);
2. with evidence blocks: the evidence sentences that best overlap the question/input, each cited ``[id]``;
3. otherwise: the first ``lead_sentences`` sentences of the input (the "lead" baseline).

Similarity is cosine over lower-cased word counts with IDF weights computed over the candidates in the
chat, so it is deterministic and needs nothing outside the prompt.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence

from sage_health.core.errors import EmptyGenerationError
from sage_health.models.generation.base import (
    ChatMessage,
    FinishReason,
    Generation,
    GenerationParams,
    ModelInfo,
    Stopwatch,
    apply_stop,
    validate_messages,
)
from sage_health.models.generation.prompts import parse_blocks

_WORD = re.compile(r"[a-z0-9]+")
_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "and",
        "or",
        "in",
        "on",
        "at",
        "to",
        "for",
        "with",
        "without",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "there",
        "this",
        "that",
        "these",
        "those",
        "no",
        "not",
    ]
)


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(text.strip()) if s.strip()]


def _terms(text: str) -> Counter[str]:
    return Counter(w for w in _WORD.findall(text.lower()) if w not in _STOP)


def _cosine(a: Counter[str], b: Counter[str], idf: dict[str, float]) -> float:
    if not a or not b:
        return 0.0
    dot = sum(a[t] * b[t] * idf.get(t, 1.0) ** 2 for t in a.keys() & b.keys())
    na = math.sqrt(sum((c * idf.get(t, 1.0)) ** 2 for t, c in a.items()))
    nb = math.sqrt(sum((c * idf.get(t, 1.0)) ** 2 for t, c in b.items()))
    return dot / (na * nb) if na and nb else 0.0


def _idf(docs: Sequence[Counter[str]]) -> dict[str, float]:
    df: Counter[str] = Counter()
    for d in docs:
        df.update(d.keys())
    n = len(docs)
    return {t: math.log(1 + (n + 1) / (c + 0.5)) for t, c in df.items()}


class ExtractiveGenerator:
    """Composes answers from the prompt's quoted data; never invents text."""

    MODEL_ID = "extractive"

    def __init__(self, *, lead_sentences: int = 1, evidence_sentences: int = 2, version: str = "1") -> None:
        self._lead = lead_sentences
        self._evidence = evidence_sentences
        self._version = version

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(model_id=self.MODEL_ID, version=self._version, backend="extractive")

    def compose(self, messages: Sequence[ChatMessage]) -> str:
        validate_messages(messages)
        parsed = parse_blocks(messages)
        query = " ".join(x for x in (parsed.question, parsed.input) if x)
        q = _terms(query)
        if parsed.exemplars and parsed.input is not None:
            cands = [_terms(e.input) for e in parsed.exemplars]
            idf = _idf([*cands, q])
            best = max(range(len(cands)), key=lambda i: (_cosine(q, cands[i], idf), -i))
            return parsed.exemplars[best].output.strip()
        if parsed.evidence:
            scored: list[tuple[float, int, str, str]] = []
            for ev in parsed.evidence:
                for s in sentences(ev.text):
                    scored.append((0.0, len(scored), ev.id, s))
            idf = _idf([_terms(s) for *_, s in scored])
            ranked = sorted(((-_cosine(q, _terms(s), idf), n, i, s) for _, n, i, s in scored))
            top = [r for r in ranked[: self._evidence] if r[0] < 0] or ranked[:1]  # drop sentences sharing no term
            keep = sorted(top, key=lambda r: r[1])
            return " ".join(f"{s} [{i}]" for _, _, i, s in keep)
        return " ".join(sentences(parsed.input or "")[: self._lead])

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Generation:
        params = params or GenerationParams()
        with Stopwatch() as sw:
            text = self.compose(messages)
        text, _ = apply_stop(text, params.stop)
        words = text.split()
        finish: FinishReason = "stop"
        if len(words) > params.max_new_tokens:  # a word is this backend's token
            text, finish = " ".join(words[: params.max_new_tokens]), "length"
        text = text.strip()
        if not text:
            raise EmptyGenerationError("the extractive generator found no input, exemplar or evidence text to use")
        prompt_words = sum(len(m.content.split()) for m in messages)
        return Generation(
            text=text,
            prompt_tokens=prompt_words,
            completion_tokens=len(text.split()),
            latency_s=sw.seconds,
            model_id=self.MODEL_ID,
            model_version=self._version,
            finish_reason=finish,
        )

    def stream(self, messages: Sequence[ChatMessage], params: GenerationParams | None = None) -> Iterator[str]:
        yield self.generate(messages, params).text
