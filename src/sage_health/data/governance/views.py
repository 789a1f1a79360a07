"""The de-identified view of stored records and search hits (what researchers and admins receive).

A :class:`DeidentifiedView` applies, to every record or hit that leaves the governed store:

- the de-identifier to free text and to structured fields (names, addresses, telecom, identifiers, dates shifted
  by the patient's secret offset), via the two functions it is built with;
- **pseudonymous patient ids**: ``pseudo-<HMAC-SHA256(key, patient id)[:20]>`` — stable for one key, so a
  researcher can group a patient's records and filter by the pseudonym, but not derive the real id;
- provenance scrubbing: source file paths can carry identities (Synthea names its files after the patient), so
  the path becomes ``<source>:<file sha256 prefix>``; content hashes, transforms and run ids are kept, and a
  ``deidentify`` transform is appended.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from sage_health.core.config import Settings
from sage_health.core.provenance import Provenance, Transform
from sage_health.data.schema import AnyRecord, RecordBase
from sage_health.data.store.protocol import PatientIndex, SearchHit, StoredRecord

PSEUDONYM_PREFIX = "pseudo-"
VIEW_VERSION = "1"

TextFn = Callable[[str, str | None], str]
"""(text, real patient id or None) -> de-identified text."""
RecordFn = Callable[[RecordBase, str | None], RecordBase]
"""(record, real patient id or None) -> de-identified copy of the record (structured fields by rule)."""


def pseudonym(key: bytes, patient_id: str) -> str:
    return PSEUDONYM_PREFIX + hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


_PATIENT_ID = re.compile(r"^[^/\s]+/Patient/[^/\s]+$")


def is_patient_ref(value: str, known: Collection[str] = ()) -> bool:
    """Whether ``value`` names a patient by their real id: one of ``known`` (the store's patient ids), or shaped
    like the id of a Patient record (``<source>/Patient/<id>``), so that erased patients are recognised too."""
    return value in known or bool(_PATIENT_ID.match(value))


@dataclass
class DeidentifiedView:
    key: bytes
    text_fn: TextFn
    record_fn: RecordFn
    method: str = "deid"
    """Names the de-identification method in the provenance transform (e.g. ``presidio-tag``)."""
    _reverse: dict[str, str] = field(default_factory=dict, repr=False)

    def patient(self, patient_id: str | None) -> str | None:
        return pseudonym(self.key, patient_id) if patient_id else None

    def _id(self, record_id: str, patient_id: str | None) -> str:
        # a Patient record's id *is* the patient id
        return self.patient(record_id) or record_id if patient_id and record_id == patient_id else record_id

    def _provenance(self, prov: Provenance, source: str, patient_id: str | None) -> Provenance:
        scrubbed = prov.model_copy(
            update={
                "source_file": f"{source}:{(prov.source_sha256 or '')[:12]}" if prov.source_file else None,
                "derived_from": tuple(self._id(d, patient_id) for d in prov.derived_from),
            }
        )
        return scrubbed.with_transform(Transform(name=f"view:{self.method}", version=VIEW_VERSION))

    def record(self, stored: StoredRecord) -> StoredRecord:
        rec = stored.record
        real_patient = rec.patient_id
        clean = self.record_fn(rec, real_patient)
        update = {
            "id": self._id(rec.id, real_patient),
            "patient_id": self.patient(real_patient),
            "provenance": self._provenance(
                clean.provenance.model_copy(update={"source_file": rec.provenance.source_file}),
                rec.source,
                real_patient,
            ),
        }
        new: AnyRecord = clean.model_copy(update=update)  # type: ignore[assignment]  # same concrete type
        return stored.model_copy(update={"record": new})

    def hit(self, hit: SearchHit) -> SearchHit:
        real_patient = hit.patient_id
        return hit.model_copy(
            update={
                "record_id": self._id(hit.record_id, real_patient),
                "patient_id": self.patient(real_patient),
                "text": self.text_fn(hit.text, real_patient),
                "provenance": self._provenance(hit.provenance, hit.source, real_patient),
            }
        )

    def text(self, text: str, patient_id: str | None) -> str:
        return self.text_fn(text, patient_id)

    def resolve_patient(self, patient_ref: str, store: PatientIndex) -> str | None:
        if not patient_ref.startswith(PSEUDONYM_PREFIX):
            return None
        if patient_ref not in self._reverse:
            for patient_id in store.patient_ids():
                self._reverse[pseudonym(self.key, patient_id)] = patient_id
        return self._reverse.get(patient_ref)


def build_view(settings: Settings) -> DeidentifiedView:
    """The store's de-identified view: the presidio-based de-identifier (tag mode for free text; structured
    fields by rule, dates shifted per patient) keyed by ``SAGE_DEID_KEY`` or ``<store>/deid.key``. The analyzer
    loads lazily on the first text."""
    from sage_health.data.governance.deid import PresidioDeidentifier, deid_key, deidentify_record

    key = deid_key(settings)
    deidentifier = PresidioDeidentifier(key)

    def text_fn(text: str, patient_id: str | None) -> str:
        return deidentifier.deidentify(text, patient_key=patient_id, mode="tag").text

    def record_fn(record: RecordBase, patient_id: str | None) -> RecordBase:
        # structured fields by rule, free text by the detector, dates shifted by the patient's offset; the view
        # then sets its own ids (real record ids stay usable handles; only patient ids become pseudonyms)
        clean = deidentify_record(record, deidentifier, patient_key=patient_id, mode="tag")  # type: ignore[arg-type]
        return clean.model_copy(update={"id": record.id})

    return DeidentifiedView(key=key, text_fn=text_fn, record_fn=record_fn, method="presidio-tag")
