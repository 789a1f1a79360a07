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
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from sage_health.core.errors import EvaluationError, ModelLoadError

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


def _split(text: str) -> tuple[str, ...]:
    """``"a | b | c"`` -> ``("a", "b", "c")`` (keeps the long phrase tables readable)."""
    return tuple(part.strip() for part in text.split("|") if part.strip())


NO_FINDING: Final = "No Finding"
SUPPORT_DEVICES: Final = "Support Devices"

#: The 14 CheXpert observations, in the column order of the reference labeler's output.
OBSERVATIONS: Final[tuple[str, ...]] = (
    NO_FINDING,
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    SUPPORT_DEVICES,
)

#: The five observations of the CheXpert competition (the usual clinical-efficacy subset).
COMMON_FIVE: Final[tuple[str, ...]] = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")

#: Added to the labeler's unmention lists: words that contain one of its mention phrases by accident.
EXTRA_UNMENTIONS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        SUPPORT_DEVICES: _split(
            "endplate | end plate | platelike | plate like | tubercul | tuberos | outlines | supportive | supporting"
            " | b lines | septal lines | kerley | lung lines | scapular tip | tip of the scapula"
        ),
        "Lung Lesion": _split(
            "massengale | lumpectomy | pleural cavity | thoracic cavity | chest cavity | abdominal cavity"
            " | oral cavity | thyroid mass | breast mass"
        ),
        "Edema": _split("soft tissue edema | subcutaneous edema"),
        "Pleural Other": _split("cystic fibrosis"),
    }
)

#: Added to the labeler's mention lists: other word forms and word orders of its phrases, and common device words
#: it lacks. ``_`` is a word boundary, as in the labeler's files.
EXTRA_MENTIONS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "Lung Lesion": _split(
            "_cavit | fibronodular | reticulonodular | _round opaci | _rounded opaci | _round densit"
            " | _rounded densit | _circular opaci | _circular densit"
        ),
        "Edema": _split(
            "vascular engorgement | vascular redistribution | pulmonary venous hypertension"
            " | pulmonary venous congestion | prominent pulmonary vasculature | prominent central pulmonary vasculature"
            " | prominence of the central pulmonary vasculature | prominence of the pulmonary vasculature"
            " | prominence of the central vasculature | prominent central vasculature"
            " | pulmonary vascularity is prominent | increased pulmonary vascularity | increased lung vascularity"
            " | increased pulmonary vasculature | _congestion"
        ),
        "Pleural Other": _split(
            "_fibrotic | pleural capping | apical capping | fissural thickening | thickening of the fissure"
            " | thickening of the pleura | effusion versus thickening | effusion or thickening"
            " | fluid versus thickening | fluid or thickening | pleural plaque | pleural abnormalit"
        ),
        SUPPORT_DEVICES: _split(
            "_stent | _leads_ | _lead_ | _generator | _port_ | _tip_ | _tips_ | _shunt | _stimulator | bone anchor"
            " | internal fixation | occluder"
        ),
    }
)

#: Other abnormalities (outside the 13 observations) that ``no_finding.txt`` misses; they only decide No Finding.
EXTRA_ABNORMALITIES: Final[tuple[str, ...]] = _split(
    "hypoinflat | low lung volume | lung volumes are low | lung volumes are reduced | decreased lung volume"
    " | hyperexpan | hyperaera | overinflat | tortuous | tortuosity | ectatic | ectasia | aneurysm | osteophyte"
    " | spondylo | elevated | flattened | flattening | granulomatous | kyphotic | scoliotic | old fracture | healed"
    " | sternotomy | surgical clip | clips | cholecystectomy | postoperative | post operative | postsurgical | nodes"
    " | lymphadenopathy | adenopathy | hilar prominence | bronchiectasis | cyst | lucency | lucencies"
    " | chronic lung disease | chronic obstructive | mastectomy | pneumonectomy | lobectomy | wedge resection"
    " | foreign body | shrapnel | arthritis | arthritic | pectus | atheroma"
)

# Phrases that name an anatomical structure, not a finding (they need a qualifier to count; module docstring).
_ANATOMY_PHRASES: Final[Mapping[str, frozenset[str]]] = MappingProxyType(
    {
        "Cardiomegaly": frozenset(
            _split("the heart | heart size | cardiac size | cardiac shadow | cardiac contour | cardiac silhouette")
        ),
        "Enlarged Cardiomediastinum": frozenset(
            _split(
                "_mediastinum | cardiomediastinum | contour | mediastinal configuration | mediastinal silhouette"
                " | pericardial silhouette | cardiac silhouette and vascularity"
            )
        ),
    }
)

# patterns/post_negation_uncertainty.txt: these edema phrases are uncertain whenever they are not negated.
_ALWAYS_UNCERTAIN: Final = frozenset(
    {"vascular congestion", "pulmonary congestion", "indistinctness", "vascular prominence", *EXTRA_MENTIONS["Edema"]}
)
# A positive or uncertain "chf" / "heart failure" also makes Cardiomegaly uncertain (the reference aggregator).
_HEART_FAILURE_PHRASES: Final = frozenset({"chf", "heart failure"})


class Label(StrEnum):
    """One observation's label; :attr:`chexpert_value` gives the reference labeler's number (blank is ``None``)."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    UNCERTAIN = "uncertain"
    BLANK = "blank"

    @property
    def chexpert_value(self) -> float | None:
        """1.0 positive, 0.0 negative, -1.0 uncertain, ``None`` blank (CheXpert's empty cell)."""
        return _CHEXPERT_VALUES[self]

    @classmethod
    def from_chexpert(cls, value: float | str | None) -> Label:
        """Parse a CheXpert cell: ``1``/``1.0``, ``0``/``0.0``, ``-1``/``-1.0``, or empty / ``None`` / NaN."""
        text = "" if value is None else str(value).strip().lower()
        if text in {"", "nan", "none"}:
            return cls.BLANK
        try:
            number = float(text)
        except ValueError:
            number = None
        for label, chexpert in _CHEXPERT_VALUES.items():
            if chexpert is not None and number == chexpert:
                return label
        raise ValueError(f"not a CheXpert label value: {text!r} (expected 1, 0, -1 or empty)")


_CHEXPERT_VALUES: Final[Mapping[Label, float | None]] = MappingProxyType(
    {Label.POSITIVE: 1.0, Label.NEGATIVE: 0.0, Label.UNCERTAIN: -1.0, Label.BLANK: None}
)

# The reference aggregation: a positive mention beats an uncertain one, which beats a negative one.
_PRECEDENCE: Final[Mapping[Label, int]] = MappingProxyType(
    {Label.POSITIVE: 3, Label.UNCERTAIN: 2, Label.NEGATIVE: 1, Label.BLANK: 0}
)


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why an observation got its label: the deciding mention, its sentence and the ConText cues that modified it.

    ``phrase`` is the labeler phrase that matched (a stem such as ``atelecta``), ``mention`` the whole words it
    matched in :attr:`ReportLabels.text` (the normalised report) at ``start``/``end``.
    For a blank No Finding the evidence is the first positive or uncertain abnormality (``label`` is blank).
    """

    observation: str
    label: Label
    phrase: str
    mention: str
    start: int
    end: int
    sentence: str
    cues: tuple[str, ...] = ()

    def explain(self) -> str:
        """One line for a human: ``"Edema: negative - 'edema' in 'no edema.' (cue: 'no')"``."""
        cue = f" (cue: {', '.join(repr(c) for c in self.cues)})" if self.cues else ""
        return f"{self.observation}: {self.label.value} - {self.mention!r} in {self.sentence!r}{cue}"


@dataclass(frozen=True, slots=True)
class ReportLabels:
    """The 14 labels of one report (every observation present, blank when not mentioned) and their evidence.

    ``text`` is the normalised report that ``evidence`` offsets point into.
    """

    text: str
    labels: Mapping[str, Label]
    evidence: Mapping[str, Evidence] = field(default_factory=lambda: MappingProxyType({}))

    def __getitem__(self, observation: str) -> Label:
        try:
            return self.labels[observation]
        except KeyError:
            raise KeyError(f"unknown observation {observation!r}; expected one of {', '.join(OBSERVATIONS)}") from None

    def to_chexpert(self) -> dict[str, float | None]:
        """The reference labeler's row: observation -> 1.0 / 0.0 / -1.0 / None."""
        return {name: self.labels[name].chexpert_value for name in OBSERVATIONS}

    def positives(self, *, uncertain_as_positive: bool = True) -> frozenset[str]:
        """Observations labelled positive (and uncertain, under the U-Ones convention, by default)."""
        wanted = {Label.POSITIVE, Label.UNCERTAIN} if uncertain_as_positive else {Label.POSITIVE}
        return frozenset(name for name, label in self.labels.items() if label in wanted)


# -- ConText rules ----------------------------------------------------------------------------------------------
# Each literal appears once; medspaCy keeps the longest of overlapping matches ("no new" beats "no").

_NEG: Final = "NEGATED_EXISTENCE"
_NORMAL: Final = "NORMAL"
_UNC: Final = "POSSIBLE_EXISTENCE"
_PRE_UNC: Final = "PRE_NEGATION_UNCERTAINTY"
_ALTERNATIVE: Final = "ALTERNATIVE"
_STABLE: Final = "STABLE"
_ENLARGED: Final = "ENLARGEMENT"
_CALCIFIED: Final = "CALCIFIED"
_HYPOTHETICAL: Final = "HYPOTHETICAL"
_PSEUDO: Final = "PSEUDO"
_TERMINATE: Final = "TERMINATE"
_GROUP: Final = "chexpert_mentions"  # the span group that holds the mentions ConText reads


def _span_label(observation: str, anatomy: bool = False) -> str:
    """A mention's ConText target type: the observation, with ``__ANATOMY`` for anatomy-only phrases."""
    name = observation.upper().replace(" ", "_")
    return f"{name}__ANATOMY" if anatomy else name


_ANATOMY_TYPES: Final = frozenset(_span_label(name, anatomy=True) for name in _ANATOMY_PHRASES)
_FINDING_TYPES: Final = frozenset(_span_label(n) for n in OBSERVATIONS if n not in (NO_FINDING, SUPPORT_DEVICES))


@dataclass(frozen=True, slots=True)
class _Cue:
    literal: str
    category: str
    direction: str
    max_scope: int | None = None
    terminated_by: frozenset[str] = frozenset()
    allowed: frozenset[str] | None = None


def _cues(
    literals: str,
    category: str,
    direction: str,
    max_scope: int | None = None,
    terminated_by: Iterable[str] = (),
    allowed: Iterable[str] | None = None,
) -> list[_Cue]:
    stop = frozenset(terminated_by)
    kinds = None if allowed is None else frozenset(allowed)
    return [_Cue(literal, category, direction, max_scope, stop, kinds) for literal in _split(literals)]


_RULES: Final[tuple[_Cue, ...]] = (
    # patterns/pre_negation_uncertainty.txt: uncertainty that wins over negation.
    *_cues(
        "cannot exclude | can not exclude | can't exclude | cannot entirely exclude | does not exclude"
        " | cannot rule out | can not rule out | can't rule out | no evidence to rule out | difficult to exclude"
        " | no new | no new area of",
        _PRE_UNC,
        "FORWARD",
        terminated_by=[_NEG, _UNC],
    ),
    *_cues(
        "cannot be excluded | can not be excluded | can't be excluded | cannot be entirely excluded"
        " | cannot be completely excluded | not excluded | not entirely excluded | not completely excluded"
        " | not be excluded | cannot be ruled out | not ruled out",
        _PRE_UNC,
        "BACKWARD",
        max_scope=12,
        terminated_by=[_NEG, _UNC],
    ),
    # patterns/negation.txt.
    *_cues(
        "no | not | without | free of | negative for | clear of | cleared of | clearing of | absence of"
        " | rather than | resolution of | removal of | disappearance of | drainage of | history of | rule out"
        " | to exclude | exclude | no evidence of | no evidence for | without evidence of | no definite | no obvious"
        " | no focal | no acute | no significant | no sign of | no signs of | no suggestion of"
        " | without suggestion of | no suspicion of | no concern for | nothing to suggest | no findings suggestive of"
        " | no longer | previously visualized | previously demonstrated | previously seen | never | neither | nor",
        _NEG,
        "FORWARD",
        terminated_by=[_UNC, _PRE_UNC],
    ),
    *_cues("resolved | cleared | removed | absent", _NEG, "BIDIRECTIONAL", max_scope=6),
    *_cues(
        "has resolved | have resolved | has cleared | have cleared | has been removed | have been removed"
        " | is absent | are absent | not seen | not identified | not present | not demonstrated | not visualized"
        " | not evident | not detected | not noted | no longer seen | no longer visualized | no longer present"
        " | no longer evident | no longer identified | is gone | are gone | ruled out | was previously visualized"
        " | were previously visualized | was previously demonstrated | were previously demonstrated"
        " | not definitely seen | not definitely visualized | not definitely identified | may not be demonstrated"
        " | may not be seen | may not be visible | may not be detected | may not be apparent",
        _NEG,
        "BACKWARD",
        max_scope=12,
        terminated_by=[_UNC, _PRE_UNC],
    ),
    # "normal heart size", "heart size is normal", "within normal limits", "not enlarged".
    *_cues(
        "normal | unremarkable | within normal limits | within the normal limits | within normal range"
        " | within the normal range | within limits of normal | normal limits | upper limits of normal"
        " | upper limit of normal | upper normal limits | upper normal | top normal | high normal | normal size"
        " | normal in size | of normal size | normal in appearance | not enlarged | not significantly enlarged"
        " | not widened",
        _NORMAL,
        "BIDIRECTIONAL",
        max_scope=12,
        terminated_by=[_UNC, _PRE_UNC, _ENLARGED],
    ),
    # patterns/post_negation_uncertainty.txt: hedges.
    *_cues(
        "may | might | could | would | possible | possibly | probable | probably | presumably | presumed"
        " | questionable | question of | suspect | suspicious for | suspicious of | suspicion for | suspicion of"
        " | concern for | concerning for | worrisome for | suggestive of | suggesting | suggests | suggest"
        " | suggestion of | equivocal | indeterminate | consider | considered | favor | favored | compatible with"
        " | may represent | could represent | may reflect | could reflect | may be due to | secondary to"
        " | correlate clinically for | clinical correlation for",
        _UNC,
        "FORWARD",
        max_scope=10,
        terminated_by=[_NEG, _PRE_UNC],
    ),
    # "differential diagnosis includes A, B, C": every item of the list.
    *_cues(
        "differential diagnosis includes | differential diagnosis including | differential diagnosis is"
        " | differential diagnosis | differential includes | differential including"
        " | differential considerations include | differential considerations including",
        _UNC,
        "FORWARD",
        max_scope=20,
        terminated_by=[_NEG, _PRE_UNC],
    ),
    *_cues(
        "likely | most likely | less likely | unlikely | suspected | borderline | obscured | obscuring | obscures"
        " | not well visualized | not well seen | not well evaluated | not clearly seen | poorly evaluated"
        " | incompletely evaluated | cannot be assessed | cannot be characterized",
        _UNC,
        "BIDIRECTIONAL",
        max_scope=8,
        terminated_by=[_NEG, _PRE_UNC],
    ),
    *_cues(
        "may be present | could be present | is possible | are possible | is likely | are likely | is suspected"
        " | are suspected | is questioned | not appreciated | could appear | may appear | is not entirely clear",
        _UNC,
        "BACKWARD",
        max_scope=6,
        terminated_by=[_NEG, _PRE_UNC],
    ),
    # "atelectasis or consolidation", "effusion versus thickening": uncertain alternatives; they do not end a
    # negation's scope ("no edema or pneumonia" stays negative).
    *_cues("versus | vs | or", _ALTERNATIVE, "BIDIRECTIONAL", max_scope=4),
    # Anatomy-only mentions: stability (uncertain only with stable_anatomy_uncertain) and enlargement.
    *_cues(
        "stable | unchanged | not changed | no change | no significant change | no interval change | similar"
        " | grossly stable",
        _STABLE,
        "BIDIRECTIONAL",
        max_scope=6,
        allowed=_ANATOMY_TYPES,
    ),
    *_cues(
        "enlarged | enlargement | enlarging | large | larger | increased | increase | increasing | prominent"
        " | prominence | widened | widening | wide | cardiomegaly | globular",
        _ENLARGED,
        "BIDIRECTIONAL",
        max_scope=7,
        allowed=_ANATOMY_TYPES,
    ),
    # "calcified right lower lobe nodule": the reference's "calcified nodul" unmention in any word order.
    *_cues("calcified | calcific", _CALCIFIED, "BIDIRECTIONAL", max_scope=12, allowed=[_span_label("Lung Lesion")]),
    # A finding explained as an artifact is no finding ("densities ... consistent with nipple shadows"); devices
    # are exempt ("valve artifact" is a valve).
    *_cues(
        "artifact | artifacts | artifactual | nipple shadow | nipple shadows | summation of structures"
        " | superimposition | superimposed structures | overlapping structures | projectional",
        _NEG,
        "BACKWARD",
        max_scope=14,
        allowed=_FINDING_TYPES,
    ),
    # Conditional and requested-evaluation mentions assert nothing.
    *_cues(
        "if | evaluate for | evaluation for | evaluation of | to evaluate | assess for | in case of | detecting"
        " | detection of | to detect",
        _HYPOTHETICAL,
        "FORWARD",
        max_scope=8,
    ),
    # Phrases that contain a cue but are none ("no opacity to suggest pneumonia" stays negative: the reference's
    # "no NN to suggest XXX" rule; "consistent with" is no clause break).
    *_cues(
        "gram negative | no further | without change | normal variant | to suggest | to explain | to indicate"
        " | to represent | non calcified | noncalcified | uncalcified | not calcified | not definitely calcified"
        " | not definitively calcified | consistent with",
        _PSEUDO,
        "PSEUDO",
    ),
    # Clause boundaries end every modifier's scope.
    *_cues(
        "but | however | although | though | which | with | except | apart from | aside from | other than | while"
        " | whereas | there is | there are | due to | and there | ; | :",
        _TERMINATE,
        "TERMINATE",
    ),
)


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
