"""``PresidioDeidentifier``: presidio-analyzer, fully offline, with SAGE-Health's recognizers.

presidio's default NLP engine loads (and would download) ``en_core_web_lg``. Here the engine is a **blank spaCy
English pipeline** (tokenizer + rule-based sentencizer; nothing downloaded). Identifiers come from the rule-based
recognizers in :mod:`.recognizers` and from the learned NER of :mod:`.learned` (a small spaCy model shipped in the
package, trained on generated text only), combined as :mod:`.fusion` says. presidio orchestrates the recognizers
(registry, per-recognizer results, scores); this module resolves overlaps, applies the medical allow-list, joins
address blocks and replaces the spans (:mod:`.surrogate`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from sage_health.data.governance.deid.fusion import DEFAULT_FUSION, LEARNED_SOURCE, Fusion, fusion_grid, gate
from sage_health.data.governance.deid.fusion import join_addresses as _join_addresses
from sage_health.data.governance.deid.lexicon import eponym_spans
from sage_health.data.governance.deid.recognizers import RECOGNIZERS, Hit
from sage_health.data.governance.deid.surrogate import SurrogateFactory, pseudonym, shift_date_text, shift_days
from sage_health.data.governance.deid.types import (
    DEID_MODES,
    DeidentificationError,
    DeidMode,
    DeidResult,
    EntityLabel,
    PhiSpan,
    Replacement,
)

if TYPE_CHECKING:
    from presidio_analyzer import AnalyzerEngine

VERSION: Final = "2"
AGE_LIMIT: Final = 89
"""Ages above this are PHI under HIPAA Safe Harbor ("90+"); ages up to it are kept."""

# Which label wins when spans overlap and are merged (earlier wins over later at equal length).
_PRIORITY: Final[tuple[EntityLabel, ...]] = (
    "EMAIL", "URL", "IP", "SSN", "PHONE", "DATE", "AGE", "ID", "ADDRESS", "ZIP", "NAME", "LOCATION",
)  # fmt: skip
_RANK: Final = {label: i for i, label in enumerate(_PRIORITY)}


def _blank_nlp_engine() -> Any:
    """A presidio ``SpacyNlpEngine`` over ``spacy.blank("en")`` + sentencizer (no model load, no download)."""
    import spacy
    from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        """SpacyNlpEngine whose ``load`` builds a blank English pipeline instead of loading a trained one."""

        def load(self) -> None:
            nlp = spacy.blank("en")
            nlp.add_pipe("sentencizer")
            self.nlp = {"en": nlp}  # type: ignore[assignment]  # presidio annotates the slot as None

    return BlankSpacyNlpEngine(
        models=[{"lang_code": "en", "model_name": "blank:en"}],
        ner_model_configuration=NerModelConfiguration(labels_to_ignore=["*"]),
    )


def _presidio_recognizer(name: str, labels: Sequence[EntityLabel], fn: Callable[[str], list[Hit]]) -> Any:
    from presidio_analyzer import EntityRecognizer, RecognizerResult

    class SageRecognizer(EntityRecognizer):
        def load(self) -> None:
            return None

        def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]:
            wanted = set(entities or labels)
            return [
                RecognizerResult(
                    entity_type=h.label,
                    start=h.start,
                    end=h.end,
                    score=h.score,
                    recognition_metadata={"recognizer_name": f"{name}:{h.recognizer}"},
                )
                for h in fn(text)
                if h.label in wanted and h.end > h.start
            ]

    return SageRecognizer(supported_entities=list(labels), name=name, supported_language="en", version=VERSION)


def build_analyzer(*, learned: bool = True) -> AnalyzerEngine:
    """The presidio ``AnalyzerEngine`` with the blank spaCy engine and every built-in SAGE recognizer (the learned
    NER only when ``learned``)."""
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry

    registry = RecognizerRegistry(
        recognizers=[
            _presidio_recognizer(name, labels, fn)
            for name, labels, fn in RECOGNIZERS
            if learned or name != LEARNED_SOURCE
        ],
        supported_languages=["en"],
    )
    return AnalyzerEngine(registry=registry, nlp_engine=_blank_nlp_engine(), supported_languages=["en"])


def resolve(text: str, hits: Sequence[tuple[int, int, EntityLabel, float, str]]) -> list[PhiSpan]:
    """Non-overlapping spans: the allow-list drops names/places on clinical eponyms, overlaps merge into one span
    labelled by its longest member (ties: :data:`_PRIORITY`)."""
    protected = eponym_spans(text)
    kept = []
    for start, end, label, score, source in hits:
        # trim whitespace and trailing punctuation the patterns may have taken
        while start < end and text[start].isspace():
            start += 1
        while end > start and (text[end - 1].isspace() or text[end - 1] in ",;:"):
            end -= 1
        if end <= start:
            continue
        if label in ("NAME", "LOCATION") and any(s < end and start < e for s, e in protected):
            continue
        kept.append((start, end, label, score, source))
    kept.sort(key=lambda h: (h[0], -h[1]))
    merged: list[list[Any]] = []
    for start, end, label, score, source in kept:
        if merged and start < merged[-1][1]:
            cur = merged[-1]
            members: list[tuple[int, int, EntityLabel, float, str]] = cur[5]
            members.append((start, end, label, score, source))
            cur[1] = max(cur[1], end)
            continue
        merged.append([start, end, label, score, source, [(start, end, label, score, source)]])
    out: list[PhiSpan] = []
    for start, end, _, _, _, members in merged:
        best = max(members, key=lambda h: (h[1] - h[0], h[3], -_RANK[h[2]]))
        out.append(
            PhiSpan(
                start=start,
                end=end,
                label=best[2],
                score=max(h[3] for h in members),
                recognizer=best[4],
                text=text[start:end],
            )
        )
    return out


class PresidioDeidentifier:
    """The built-in :class:`~sage_health.data.governance.deid.types.Deidentifier` (presidio-analyzer, offline).

    ``key`` is the secret behind surrogates and date shifts (see :func:`.surrogate.deid_key`; the caller owns it).
    Cheap to construct; presidio, spaCy and the faker word lists load on the first call (~3 s).
    ``score_threshold`` drops weaker detections (default 0: de-identification favours recall). ``fusion``: how the
    rules and the learned model combine (default :data:`~.fusion.DEFAULT_FUSION`, chosen by template
    cross-validation; :meth:`variants` gives the candidates it was chosen from).
    """

    name: str = "presidio"
    version: str = VERSION

    def __init__(self, key: bytes, *, score_threshold: float = 0.0, fusion: Fusion = DEFAULT_FUSION) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise DeidentificationError("the de-identification key must be at least 16 bytes (see deid_key())")
        self._key = key
        self._threshold = score_threshold
        self.fusion = fusion
        self._analyzer: AnalyzerEngine | None = None
        self._surrogates = SurrogateFactory(key)
        self._lock = threading.Lock()

    @property
    def analyzer(self) -> AnalyzerEngine:
        if self._analyzer is None:
            with self._lock:
                if self._analyzer is None:
                    self._analyzer = build_analyzer(learned=self.fusion.learned)
        return self._analyzer

    def variants(self) -> dict[str, PresidioDeidentifier]:
        """One de-identifier per candidate setting of :func:`~.fusion.fusion_grid` (same key), by setting name."""
        return {
            f.name: PresidioDeidentifier(self._key, score_threshold=self._threshold, fusion=f) for f in fusion_grid()
        }

    def detect(self, text: str, *, known: Mapping[EntityLabel, Sequence[str]] | None = None) -> list[PhiSpan]:
        """Identifier spans in ``text``. ``known``: identifiers known from structured data (e.g. the patient's
        names from the FHIR ``name`` fields), always redacted where they occur as whole words (case-insensitive;
        digits Synthea appends to names are optional)."""
        if not isinstance(text, str):
            raise DeidentificationError(f"detect() needs a str, got {type(text).__name__}")
        if not text.strip():
            return []
        results = self.analyzer.analyze(text=text, language="en", score_threshold=self._threshold)
        hits = [
            (
                r.start,
                r.end,
                cast(EntityLabel, r.entity_type),
                float(r.score),
                str((r.recognition_metadata or {}).get("recognizer_name", "presidio")),
            )
            for r in results
        ]
        hits = gate(hits, self.fusion) + _known_hits(text, known or {})
        spans = resolve(text, hits)
        return _join_addresses(text, spans) if self.fusion.join else spans

    def deidentify(
        self,
        text: str,
        *,
        patient_key: str | None,
        mode: DeidMode = "tag",
        known: Mapping[EntityLabel, Sequence[str]] | None = None,
    ) -> DeidResult:
        if mode not in DEID_MODES:
            raise DeidentificationError(f"unknown de-identification mode {mode!r}; use one of {', '.join(DEID_MODES)}")
        if patient_key is not None and not isinstance(patient_key, str):
            raise DeidentificationError(f"patient_key must be a str or None, got {type(patient_key).__name__}")
        return self.apply(text, self.detect(text, known=known), patient_key=patient_key, mode=mode)

    def apply(self, text: str, spans: Sequence[PhiSpan], *, patient_key: str | None, mode: DeidMode) -> DeidResult:
        """Replace ``spans`` (from :meth:`detect`, possibly edited by the caller) in ``text``."""
        days = shift_days(self._key, patient_key)
        pieces: list[str] = []
        reps: list[Replacement] = []
        pos = 0
        length = 0
        for span in sorted(spans, key=lambda s: s.start):
            if span.start < pos:
                continue
            original = text[span.start : span.end]
            new = self.replacement(span.label, original, patient_key=patient_key, mode=mode, days=days)
            if new is None:
                continue
            pieces.append(text[pos : span.start])
            length += span.start - pos
            pieces.append(new)
            reps.append(Replacement(span.start, span.end, span.label, length, length + len(new)))
            length += len(new)
            pos = span.end
        pieces.append(text[pos:])
        return DeidResult(text="".join(pieces), mode=mode, replacements=tuple(reps))

    def replacement(
        self, label: EntityLabel, original: str, *, patient_key: str | None, mode: DeidMode, days: int | None = None
    ) -> str | None:
        """What ``original`` becomes (None: kept, i.e. an age <= 89)."""
        if label == "AGE":
            digits = re.sub(r"\D", "", original)
            if digits and int(digits) <= AGE_LIMIT:
                return None
            return "[AGE]" if mode == "tag" else "90+"
        if label == "DATE" and mode in ("surrogate", "shift"):
            shifted = shift_date_text(original, days if days is not None else shift_days(self._key, patient_key))
            if shifted is not None:
                return shifted
            return original if _is_clock_time(original) else "[DATE]"
        if mode == "surrogate":
            return self._surrogates.value(label, original, patient_key)
        return f"[{label}]"

    def pseudonym(self, value: str) -> str:
        """A keyed, stable pseudonym for an id (same id -> same pseudonym in every patient)."""
        return pseudonym(self._key, value)

    def date_shift(self, patient_key: str | None) -> int:
        """The patient's date offset in days (negative). Secret-derived: do not store it beside shifted data."""
        return shift_days(self._key, patient_key)


_CLOCK = re.compile(
    r"\s*(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?(?:\s*[AaPp]\.?[Mm]\.?)?\s*|\s*\d{1,2}\s*[AaPp]\.?[Mm]\.?\s*"
)


def _is_clock_time(text: str) -> bool:
    return _CLOCK.fullmatch(text) is not None


def _known_hits(
    text: str, known: Mapping[EntityLabel, Sequence[str]]
) -> list[tuple[int, int, EntityLabel, float, str]]:
    out: list[tuple[int, int, EntityLabel, float, str]] = []
    for label, values in known.items():
        for value in values:
            if not isinstance(value, str):
                continue
            core = re.sub(r"\d+$", "", value.strip()) if label == "NAME" else value.strip()
            if len(core) < 2:
                continue
            tail = r"\d*" if label == "NAME" else ""
            pattern = rf"(?<![\w]){re.escape(core)}{tail}(?![\w])"
            out += [(m.start(), m.end(), label, 1.0, "known") for m in re.finditer(pattern, text, re.IGNORECASE)]
    return out
