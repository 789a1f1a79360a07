"""The CheXpert labeler's rules beyond its phrase files: the vocabulary additions (extra mentions, unmentions and
abnormalities, anatomy-only phrases) and the medspaCy ConText cue rules written after its NegBio patterns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from sage_health.models.evaluation.labeler_types import NO_FINDING, OBSERVATIONS, SUPPORT_DEVICES


def _split(text: str) -> tuple[str, ...]:
    """``"a | b | c"`` -> ``("a", "b", "c")`` (keeps the long phrase tables readable)."""
    return tuple(part.strip() for part in text.split("|") if part.strip())


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
