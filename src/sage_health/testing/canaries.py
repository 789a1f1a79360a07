"""Synthea identities as canaries: the values that must never reach a de-identified output, an error or the audit log.

For one Synthea FHIR bundle, :func:`canaries` collects the patient's name parts (with and without Synthea's numeric
suffixes), address lines, city and postal code, phone numbers and identifier values (SSN, MRN, driver's licence,
passport), the birth date in common formats, the real patient id, and the parts of the bundle's file name (Synthea
names its files ``First_Last_<uuid>.json``). :func:`leaks` reports which *kinds* of canary occur in a text (never
the values, so a failing test does not print PHI either).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any


def date_formats(value: date) -> list[str]:
    month = value.strftime("%B")
    return [
        value.isoformat(),
        f"{value.month:02d}/{value.day:02d}/{value.year}",
        f"{value.month}/{value.day}/{value.year}",
        f"{month} {value.day}, {value.year}",
        f"{value.day} {month} {value.year}",
        f"{month[:3]} {value.day}, {value.year}",
        f"{value.day:02d} {month[:3]} {value.year}",
    ]


def patient_resource(bundle: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    return resource


@dataclass(frozen=True)
class Canaries:
    """The canary values of one patient, by kind."""

    values: dict[str, list[str]] = field(default_factory=dict)

    def merged(self, other: Canaries) -> Canaries:
        kinds = set(self.values) | set(other.values)
        return Canaries({k: [*self.values.get(k, []), *other.values.get(k, [])] for k in sorted(kinds)})


def canaries(resource: dict[str, Any], *, file_name: str | None = None, min_name_length: int = 3) -> Canaries:
    """The canaries of a FHIR Patient resource (and of its bundle's file name)."""
    names: list[str] = []
    for name in resource.get("name", []):
        for part in [*name.get("given", []), name.get("family", "")]:
            names += [part, re.sub(r"\d+$", "", part)]
    addresses: list[str] = []
    for addr in resource.get("address", []):
        addresses += [*addr.get("line", []), addr.get("city", ""), addr.get("postalCode", "")]
    numbers = [t["value"] for t in resource.get("telecom", [])] + [i["value"] for i in resource.get("identifier", [])]
    values: dict[str, list[str]] = {
        "name": sorted({n for n in names if len(n) >= min_name_length}),
        "address": sorted({a for a in addresses if a}),
        "number": sorted(set(numbers)),
        "birth_date": date_formats(date.fromisoformat(resource["birthDate"])),
        "patient_id": [resource["id"]],
    }
    if file_name:
        stem = Path(file_name).stem
        values["file_name"] = [stem, Path(file_name).name]
    return Canaries(values)


def leaks(text: str, found: Canaries) -> list[str]:
    """Kinds (never values) of canaries occurring in ``text`` as whole words, case-insensitively."""
    kinds: list[str] = []
    low = text.lower()
    for kind, values in found.values.items():
        for value in values:
            pattern = rf"(?<![0-9a-z]){re.escape(value.lower())}(?![0-9a-z])"
            if re.search(pattern, low):
                kinds.append(kind)
                break
    return kinds
