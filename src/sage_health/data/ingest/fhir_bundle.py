"""The parse state of one FHIR file: its entries (JSON path, type, id, record id) and the reference index that
resolves ``urn:uuid:`` and ``Type/id`` references inside the bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.codeableconcept import CodeableConcept as FhirCodeableConcept
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.procedure import Procedure as FhirProcedure
from fhir.resources.R4B.reference import Reference as FhirReference
from fhir.resources.R4B.resource import Resource as FhirResourceModel

from sage_health.data.ingest.base import clean, safe_id
from sage_health.data.ingest.fhir_validation import _TYPE_NAME
from sage_health.data.ingest.fhir_values import _concept, _concepts
from sage_health.data.schema import Coding, Observation

# ---------------------------------------------------------------------- bundle entries


@dataclass(frozen=True)
class _Entry:
    position: int
    locator: str
    """JSON path of the resource: ``$.entry[i].resource`` or ``$`` for a bare resource."""
    raw: dict[str, Any]
    fhir_type: str | None
    local_id: str | None
    source: str
    full_url: str | None
    record_id: str | None
    """``<source>/<ResourceType>/<id>``; None without a usable type or id."""

    @property
    def where(self) -> str:
        """Problem locator: JSON path plus Type/id (both structural, not clinical values)."""
        kind = self.fhir_type if self.fhir_type and _TYPE_NAME.match(self.fhir_type) else "?"
        rid = safe_id(self.local_id)[:64] if self.local_id else "?"
        return f"{self.locator} ({kind}/{rid})"


def _id_from_url(full_url: str | None) -> str | None:
    if not full_url:
        return None
    for prefix in ("urn:uuid:", "urn:oid:"):
        if full_url.startswith(prefix):
            return full_url[len(prefix) :] or None
    parts = [p for p in full_url.split("/_history/")[0].split("/") if p]
    return parts[-1] if parts else None


def _is_synthea(raw: dict[str, Any]) -> bool:
    meta = raw.get("meta")
    tags = meta.get("tag") if isinstance(meta, dict) else None
    if not isinstance(tags, list):
        return False
    for tag in tags:
        code = tag.get("code") if isinstance(tag, dict) else None
        if isinstance(code, str) and code.lower().startswith("synthea"):
            return True
    return False


def _type_and_id(reference: str) -> tuple[str, str] | None:
    """('Patient', '123') from 'Patient/123', 'http://base/Patient/123' or '.../Patient/123/_history/2'."""
    parts = [p for p in reference.split("/_history/")[0].split("?")[0].split("/") if p]
    if len(parts) >= 2 and _TYPE_NAME.match(parts[-2]):
        return parts[-2], parts[-1]
    return None


class _Bundle:
    """One file's entries, their reference index and validated models (the parse state of a file)."""

    def __init__(self, entries: list[_Entry]) -> None:
        self.index: dict[str, _Entry] = {}
        for entry in entries:
            keys = [entry.full_url] if entry.full_url else []
            if entry.fhir_type and entry.local_id:
                keys.append(f"{entry.fhir_type}/{entry.local_id}")
            for key in keys:
                self.index.setdefault(key, entry)
        self.models: dict[int, FhirResourceModel] = {}
        self.observations: dict[int, Observation | None] = {}

    def resolve(self, ref: FhirReference | None) -> _Entry | None:
        if ref is None or not ref.reference or ref.reference.startswith("#"):
            return None
        text = ref.reference
        hit = self.index.get(text)
        if hit is None:
            found = _type_and_id(text)
            if found is not None:
                hit = self.index.get(f"{found[0]}/{found[1]}")
        return hit

    def model(self, ref: FhirReference | None) -> FhirResourceModel | None:
        entry = self.resolve(ref)
        return self.models.get(entry.position) if entry is not None else None

    def patient_id(self, ref: FhirReference | None, source: str) -> str | None:
        """Record id of the Patient ``ref`` points to (in the bundle, or by a ``Patient/<id>`` reference)."""
        if ref is None or not ref.reference:
            return None
        entry = self.resolve(ref)
        if entry is not None:
            return entry.record_id if entry.fhir_type == "Patient" else None
        found = _type_and_id(ref.reference)
        if found is not None and found[0] == "Patient":
            return f"{source}/Patient/{safe_id(found[1])}"
        return None

    def reason_labels(
        self, codes: Sequence[FhirCodeableConcept] | None, refs: Sequence[FhirReference] | None
    ) -> list[Coding]:
        """reasonCode plus reasonReference resolved to the referenced Condition/Observation codes."""
        out = _concepts(codes)
        for ref in refs or []:
            target = self.model(ref)
            code = target.code if isinstance(target, FhirCondition | FhirObservation | FhirProcedure) else None
            coding = _concept(code)
            if coding is None and clean(ref.display):
                coding = Coding(display=clean(ref.display))
            if coding is not None:
                out.append(coding)
        return out
