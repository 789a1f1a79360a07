"""Mappers from validated R4B resources to canonical records: Patient, Observation and ImagingStudy, and the
generic :class:`~sage_health.data.schema.FhirResource` with a brief readable summary for every other type.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance as FhirAllergyIntolerance
from fhir.resources.R4B.careplan import CarePlan as FhirCarePlan
from fhir.resources.R4B.claim import Claim as FhirClaim
from fhir.resources.R4B.codeableconcept import CodeableConcept as FhirCodeableConcept
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit as FhirExplanationOfBenefit
from fhir.resources.R4B.goal import Goal as FhirGoal
from fhir.resources.R4B.imagingstudy import ImagingStudy as FhirImagingStudy
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.organization import Organization as FhirOrganization
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.period import Period as FhirPeriod
from fhir.resources.R4B.practitioner import Practitioner as FhirPractitioner
from fhir.resources.R4B.reference import Reference as FhirReference
from fhir.resources.R4B.resource import Resource as FhirResourceModel

from sage_health.data.ingest.base import clean
from sage_health.data.ingest.fhir_bundle import _Bundle, _Entry
from sage_health.data.ingest.fhir_values import (
    _MAX_LIST,
    _coding,
    _concept,
    _concepts,
    _end,
    _first,
    _first_code,
    _human_name,
    _label,
    _name_text,
    _quantity,
    _start,
    _unique,
    _us_core_text,
    _when,
)
from sage_health.data.schema import Coding, Component, FhirResource, ImagingStudy, Observation, Patient, Quantity

# http://terminology.hl7.org/CodeSystem/v3-MaritalStatus
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
