"""De-identification (HIPAA Safe Harbor identifiers) of free text, stored records and raw FHIR resources.

* :class:`Deidentifier` — the protocol (``detect``, ``deidentify``); :class:`PresidioDeidentifier` — the built-in,
  presidio-analyzer on a blank spaCy pipeline with lexicon/pattern recognizers (fully offline).
* Modes (:data:`DeidMode`): ``tag`` (``[NAME]``...), ``surrogate`` (consistent fake values per patient, dates
  shifted), ``shift`` (dates shifted, the rest tagged). Ages over 89 become "90+".
* :func:`deid_key` — the secret (``SAGE_DEID_KEY`` or ``<store>/deid.key``, 0600).
* :func:`deidentify_record` / :func:`deidentify_fhir` — structured rules + the detector on free text.
* :mod:`sage_health.data.governance.deid_eval` — the evaluation harness (``sage-health eval deid``).
"""

from sage_health.data.governance.deid.engine import AGE_LIMIT, PresidioDeidentifier, build_analyzer
from sage_health.data.governance.deid.lexicon import MEDICAL_EPONYMS, eponym_spans
from sage_health.data.governance.deid.records import RecordDeidentifier, deidentify_fhir, deidentify_record
from sage_health.data.governance.deid.surrogate import deid_key, key_from_file, shift_date_text
from sage_health.data.governance.deid.types import (
    DEID_MODES,
    ENTITY_LABELS,
    DeidentificationError,
    Deidentifier,
    DeidMode,
    DeidResult,
    EntityLabel,
    PhiSpan,
    Replacement,
)

__all__ = [
    "AGE_LIMIT",
    "DEID_MODES",
    "ENTITY_LABELS",
    "MEDICAL_EPONYMS",
    "DeidMode",
    "DeidResult",
    "DeidentificationError",
    "Deidentifier",
    "EntityLabel",
    "PhiSpan",
    "PresidioDeidentifier",
    "RecordDeidentifier",
    "Replacement",
    "build_analyzer",
    "deid_key",
    "deidentify_fhir",
    "deidentify_record",
    "eponym_spans",
    "key_from_file",
    "shift_date_text",
]
