"""FHIR R4 JSON: Bundles (transaction, batch, collection, searchset, ...) and single bare resources.

Every resource is validated with the ``fhir.resources`` R4B models (R4B is wire-compatible with R4 for
the resources Synthea writes) plus the required code bindings the models do not enforce (``status``,
``intent``, ``gender``). An invalid resource becomes a :class:`RecordProblem` whose reason is built
from pydantic error locations and messages only, never from input values (no PHI); the rest of the
bundle continues. A file that is not JSON, or not a FHIR resource or Bundle, is an ``IngestionError``.

Valid resources map to the canonical records (Patient, Encounter, Observation, Condition,
MedicationRequest, Procedure, Immunization, DiagnosticReport, ImagingStudy) or to a generic
:class:`~sage_health.data.schema.FhirResource` with a brief readable summary. Record ids are
``<source>/<ResourceType>/<id>`` (source ``synthea`` for resources tagged by Synthea, else ``fhir``);
``urn:uuid:`` and ``Type/id`` references are resolved inside the bundle, so every patient-linked record
carries its patient's record id in ``patient_id``, and lab panels list their resolved result values.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.allergyintolerance import AllergyIntolerance as FhirAllergyIntolerance
from fhir.resources.R4B.bundle import Bundle as FhirBundle
from fhir.resources.R4B.careplan import CarePlan as FhirCarePlan
from fhir.resources.R4B.claim import Claim as FhirClaim
from fhir.resources.R4B.codeableconcept import CodeableConcept as FhirCodeableConcept
from fhir.resources.R4B.coding import Coding as FhirCoding
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport as FhirDiagnosticReport
from fhir.resources.R4B.dosage import Dosage as FhirDosage
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit as FhirExplanationOfBenefit
from fhir.resources.R4B.extension import Extension as FhirExtension
from fhir.resources.R4B.goal import Goal as FhirGoal
from fhir.resources.R4B.humanname import HumanName as FhirHumanName
from fhir.resources.R4B.imagingstudy import ImagingStudy as FhirImagingStudy
from fhir.resources.R4B.immunization import Immunization as FhirImmunization
from fhir.resources.R4B.medication import Medication as FhirMedication
from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.organization import Organization as FhirOrganization
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.period import Period as FhirPeriod
from fhir.resources.R4B.practitioner import Practitioner as FhirPractitioner
from fhir.resources.R4B.procedure import Procedure as FhirProcedure
from fhir.resources.R4B.quantity import Quantity as FhirQuantity
from fhir.resources.R4B.reference import Reference as FhirReference
from fhir.resources.R4B.resource import Resource as FhirResourceModel

from sage_health.core.errors import IngestionError
from sage_health.data.ingest.base import IngestContext, RecordProblem, clean, load_json, safe_id
from sage_health.data.schema import (
    Coding,
    Component,
    Condition,
    DiagnosticReport,
    Encounter,
    FhirResource,
    ImagingStudy,
    Immunization,
    MedicationRequest,
    Observation,
    Patient,
    Procedure,
    Quantity,
    RecordBase,
    as_utc,
)

_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_ERRORS = 5
_MAX_LIST = 5

# Required bindings the fhir.resources models leave unchecked (FHIR R4/R4B value sets).
_REQUIRED_CODES: dict[tuple[str, str], frozenset[str]] = {
    ("Observation", "status"): frozenset(
        {
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("Encounter", "status"): frozenset(
        {
            "planned",
            "arrived",
            "triaged",
            "in-progress",
            "onleave",
            "finished",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("MedicationRequest", "status"): frozenset(
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"}
    ),
    ("MedicationRequest", "intent"): frozenset(
        {
            "proposal",
            "plan",
            "order",
            "original-order",
            "reflex-order",
            "filler-order",
            "instance-order",
            "option",
        }
    ),
    ("Procedure", "status"): frozenset(
        {
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        }
    ),
    ("Immunization", "status"): frozenset({"completed", "entered-in-error", "not-done"}),
    ("DiagnosticReport", "status"): frozenset(
        {
            "registered",
            "partial",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "appended",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    ),
    ("ImagingStudy", "status"): frozenset({"registered", "available", "cancelled", "entered-in-error", "unknown"}),
    ("Patient", "gender"): frozenset({"male", "female", "other", "unknown"}),
}

# http://terminology.hl7.org/CodeSystem/v3-ActCode (encounter class) and v3-MaritalStatus
_ENCOUNTER_CLASS = {
    "AMB": "ambulatory",
    "EMER": "emergency",
    "FLD": "field",
    "HH": "home health",
    "IMP": "inpatient",
    "ACUTE": "inpatient acute",
    "NONAC": "inpatient non-acute",
    "OBSENC": "observation",
    "PRENC": "pre-admission",
    "SS": "short stay",
    "VR": "virtual",
}
_MARITAL_STATUS = {
    "A": "annulled",
    "D": "divorced",
    "I": "interlocutory",
    "L": "legally separated",
    "M": "married",
    "P": "polygamous",
    "S": "never married",
    "T": "domestic partner",
    "U": "unmarried",
    "W": "widowed",
    "UNK": "unknown",
}


# ---------------------------------------------------------------------- validation helpers


@lru_cache(maxsize=256)
def resource_model(type_name: str) -> type[FhirResourceModel] | None:
    """The R4B model class of a FHIR resource type, or None when ``type_name`` is no resource type."""
    if not _TYPE_NAME.match(type_name):
        return None
    try:
        cls = get_fhir_model_class(type_name)
    except ValueError:
        return None
    return cls if isinstance(cls, type) and issubclass(cls, FhirResourceModel) else None


def describe_errors(exc: pydantic.ValidationError, raw: Any = None) -> str:
    """A PHI-free summary of a pydantic error: element paths and messages, never input values.

    Errors are read with ``include_input=False``; as a second guard, any string value of ``raw`` (the
    rejected JSON) that a message happens to quote is blanked out.
    """
    values = sorted(_string_values(raw), key=len, reverse=True) if raw is not None else []
    parts: list[str] = []
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    for err in errors[:_MAX_ERRORS]:
        loc = ".".join(
            f"[{p}]" if isinstance(p, int) else (p if _FIELD_NAME.match(p) else "?") for p in err["loc"]
        ).replace(".[", "[")
        msg = err["msg"].splitlines()[0].strip()
        for value in values:
            if value in msg:
                msg = msg.replace(value, "<value>")
        parts.append(f"{loc or '(resource)'}: {msg}")
    more = len(errors) - _MAX_ERRORS
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _string_values(obj: Any) -> set[str]:
    """String leaves of a JSON value (at least 4 characters; resourceType names excluded)."""
    out: set[str] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(v for k, v in item.items() if k != "resourceType")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and len(item.strip()) >= 4:
            out.add(item.strip())
    return out


def _nested_resources(resource: dict[str, Any], path: str) -> Iterator[tuple[str, Any]]:
    """(JSON path, value) of every element that holds a nested resource: ``contained``,
    ``Bundle.entry.resource`` / ``.response.outcome`` and ``Parameters.parameter[.part].resource``."""
    contained = resource.get("contained")
    if isinstance(contained, list):
        for i, item in enumerate(contained):
            yield f"{path}contained[{i}]", item
    kind = resource.get("resourceType")
    entries = resource.get("entry") if kind == "Bundle" else None
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        if isinstance(entry, dict):
            if "resource" in entry:
                yield f"{path}entry[{i}].resource", entry["resource"]
            response = entry.get("response")
            if isinstance(response, dict) and "outcome" in response:
                yield f"{path}entry[{i}].response.outcome", response["outcome"]
    stack: list[tuple[str, Any]] = [(f"{path}parameter", resource.get("parameter"))] if kind == "Parameters" else []
    while stack:
        where, params = stack.pop()
        for i, param in enumerate(params if isinstance(params, list) else []):
            if isinstance(param, dict):
                if "resource" in param:
                    yield f"{where}[{i}].resource", param["resource"]
                stack.append((f"{where}[{i}].part", param.get("part")))


def _unknown_nested_type(resource: dict[str, Any], path: str = "") -> str | None:
    """JSON path of the first nested resource whose resourceType is not an R4B resource type, or None.

    fhir.resources raises a bare KeyError (not a ValidationError) for those, so they are found first.
    """
    for where, value in _nested_resources(resource, path):
        if not isinstance(value, dict) or "resourceType" not in value:
            continue  # the model validation reports these
        kind = value["resourceType"]
        if not isinstance(kind, str) or resource_model(kind) is None:
            return where
        found = _unknown_nested_type(value, f"{where}.")
        if found is not None:
            return found
    return None


def _binding_problems(fhir_type: str, model: FhirResourceModel) -> list[str]:
    out: list[str] = []
    for (rtype, element), allowed in _REQUIRED_CODES.items():
        if rtype != fhir_type:
            continue
        value = getattr(model, element, None)
        if isinstance(value, str) and value not in allowed:
            out.append(f"{element}: code is not in the required value set (allowed: {', '.join(sorted(allowed))})")
    return out


# ---------------------------------------------------------------------- small converters


def _when(value: object) -> datetime | None:
    """A FHIR date/dateTime/instant as aware UTC; partial dates ('2019', '2019-03') become their first day."""
    if isinstance(value, datetime | date):
        return as_utc(value)
    if isinstance(value, str):
        match = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", value)
        if match:
            return as_utc(date(int(match.group(1)), int(match.group(2) or 1), 1))
    return None


def _start(period: FhirPeriod | None) -> datetime | None:
    return _when(period.start) if period is not None else None


def _end(period: FhirPeriod | None) -> datetime | None:
    return _when(period.end) if period is not None else None


def _first(*values: datetime | None) -> datetime | None:
    return next((v for v in values if v is not None), None)


def _coding(value: FhirCoding | None) -> Coding | None:
    if value is None:
        return None
    return Coding(system=value.system, code=value.code, display=clean(value.display))


def _concept(cc: FhirCodeableConcept | None) -> Coding | None:
    """A CodeableConcept as one Coding: its first coding, labelled by the coding's display or the text."""
    if cc is None:
        return None
    text = clean(cc.text)
    first = cc.coding[0] if cc.coding else None
    if first is None:
        return Coding(display=text) if text else None
    return Coding(system=first.system, code=first.code, display=clean(first.display) or text)


def _label(cc: FhirCodeableConcept | None) -> str | None:
    coding = _concept(cc)
    return coding.label() if coding else None


def _concepts(ccs: Sequence[FhirCodeableConcept] | None) -> list[Coding]:
    return [c for c in (_concept(cc) for cc in ccs or []) if c is not None]


def _first_code(ccs: Sequence[FhirCodeableConcept] | None) -> str | None:
    for cc in ccs or []:
        coding = _concept(cc)
        if coding is not None:
            return coding.code or coding.display
    return None


def _number(value: Decimal | float | int | None) -> float | None:
    return float(value) if value is not None else None


def _quantity(q: FhirQuantity | None) -> Quantity | None:
    if q is None:
        return None
    return Quantity(value=_number(q.value), unit=clean(q.unit) or clean(q.code))


def _unique(labels: Sequence[str | None], limit: int = _MAX_LIST) -> str:
    seen: list[str] = []
    for label in labels:
        if label and label not in seen:
            seen.append(label)
    text = "; ".join(seen[:limit])
    if len(seen) > limit:
        text += f"; and {len(seen) - limit} more"
    return text


def _human_name(names: Sequence[FhirHumanName] | None) -> FhirHumanName | None:
    if not names:
        return None
    return next((n for n in names if n.use == "official"), names[0])


def _name_text(name: FhirHumanName | None) -> str:
    if name is None:
        return ""
    if name.text:
        return name.text.strip()
    return " ".join(p for p in [*(name.prefix or []), *(name.given or []), name.family or ""] if p).strip()


def _us_core_text(extensions: Sequence[FhirExtension] | None, suffix: str) -> str | None:
    """Text of a US Core race/ethnicity extension (its 'text' part, else its first OMB category)."""
    for ext in extensions or []:
        if not (ext.url or "").endswith(suffix):
            continue
        parts = ext.extension or []
        text = next((clean(p.valueString) for p in parts if p.url == "text" and clean(p.valueString)), None)
        if text:
            return text
        coding = next((_coding(p.valueCoding) for p in parts if p.url == "ombCategory" and p.valueCoding), None)
        if coding is not None:
            return coding.label()
    return None


def _dosage(dosages: Sequence[FhirDosage] | None) -> str | None:
    if not dosages:
        return None
    d = dosages[0]
    if clean(d.text):
        return clean(d.text)
    parts: list[str] = []
    for dr in d.doseAndRate or []:
        dose = _quantity(dr.doseQuantity)
        if dose is not None and dose.render():
            parts.append(dose.render())
            break
    repeat = d.timing.repeat if d.timing is not None else None
    if repeat is not None and repeat.frequency is not None and repeat.period is not None and repeat.periodUnit:
        parts.append(f"{repeat.frequency} per {float(repeat.period):g} {repeat.periodUnit}")
    if d.asNeededBoolean:
        parts.append("as needed")
    return ", ".join(parts) or None


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


# ---------------------------------------------------------------------- the connector


class FhirBundleConnector:
    """FHIR R4 JSON Bundles (any type) and bare resources, validated with the R4B models."""

    name = "fhir-bundle"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return path.name.endswith((".json", ".json.gz")) and b'"resourceType"' in head

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        data = load_json(path)
        items = self._entries(data, path, ctx)
        bundle = _Bundle([i for i in items if isinstance(i, _Entry)])
        checked: list[_Entry | RecordProblem] = []
        seen: dict[str, str] = {}
        for item in items:
            if isinstance(item, RecordProblem):
                checked.append(item)
                continue
            outcome = self._validate(item)
            if isinstance(outcome, RecordProblem):
                checked.append(outcome)
                continue
            rid = item.record_id
            assert rid is not None  # noqa: S101 - _validate rejects entries without a record id
            if rid in seen:
                checked.append(
                    RecordProblem(
                        locator=item.where,
                        reason=f"duplicate resource: same Type/id as {seen[rid]}; the first one is kept",
                    )
                )
                continue
            seen[rid] = item.locator
            bundle.models[item.position] = outcome
            checked.append(item)
        for item in checked:
            if isinstance(item, RecordProblem):
                yield item
                continue
            try:
                record = self._map(item, bundle)
            except pydantic.ValidationError as exc:
                yield RecordProblem(
                    locator=item.where, reason=f"cannot map to the canonical schema: {describe_errors(exc)}"
                )
                continue
            yield record.model_copy(update={"provenance": ctx.provenance(path, file_sha256, item.locator, self)})

    # ------------------------------------------------------------------ reading

    def _entries(self, data: Any, path: Path, ctx: IngestContext) -> list[_Entry | RecordProblem]:
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise IngestionError(
                "not a FHIR resource: expected a JSON object with a 'resourceType' (a Bundle or a resource)",
                path=str(path),
            )
        if data["resourceType"] != "Bundle":
            return [self._entry(0, "$", data, None, ctx)]
        shell = {k: v for k, v in data.items() if k != "entry"}
        try:
            FhirBundle.model_validate(shell)
        except pydantic.ValidationError as exc:
            raise IngestionError(f"invalid FHIR Bundle: {describe_errors(exc, shell)}", path=str(path)) from exc
        raw_entries = data.get("entry")
        if raw_entries is None:
            raw_entries = []
        if not isinstance(raw_entries, list):
            raise IngestionError("invalid FHIR Bundle: 'entry' must be a list", path=str(path))
        out: list[_Entry | RecordProblem] = []
        for i, raw in enumerate(raw_entries):
            resource = raw.get("resource") if isinstance(raw, dict) else None
            if not isinstance(resource, dict):
                out.append(
                    RecordProblem(
                        locator=f"$.entry[{i}]",
                        reason="entry has no resource object (e.g. a DELETE or a response); nothing to ingest",
                    )
                )
                continue
            full_url = raw.get("fullUrl")
            out.append(self._entry(i, f"$.entry[{i}].resource", resource, full_url, ctx))
        return out

    @staticmethod
    def _entry(position: int, locator: str, raw: dict[str, Any], full_url: Any, ctx: IngestContext) -> _Entry:
        kind = raw.get("resourceType")
        fhir_type = kind if isinstance(kind, str) else None
        url = full_url if isinstance(full_url, str) and full_url.strip() else None
        rid = raw.get("id")
        local_id = rid.strip() if isinstance(rid, str) and rid.strip() else _id_from_url(url)
        source = ctx.source("synthea" if _is_synthea(raw) else "fhir")
        record_id = (
            f"{source}/{fhir_type}/{safe_id(local_id)}"
            if fhir_type and local_id and _TYPE_NAME.match(fhir_type)
            else None
        )
        return _Entry(
            position=position,
            locator=locator,
            raw=raw,
            fhir_type=fhir_type,
            local_id=local_id,
            source=source,
            full_url=url,
            record_id=record_id,
        )

    @staticmethod
    def _validate(entry: _Entry) -> FhirResourceModel | RecordProblem:
        if entry.fhir_type is None:
            return RecordProblem(locator=entry.where, reason="resource has no 'resourceType'")
        cls = resource_model(entry.fhir_type)
        if cls is None:
            return RecordProblem(locator=entry.where, reason="unknown resourceType (not a FHIR R4B resource type)")
        if entry.record_id is None:
            return RecordProblem(
                locator=entry.where,
                reason="resource has no 'id' and its entry no 'fullUrl'; no stable record id",
            )
        nested = _unknown_nested_type(entry.raw)
        if nested is not None:
            return RecordProblem(
                locator=entry.where,
                reason=f"invalid FHIR {entry.fhir_type}: {nested}: unknown nested resourceType",
            )
        try:
            model = cls.model_validate(entry.raw)
        except pydantic.ValidationError as exc:
            return RecordProblem(
                locator=entry.where, reason=f"invalid FHIR {entry.fhir_type}: {describe_errors(exc, entry.raw)}"
            )
        bad = _binding_problems(entry.fhir_type, model)
        if bad:
            return RecordProblem(locator=entry.where, reason=f"invalid FHIR {entry.fhir_type}: {'; '.join(bad)}")
        return model

    # ------------------------------------------------------------------ mapping

    def _map(self, entry: _Entry, bundle: _Bundle) -> RecordBase:
        model = bundle.models[entry.position]
        rid = entry.record_id
        assert rid is not None  # noqa: S101 - checked in _validate
        common: dict[str, Any] = {"id": rid, "source": entry.source}
        src = entry.source
        if isinstance(model, FhirPatient):
            return _patient(model, common | {"patient_id": rid})
        if isinstance(model, FhirObservation):
            return _observation(model, common | {"patient_id": bundle.patient_id(model.subject, src)})
        if isinstance(model, FhirEncounter):
            return Encounter(
                **common,
                patient_id=bundle.patient_id(model.subject, src),
                effective=_start(model.period),
                end=_end(model.period),
                status=model.status,
                encounter_class=_ENCOUNTER_CLASS.get(model.class_fhir.code or "")
                or (_coding(model.class_fhir) or Coding()).label(),
                types=_concepts(model.type),
                reasons=bundle.reason_labels(model.reasonCode, model.reasonReference),
            )
        if isinstance(model, FhirCondition):
            return Condition(
                **common,
                patient_id=bundle.patient_id(model.subject, src),
                effective=_first(_when(model.onsetDateTime), _start(model.onsetPeriod), _when(model.recordedDate)),
                code=_concept(model.code) or Coding(),
                clinical_status=_first_code([model.clinicalStatus] if model.clinicalStatus else None),
                verification_status=_first_code([model.verificationStatus] if model.verificationStatus else None),
                abatement=_first(_when(model.abatementDateTime), _end(model.abatementPeriod)),
            )
        if isinstance(model, FhirMedicationRequest):
            medication = _concept(model.medicationCodeableConcept)
            if medication is None:
                target = bundle.model(model.medicationReference)
                medication = _concept(target.code) if isinstance(target, FhirMedication) else None
            if medication is None and model.medicationReference is not None:
                medication = Coding(display=clean(model.medicationReference.display))
            return MedicationRequest(
                **common,
                patient_id=bundle.patient_id(model.subject, src),
                effective=_when(model.authoredOn),
                medication=medication or Coding(),
                status=model.status,
                intent=model.intent,
                dosage=_dosage(model.dosageInstruction),
                reasons=bundle.reason_labels(model.reasonCode, model.reasonReference),
            )
        if isinstance(model, FhirProcedure):
            return Procedure(
                **common,
                patient_id=bundle.patient_id(model.subject, src),
                effective=_first(_when(model.performedDateTime), _start(model.performedPeriod)),
                code=_concept(model.code) or Coding(),
                status=model.status,
                reasons=bundle.reason_labels(model.reasonCode, model.reasonReference),
            )
        if isinstance(model, FhirImmunization):
            return Immunization(
                **common,
                patient_id=bundle.patient_id(model.patient, src),
                effective=_first(_when(model.occurrenceDateTime), _when(model.recorded)),
                vaccine=_concept(model.vaccineCode) or Coding(),
                status=model.status,
            )
        if isinstance(model, FhirDiagnosticReport):
            return DiagnosticReport(
                **common,
                patient_id=bundle.patient_id(model.subject, src),
                effective=_first(_when(model.effectiveDateTime), _start(model.effectivePeriod), _when(model.issued)),
                status=model.status,
                category=_first_code(model.category),
                code=_concept(model.code),
                conclusion=clean(model.conclusion),
                results=self._result_lines(model.result, bundle),
            )
        if isinstance(model, FhirImagingStudy):
            return _imaging_study(model, common | {"patient_id": bundle.patient_id(model.subject, src)})
        return _generic(model, entry, bundle, common)

    def _result_lines(self, refs: Sequence[FhirReference] | None, bundle: _Bundle) -> list[str]:
        """Each result rendered from the Observation it references ('Cholesterol 180 mg/dL')."""
        lines: list[str] = []
        for ref in refs or []:
            entry = bundle.resolve(ref)
            obs: Observation | None = None
            if entry is not None and entry.position in bundle.models:
                if entry.position not in bundle.observations:
                    target = bundle.models[entry.position]
                    mapped: Observation | None = None
                    if isinstance(target, FhirObservation):
                        try:
                            mapped = _observation(target, {"id": entry.record_id, "source": entry.source})
                        except pydantic.ValidationError:
                            mapped = None  # reported when the Observation itself is mapped
                    bundle.observations[entry.position] = mapped
                obs = bundle.observations[entry.position]
            if obs is not None:
                lines.append(obs.model_copy(update={"effective": None}).render())
            elif clean(ref.display):
                lines.append(f"{clean(ref.display)} (result not available)")
        return [line for line in lines if line]


# ---------------------------------------------------------------------- per-type mappers


def _patient(model: FhirPatient, common: dict[str, Any]) -> Patient:
    name = _human_name(model.name)
    addresses: list[str] = []
    for addr in model.address or []:
        parts = [*(addr.line or []), addr.city, addr.state, addr.postalCode, addr.country]
        text = ", ".join(p.strip() for p in parts if p and p.strip())
        if text:
            addresses.append(text)
    telecom = [
        f"{t.system}: {t.value}" if t.system else t.value for t in model.telecom or [] if t.value and t.value.strip()
    ]
    identifiers = [
        Coding(system=i.system, code=i.value, display=_label(i.type)) for i in model.identifier or [] if i.value
    ]
    marital = _concept(model.maritalStatus)
    marital_text: str | None = None
    if marital is not None:
        marital_text = marital.display
        if marital.code in _MARITAL_STATUS and (not marital_text or marital_text == marital.code):
            marital_text = _MARITAL_STATUS[marital.code]
        marital_text = marital_text or marital.code
    language = next((_label(c.language) for c in model.communication or [] if c.language), None)
    return Patient(
        **common,
        given_names=[g for g in (name.given or []) if g] if name else [],
        family_name=clean(name.family) if name else None,
        prefix=clean(name.prefix[0]) if name and name.prefix else None,
        gender=model.gender,
        birth_date=model.birthDate if isinstance(model.birthDate, date) else None,
        deceased=_when(model.deceasedDateTime),
        address=addresses,
        telecom=telecom,
        identifiers=identifiers,
        marital_status=marital_text,
        language=language,
        race=_us_core_text(model.extension, "us-core-race"),
        ethnicity=_us_core_text(model.extension, "us-core-ethnicity"),
    )


def _value_text(model: FhirObservation) -> str | None:
    """Non-quantity Observation values as text."""
    if model.valueCodeableConcept is not None:
        return _label(model.valueCodeableConcept)
    if model.valueString is not None:
        return clean(model.valueString)
    if model.valueBoolean is not None:
        return "yes" if model.valueBoolean else "no"
    if model.valueDateTime is not None:
        when = _when(model.valueDateTime)
        return when.date().isoformat() if when else None
    if model.valueTime is not None:
        return str(model.valueTime)
    if model.valuePeriod is not None:
        start, end = _start(model.valuePeriod), _end(model.valuePeriod)
        return " to ".join(d.date().isoformat() for d in (start, end) if d) or None
    if model.valueRange is not None:
        low, high = _quantity(model.valueRange.low), _quantity(model.valueRange.high)
        return " to ".join(q.render() for q in (low, high) if q and q.render()) or None
    if model.valueRatio is not None:
        num, den = _quantity(model.valueRatio.numerator), _quantity(model.valueRatio.denominator)
        if num and den:
            return f"{num.render()} / {den.render()}"
    if model.dataAbsentReason is not None:
        return f"not available ({_label(model.dataAbsentReason)})"
    return None


def _observation(model: FhirObservation, common: dict[str, Any]) -> Observation:
    value: Quantity | None = None
    value_text: str | None = None
    if model.valueQuantity is not None:
        value = _quantity(model.valueQuantity)
    elif model.valueInteger is not None:
        value = Quantity(value=float(model.valueInteger))
    else:
        value_text = _value_text(model)
    components: list[Component] = []
    rendered: list[str] = []
    all_quantities = True
    for comp in model.component or []:
        name = _label(comp.code) or "component"
        quantity = _quantity(comp.valueQuantity)
        if quantity is not None and quantity.value is not None:
            components.append(Component(name=name, value=quantity))
            rendered.append(f"{name} {quantity.render()}")
            continue
        all_quantities = False
        text = _label(comp.valueCodeableConcept) or clean(comp.valueString)
        rendered.append(f"{name} {text}" if text else name)
    if not all_quantities:
        components = []
        value_text = "; ".join(p for p in [value_text, ", ".join(rendered)] if p)
    return Observation(
        **common,
        effective=_first(
            _when(model.effectiveDateTime),
            _start(model.effectivePeriod),
            _when(model.effectiveInstant),
            _when(model.issued),
        ),
        status=model.status,
        category=_first_code(model.category),
        code=_concept(model.code) or Coding(),
        value=value,
        value_text=value_text,
        components=components,
    )


def _imaging_study(model: FhirImagingStudy, common: dict[str, Any]) -> ImagingStudy:
    uid = next(
        (i.value for i in model.identifier or [] if i.system == "urn:dicom:uid" and i.value),
        None,
    )
    if uid and uid.startswith("urn:oid:"):
        uid = uid[len("urn:oid:") :]
    series = model.series or []
    modality = next((m.code for m in model.modality or [] if m.code), None) or next(
        (s.modality.code for s in series if s.modality.code), None
    )
    body_part = next(((_coding(s.bodySite) or Coding()).label() for s in series if s.bodySite), None)
    description = clean(model.description) or next((clean(s.description) for s in series if clean(s.description)), None)
    return ImagingStudy(
        **common,
        effective=_when(model.started),
        study_uid=uid,
        modality=modality,
        body_part=body_part,
        description=description or _label(model.procedureCode[0] if model.procedureCode else None),
        number_of_series=model.numberOfSeries if model.numberOfSeries is not None else (len(series) or None),
        number_of_instances=model.numberOfInstances,
    )


# ---------------------------------------------------------------------- generic resources


def _claim_like(kind: str, model: FhirClaim | FhirExplanationOfBenefit) -> tuple[str, list[Coding]]:
    type_label = _label(model.type) or ""
    state = model.outcome if isinstance(model, FhirExplanationOfBenefit) else model.status
    items = [_concept(i.productOrService) for i in model.item or []]
    text = f"{type_label} {kind}".strip() + (f" ({state})" if state else "")
    services = _unique([c.label() for c in items if c is not None])
    if services:
        text += f" for {services}"
    codes = [c for c in [_concept(model.type), *items] if c is not None]
    return text, codes[: _MAX_LIST + 1]


def _summary(model: FhirResourceModel, bundle: _Bundle) -> tuple[str, list[Coding]]:
    """A brief readable summary and the main codes of a resource without a dedicated record type."""
    if isinstance(model, FhirClaim):
        return _claim_like("claim", model)
    if isinstance(model, FhirExplanationOfBenefit):
        return _claim_like("explanation of benefit", model)
    if isinstance(model, FhirCarePlan):
        categories = _concepts(model.category)
        activities = [
            _label(a.detail.code) for a in model.activity or [] if a.detail is not None and a.detail.code is not None
        ]
        addresses = []
        for ref in model.addresses or []:
            target = bundle.model(ref)
            addresses.append(_label(target.code) if isinstance(target, FhirCondition) else clean(ref.display))
        text = _unique([c.label() for c in categories]) or "care plan"
        text += f" ({model.status})" if model.status else ""
        if activities:
            text += f"; activities: {_unique(activities)}"
        if addresses:
            text += f"; addresses: {_unique(addresses)}"
        return text, categories
    if isinstance(model, FhirGoal):
        goal = _concept(model.description)
        text = (goal.label() if goal else "goal") + (f" ({model.lifecycleStatus})" if model.lifecycleStatus else "")
        return text, [goal] if goal else []
    if isinstance(model, FhirAllergyIntolerance):
        allergy = _concept(model.code)
        details = [
            _first_code([model.clinicalStatus] if model.clinicalStatus else None),
            model.type,
            ", ".join(c for c in model.category or [] if c) or None,
            f"criticality {model.criticality}" if model.criticality else None,
        ]
        text = (allergy.label() if allergy else "allergy or intolerance") + (
            f" ({', '.join(d for d in details if d)})" if any(details) else ""
        )
        return text, [allergy] if allergy else []
    if isinstance(model, FhirOrganization):
        kinds = _concepts(model.type)
        place = next((", ".join(p for p in (a.city, a.state) if p) for a in model.address or []), "")
        text = clean(model.name) or "organization"
        if kinds:
            text += f" ({_unique([k.label() for k in kinds])})"
        if place:
            text += f", {place}"
        return text, kinds
    if isinstance(model, FhirPractitioner):
        name = _name_text(_human_name(model.name)) or "practitioner"
        quals = _concepts([q.code for q in model.qualification or []])
        return name + (f" ({_unique([q.label() for q in quals])})" if quals else ""), quals
    return _fallback_summary(model)


def _fallback_summary(model: FhirResourceModel) -> tuple[str, list[Coding]]:
    codes: list[Coding] = []
    words: list[str] = []
    for attr in ("code", "type", "category"):
        value = getattr(model, attr, None)
        items = value if isinstance(value, list) else [value]
        found = _concepts([v for v in items if isinstance(v, FhirCodeableConcept)])
        if found:
            codes.extend(found)
            words.append(_unique([c.label() for c in found]))
            break
    for attr in ("title", "name", "description"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and clean(value):
            words.append(str(clean(value)))
            break
    status = getattr(model, "status", None)
    text = "; ".join(words) or "resource"
    if isinstance(status, str):
        text += f" ({status})"
    return text, codes


_EFFECTIVE_ATTRS = (
    "effectiveDateTime",
    "occurrenceDateTime",
    "performedDateTime",
    "onsetDateTime",
    "authoredOn",
    "recordedDate",
    "recorded",
    "startDate",
    "date",
    "issued",
    "created",
)
_PERIOD_ATTRS = ("billablePeriod", "period", "effectivePeriod", "occurrencePeriod", "performedPeriod")


def _generic_effective(model: FhirResourceModel) -> datetime | None:
    for attr in _PERIOD_ATTRS:
        value = getattr(model, attr, None)
        if isinstance(value, FhirPeriod) and _start(value) is not None:
            return _start(value)
    for attr in _EFFECTIVE_ATTRS:
        when = _when(getattr(model, attr, None))
        if when is not None:
            return when
    return None


_PATIENT_ATTRS: tuple[str, ...] = ("patient", "subject", "beneficiary")


def _generic(model: FhirResourceModel, entry: _Entry, bundle: _Bundle, common: dict[str, Any]) -> FhirResource:
    patient_id: str | None = None
    for attr in _PATIENT_ATTRS:
        ref = getattr(model, attr, None)
        if isinstance(ref, FhirReference):
            patient_id = bundle.patient_id(ref, entry.source)
            if patient_id:
                break
    summary, codes = _summary(model, bundle)
    assert entry.fhir_type is not None  # noqa: S101 - checked in _validate
    return FhirResource(
        **common,
        patient_id=patient_id,
        effective=_generic_effective(model),
        fhir_type=entry.fhir_type,
        summary=summary,
        codes=codes,
    )
