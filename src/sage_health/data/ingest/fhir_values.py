"""Small converters from ``fhir.resources`` R4B elements to canonical values: dates, codings, quantities, names,
US Core race/ethnicity text and dosages.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal

from fhir.resources.R4B.codeableconcept import CodeableConcept as FhirCodeableConcept
from fhir.resources.R4B.coding import Coding as FhirCoding
from fhir.resources.R4B.dosage import Dosage as FhirDosage
from fhir.resources.R4B.extension import Extension as FhirExtension
from fhir.resources.R4B.humanname import HumanName as FhirHumanName
from fhir.resources.R4B.period import Period as FhirPeriod
from fhir.resources.R4B.quantity import Quantity as FhirQuantity

from sage_health.data.ingest.base import clean
from sage_health.data.schema import Coding, Quantity, as_utc

_MAX_LIST = 5


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
