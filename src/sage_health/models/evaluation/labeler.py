"""A CheXpert-style radiology report labeler: 14 observations, each positive / negative / uncertain / blank.

The vocabulary is the CheXpert labeler's own (``phrases/mention/*.txt`` and ``phrases/unmention/*.txt`` of the
labeler directory, read at run time, never copied into the code). Negation and uncertainty are decided by
medspaCy's ConText with rules written after the labeler's NegBio dependency patterns (``patterns/*.txt``), in the
same precedence: pre-negation uncertainty ("cannot exclude", "not excluded", "no new"), then negation, then
uncertainty.

As in the reference labeler:

* the report is lower-cased and cleaned (``and/or`` and ``a/b`` become ``or``); every phrase matches as a
  substring (the phrases are stems: ``atelecta``, ``opaci``); ``_`` in a phrase is a word boundary; a mention that
  overlaps an unmention phrase of its observation is dropped;
* the labels of one observation combine as positive > uncertain > negative; "chf" / "heart failure" also make
  Cardiomegaly uncertain; "vascular / pulmonary congestion", "vascular prominence" and "indistinctness" are
  uncertain whenever they are not negated;
* "No Finding" is positive only when no observation other than Support Devices, and no other abnormality of
  ``phrases/mention/no_finding.txt``, is positive or uncertain; it is never negative. "Lungs are clear" and "no
  acute cardiopulmonary process" name no observation: they leave the 13 blank (and so allow No Finding).

Where this labeler departs from the reference (general rules, each measured on the IU X-ray MeSH validation; see
``labeler_validation``):

* Anatomy-only phrases ("the heart", "heart size", "cardiac silhouette", "mediastinum", "contour", ...) say *where*,
  not *what*; the reference calls any un-negated mention of them positive ("a granuloma projects over the heart" is
  cardiomegaly). Here such a mention is positive only with an enlargement word nearby ("enlarged", "prominent",
  "widened", ...), uncertain with a hedge ("borderline", "may be"), negative when negated or described as normal,
  and blank otherwise. The reference's "stable / unchanged cardiomediastinal silhouette" -> uncertain rule is off by
  default (``stable_anatomy_uncertain=True`` restores it): stability says nothing about size.
* Hyphens between letters count as spaces, in reports and phrases ("pleural-parenchymal scar", "air-space").
* An unmention phrase must start a word and not follow "non"/"not", so "calcified nodul" does not swallow the
  nodule of "non-calcified nodule". A nodule mention near "calcified" in any word order ("calcified right lower
  lobe nodule") is the reference's "calcified nodul" unmention and is dropped.
* :data:`EXTRA_UNMENTIONS` lists words that contain a phrase by accident ("plate" in "endplate", "lines" in
  "b-lines", "lump" in "lumpectomy"); :data:`EXTRA_MENTIONS` adds word forms and word orders of the labeler's
  phrases and common device words it lacks ("fibrotic", "pleural capping", "prominent pulmonary vasculature",
  "stent", "leads", "port"); :data:`EXTRA_ABNORMALITIES` adds other abnormalities that only decide No Finding
  ("low lung volumes", "tortuous aorta", "osteophytes").
* Conditional mentions ("if there is concern for fracture", "evaluation for pneumothorax") are dropped, and a
  finding attributed to an artifact ("nodular densities ... consistent with nipple shadows") is negative.
* An empty report is all blank (the reference would call it No Finding).

The result types live in :mod:`.labeler_types` and the vocabulary additions and ConText rules in
:mod:`.labeler_rules`; every public name is importable from here.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sage_health.core.errors import EvaluationError, ModelLoadError
from sage_health.models.evaluation.labeler_rules import (
    _ALTERNATIVE,
    _ALWAYS_UNCERTAIN,
    _ANATOMY_PHRASES,
    _CALCIFIED,
    _ENLARGED,
    _GROUP,
    _HEART_FAILURE_PHRASES,
    _HYPOTHETICAL,
    _NEG,
    _NORMAL,
    _PRE_UNC,
    _RULES,
    _STABLE,
    _UNC,
    EXTRA_ABNORMALITIES,
    EXTRA_MENTIONS,
    EXTRA_UNMENTIONS,
    _span_label,
)
from sage_health.models.evaluation.labeler_types import (
    _PRECEDENCE,
    COMMON_FIVE,
    NO_FINDING,
    OBSERVATIONS,
    SUPPORT_DEVICES,
    Evidence,
    Label,
    ReportLabels,
)

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

__all__ = [
    "COMMON_FIVE",
    "EXTRA_ABNORMALITIES",
    "EXTRA_MENTIONS",
    "EXTRA_UNMENTIONS",
    "NO_FINDING",
    "OBSERVATIONS",
    "SUPPORT_DEVICES",
    "CheXpertLabeler",
    "Evidence",
    "Label",
    "ReportLabels",
    "normalize_report",
]


# -- text and mentions ------------------------------------------------------------------------------------------

_HYPHEN = re.compile(r"(?<=[a-z])-(?=[a-z])")
_SLASH_OR = re.compile(r"(?<=[a-z])/(?=[a-z])")
_SPACE_AFTER_PUNCT = re.compile(r"([.,])(?=[^\s\d.,])")
_EMPTY_SENTENCE = re.compile(r"\.\s+\.")


def normalize_report(text: str) -> str:
    """The reference labeler's cleaning (lower case; ``and/or``, ``a/b`` -> ``or``; one space between words),
    plus hyphens between letters read as spaces."""
    cleaned = _HYPHEN.sub(" ", text.lower()).replace("and/or", "or")
    cleaned = _SLASH_OR.sub(" or ", cleaned)
    cleaned = _SPACE_AFTER_PUNCT.sub(r"\1 ", cleaned.replace("..", "."))
    return _EMPTY_SENTENCE.sub(".", " ".join(cleaned.split()))


def _phrase_regex(phrase: str, *, unmention: bool = False) -> re.Pattern[str]:
    """A labeler phrase as a regex: a substring match, ``_`` standing for a word boundary.

    An unmention phrase must start a word and not follow "non " / "not " ("calcified nodul" must not swallow the
    nodule of "non calcified nodule").
    """
    body = r"\b".join(re.escape(_HYPHEN.sub(" ", part)) for part in phrase.lower().split("_"))
    return re.compile(r"(?<![a-z])(?<!non )(?<!not )" + body if unmention else body)


@dataclass(frozen=True, slots=True)
class _Mention:
    observation: str
    phrase: str
    start: int
    end: int
    anatomy: bool


@dataclass(frozen=True, slots=True)
class _Phrase:
    observation: str
    phrase: str
    pattern: re.Pattern[str]
    anatomy: bool


@dataclass(frozen=True, slots=True)
class _Lexicon:
    phrases: tuple[_Phrase, ...]
    unmentions: Mapping[str, tuple[re.Pattern[str], ...]]

    def find(self, text: str) -> list[_Mention]:
        blocked = {
            name: [m.span() for pattern in patterns for m in pattern.finditer(text)]
            for name, patterns in self.unmentions.items()
        }
        found: list[_Mention] = []
        for entry in self.phrases:
            stops = blocked.get(entry.observation, ())
            for match in entry.pattern.finditer(text):
                start, end = match.span()
                if not any(start < b_end and end > b_start for b_start, b_end in stops):
                    found.append(_Mention(entry.observation, entry.phrase, start, end, entry.anatomy))
        found.sort(key=lambda m: (m.start, -m.end))  # text order: evidence cites the first deciding mention
        return found


def _read_phrases(path: Path) -> tuple[str, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"cannot read labeler phrase file {path} ({exc.__class__.__name__}); check it") from exc
    return tuple(line.strip() for line in lines if line.strip())


def _observation_name(stem: str) -> str:
    return stem.replace("_", " ").title()


class CheXpertLabeler:
    """Labels chest X-ray reports with the 14 CheXpert observations.

    Build it with :meth:`from_dir` (a CheXpert labeler directory: ``phrases/mention/*.txt`` and optional
    ``phrases/unmention/*.txt``) or :meth:`from_data_dir`. Construction only compiles the phrase lists; the spaCy
    pipeline (blank English tokenizer, sentencizer, medspaCy ConText with this module's rules) is built on first use
    and reused by every later call.
    """

    def __init__(
        self,
        mention: Mapping[str, Sequence[str]],
        unmention: Mapping[str, Sequence[str]] | None = None,
        *,
        stable_anatomy_uncertain: bool = False,
        batch_size: int = 128,
    ) -> None:
        unknown = sorted(set(mention) - set(OBSERVATIONS)) + sorted(set(unmention or {}) - set(OBSERVATIONS))
        if unknown:
            raise EvaluationError(
                f"unknown observation(s) in the phrase lists: {', '.join(unknown)}; expected: {', '.join(OBSERVATIONS)}"
            )
        missing = [name for name in OBSERVATIONS if not mention.get(name)]
        if missing:
            raise EvaluationError(f"no mention phrases for: {', '.join(missing)}; every observation needs some")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        phrases: list[_Phrase] = []
        for name in OBSERVATIONS:
            anatomy = _ANATOMY_PHRASES.get(name, frozenset())
            extra = EXTRA_ABNORMALITIES if name == NO_FINDING else EXTRA_MENTIONS.get(name, ())
            for phrase in dict.fromkeys([*(p.lower() for p in mention[name]), *extra]):
                phrases.append(_Phrase(name, phrase, _phrase_regex(phrase), phrase in anatomy))
        blocked: dict[str, list[re.Pattern[str]]] = defaultdict(list)
        for source in (unmention or {}, EXTRA_UNMENTIONS):
            for name, items in source.items():
                blocked[name].extend(_phrase_regex(p, unmention=True) for p in items)
        self._lexicon = _Lexicon(tuple(phrases), MappingProxyType({k: tuple(v) for k, v in blocked.items()}))
        self._stable_anatomy_uncertain = stable_anatomy_uncertain
        self._batch_size = batch_size
        self._nlp: Language | None = None
        self._context: Callable[[Doc], Doc] | None = None

    @classmethod
    def from_dir(
        cls, path: Path | str, *, stable_anatomy_uncertain: bool = False, batch_size: int = 128
    ) -> CheXpertLabeler:
        """Load the phrase lists of a CheXpert labeler directory (``phrases/mention``, ``phrases/unmention``)."""
        mention_dir = Path(path) / "phrases" / "mention"
        if not mention_dir.is_dir():
            raise EvaluationError(
                f"CheXpert labeler phrases not found: {mention_dir} is missing; pass the 'chexpert_labeler' folder "
                "of the data directory (SAGE_DATA_DIR)"
            )
        files = sorted(mention_dir.glob("*.txt"))
        for p in files:
            if _observation_name(p.stem) not in OBSERVATIONS:
                raise EvaluationError(f"phrase file {p} names no CheXpert observation; rename or remove it")
        mention = {_observation_name(p.stem): _read_phrases(p) for p in files}
        missing = [name for name in OBSERVATIONS if not mention.get(name)]
        if missing:
            names = ", ".join(f"{name.lower().replace(' ', '_')}.txt" for name in missing)
            raise EvaluationError(f"missing or empty mention phrase file(s) in {mention_dir}: {names}")
        unmention: dict[str, tuple[str, ...]] = {}
        unmention_dir = Path(path) / "phrases" / "unmention"
        for p in sorted(unmention_dir.glob("*.txt")) if unmention_dir.is_dir() else ():
            if _observation_name(p.stem) not in OBSERVATIONS:
                raise EvaluationError(f"phrase file {p} names no CheXpert observation; rename or remove it")
            unmention[_observation_name(p.stem)] = _read_phrases(p)
        return cls(mention, unmention, stable_anatomy_uncertain=stable_anatomy_uncertain, batch_size=batch_size)

    @classmethod
    def from_data_dir(
        cls, data_dir: Path | str, *, stable_anatomy_uncertain: bool = False, batch_size: int = 128
    ) -> CheXpertLabeler:
        """Load ``<data_dir>/chexpert_labeler`` (``data_dir`` is ``Settings.data_dir``, i.e. SAGE_DATA_DIR)."""
        return cls.from_dir(
            Path(data_dir) / "chexpert_labeler",
            stable_anatomy_uncertain=stable_anatomy_uncertain,
            batch_size=batch_size,
        )

    @property
    def options(self) -> dict[str, bool | int]:
        """The labeler's settings (recorded with every validation result)."""
        return {"stable_anatomy_uncertain": self._stable_anatomy_uncertain, "batch_size": self._batch_size}

    def label(self, text: str) -> ReportLabels:
        """Label one report (findings and/or impression text)."""
        return self.label_many([text])[0]

    def label_many(self, texts: Iterable[str]) -> list[ReportLabels]:
        """Label many reports in order, batched through ``nlp.pipe``."""
        nlp, context = self._pipeline()
        cleaned = [normalize_report(text) for text in texts]
        return [self._label_doc(doc, context) for doc in nlp.pipe(cleaned, batch_size=self._batch_size)]

    def _pipeline(self) -> tuple[Language, Callable[[Doc], Doc]]:
        if self._nlp is not None and self._context is not None:
            return self._nlp, self._context
        try:
            import spacy
            from medspacy.context import ConText, ConTextRule
        except ImportError as exc:
            raise ModelLoadError(
                "the CheXpert labeler needs spaCy and medspaCy: pip install 'medspacy>=1.3,<2' 'spacy>=3.7,<3.8'"
            ) from exc
        nlp = spacy.blank("en")
        nlp.add_pipe("sentencizer")
        context = ConText(nlp, rules=None, span_attrs=None, input_span_type="group", span_group_name=_GROUP)
        context.add(
            [
                ConTextRule(
                    cue.literal,
                    cue.category,
                    # punctuation as a token pattern (this also gives medspaCy's token matcher a pattern)
                    pattern=[{"ORTH": cue.literal}] if not any(c.isalnum() for c in cue.literal) else None,
                    direction=cue.direction,
                    max_scope=cue.max_scope,
                    terminated_by=set(cue.terminated_by) or None,
                    allowed_types=None if cue.allowed is None else set(cue.allowed),
                )
                for cue in _RULES
            ]
        )
        self._nlp, self._context = nlp, context
        return nlp, context

    def _label_doc(self, doc: Doc, context: Callable[[Doc], Doc]) -> ReportLabels:
        text = doc.text
        labels = dict.fromkeys(OBSERVATIONS, Label.BLANK)
        if not text.strip():
            return ReportLabels(text=text, labels=MappingProxyType(labels))
        mentions = self._lexicon.find(text)
        spans = [
            doc.char_span(m.start, m.end, label=_span_label(m.observation, m.anatomy), alignment_mode="expand")
            for m in mentions
        ]
        doc.spans[_GROUP] = [span for span in spans if span is not None]
        context(doc)
        modifiers: dict[tuple[int, int, str], list[Any]] = defaultdict(list)
        for target, modifier in doc._.context_graph.edges:
            modifiers[(target.start, target.end, target.label_)].append(modifier)

        best: dict[str, Evidence] = {}
        abnormal: Evidence | None = None
        for mention, span in zip(mentions, spans, strict=True):
            if span is None:  # pragma: no cover - "expand" alignment always yields a span for a non-empty range
                continue
            label, cues = _decide(
                modifiers.get((span.start, span.end, span.label_), []),
                doc,
                anatomy=mention.anatomy,
                nodule="nodul" in mention.phrase,
                stable_uncertain=self._stable_anatomy_uncertain,
            )
            if label is Label.POSITIVE and mention.phrase in _ALWAYS_UNCERTAIN:
                label = Label.UNCERTAIN
            if label is Label.BLANK:
                continue
            evidence = Evidence(
                observation=mention.observation,
                label=label,
                phrase=mention.phrase.replace("_", " ").strip(),
                mention=span.text,
                start=span.start_char,
                end=span.end_char,
                sentence=span.sent.text,
                cues=cues,
            )
            found = [evidence]
            if mention.phrase in _HEART_FAILURE_PHRASES and label is not Label.NEGATIVE:
                found.append(_relabel(evidence, "Cardiomegaly", Label.UNCERTAIN))
            for item in found:
                if abnormal is None and item.observation != SUPPORT_DEVICES and item.label is not Label.NEGATIVE:
                    abnormal = item
                current = best.get(item.observation)
                if item.observation != NO_FINDING and (
                    current is None or _PRECEDENCE[item.label] > _PRECEDENCE[current.label]
                ):
                    best[item.observation] = item
        labels.update({name: evidence.label for name, evidence in best.items()})
        if abnormal is None:
            labels[NO_FINDING] = Label.POSITIVE
        else:
            best[NO_FINDING] = _relabel(abnormal, NO_FINDING, Label.BLANK)
        return ReportLabels(text=text, labels=MappingProxyType(labels), evidence=MappingProxyType(best))


def _relabel(evidence: Evidence, observation: str, label: Label) -> Evidence:
    return Evidence(
        observation,
        label,
        evidence.phrase,
        evidence.mention,
        evidence.start,
        evidence.end,
        evidence.sentence,
        evidence.cues,
    )


def _decide(
    modifiers: Sequence[Any], doc: Doc, *, anatomy: bool, nodule: bool, stable_uncertain: bool
) -> tuple[Label, tuple[str, ...]]:
    """One mention's label from its ConText modifiers, in the reference labeler's precedence."""

    def cues(*categories: str) -> tuple[str, ...]:
        return tuple(doc[m.modifier_span[0] : m.modifier_span[1]].text for m in modifiers if m.category in categories)

    if cues(_HYPOTHETICAL) or (nodule and cues(_CALCIFIED)):
        return Label.BLANK, ()
    if pre := cues(_PRE_UNC):
        return Label.UNCERTAIN, pre
    if negated := cues(_NEG, _NORMAL):
        return Label.NEGATIVE, negated
    uncertain = cues(_UNC, _ALTERNATIVE)
    if not anatomy:
        return (Label.UNCERTAIN, uncertain) if uncertain else (Label.POSITIVE, ())
    if enlarged := cues(_ENLARGED):
        return (Label.UNCERTAIN, uncertain + enlarged) if uncertain else (Label.POSITIVE, enlarged)
    stable = cues(_STABLE) if stable_uncertain else ()
    return (Label.UNCERTAIN, uncertain + stable) if uncertain or stable else (Label.BLANK, ())
