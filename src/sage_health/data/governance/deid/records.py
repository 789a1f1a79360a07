"""Structured de-identification by rule: stored records and raw FHIR resources.

HIPAA Safe Harbor rules applied to structured fields (the free text inside records goes through the detector):

* names (patient and practitioner): replaced (``[NAME]`` in tag/shift mode, consistent surrogates in surrogate mode);
* addresses: street lines, city, district and geolocation dropped; **state and country kept**; postal code cut to
  its **first three digits**;
* telecom, identifiers (MRN, SSN, driver's licence, passport...), photos, contacts: dropped (tag/shift mode) or
  replaced by format-preserving surrogates (surrogate mode);
* record and resource ids: replaced by keyed pseudonyms (Synthea ids equal the patients' MRNs); references are
  rewritten with the same pseudonyms, so they still resolve;
* dates: **every structured date is shifted** by the patient's secret offset in all modes (intervals preserved);
  a birth date of a patient over 89 is dropped (Safe Harbor aggregates such ages to "90+");
* provenance: the source file path is dropped (file names carry patient names), and a ``deid.<mode>`` transform is
  appended.
"""

from __future__ import annotations

import copy
import re
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

from sage_health.core.provenance import Transform
from sage_health.data.governance.deid.engine import PresidioDeidentifier
from sage_health.data.governance.deid.lexicon import place_lexicon
from sage_health.data.governance.deid.types import DeidentificationError, DeidMode, EntityLabel
from sage_health.data.schema import (
    AnyRecord,
    Coding,
    DiagnosticReport,
    DocumentReference,
    FhirResource,
    Image,
    ImagingStudy,
    KnowledgeDocument,
    Observation,
    Patient,
    QAItem,
    RecordBase,
    ReportSections,
    record_from_dict,
)

AGE_LIMIT: Final = 89
_FHIR_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(T[0-9:.]+(?:Z|[+-]\d{2}:\d{2})?)?)?)?$")
_DROP_PATIENT_KEYS: Final = ("telecom", "identifier", "photo", "contact", "link")
_DROP_EXTENSIONS: Final = ("geolocation", "birthPlace", "mothersMaidenName", "patient-birthPlace")
_FREE_TEXT_KEYS: Final = frozenset({"text", "valueString", "comment", "description", "note", "conclusion", "summary"})


def _age(birth: date, today: date | None = None) -> int:
    today = today or datetime.now(UTC).date()
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _zip3(value: str) -> str:
    digits = re.sub(r"\D", "", value)
    return digits[:3] if len(digits) >= 3 else ""


def _pseudo_id(deid: PresidioDeidentifier, record_id: str) -> str:
    source, _, rest = record_id.partition("/")
    rtype, _, local = rest.partition("/")
    if not local:
        return deid.pseudonym(record_id)
    return f"{source}/{rtype}/{deid.pseudonym(record_id)}"


class RecordDeidentifier:
    """De-identifies stored records and raw FHIR resources with one :class:`PresidioDeidentifier` and key."""

    def __init__(self, deidentifier: PresidioDeidentifier) -> None:
        self.deid = deidentifier

    # ------------------------------------------------------------------ free text

    def _text(self, value: str | None, patient_key: str | None, mode: DeidMode) -> str | None:
        if value is None or not value.strip():
            return value
        return self.deid.deidentify(value, patient_key=patient_key, mode=mode).text

    def _name(self, value: str, patient_key: str | None, mode: DeidMode) -> str:
        if mode == "surrogate":
            return self.deid.replacement("NAME", value, patient_key=patient_key, mode=mode) or "[NAME]"
        return "[NAME]"

    def _shift_dt(self, value: datetime | None, days: int) -> datetime | None:
        return value + timedelta(days=days) if value is not None else None

    # ------------------------------------------------------------------ canonical records

    def record(self, record: AnyRecord, *, patient_key: str | None = None, mode: DeidMode = "tag") -> AnyRecord:
        """A de-identified copy of ``record`` (module docstring: the rules). ``patient_key`` defaults to the
        record's ``patient_id`` (or its own id for a Patient)."""
        if not isinstance(record, RecordBase):
            raise DeidentificationError(f"deidentify_record needs a record, got {type(record).__name__}")
        if isinstance(record, KnowledgeDocument | QAItem):
            return record  # reference knowledge, no patient: nothing to de-identify
        key = patient_key if patient_key is not None else (record.patient_id or record.id)
        days = self.deid.date_shift(key)
        update: dict[str, Any] = {
            "id": _pseudo_id(self.deid, record.id),
            "patient_id": _pseudo_id(self.deid, record.patient_id) if record.patient_id else None,
            "effective": self._shift_dt(record.effective, days),
        }
        data = record.model_dump()
        if isinstance(record, Patient):
            update |= self._patient(record, key, mode, days)
        for attr in ("end", "abatement", "deceased"):
            if attr in data and attr not in update:
                update[attr] = self._shift_dt(getattr(record, attr), days)
        if isinstance(record, DiagnosticReport):
            sections = record.report_sections
            update["report_sections"] = ReportSections(
                **{name: self._text(getattr(sections, name), key, mode) for name in ReportSections.model_fields}
            )
            update["conclusion"] = self._text(record.conclusion, key, mode)
            update["results"] = [self._text(r, key, mode) or "" for r in record.results]
        if isinstance(record, DocumentReference):
            update["text"] = self._text(record.text, key, mode) or ""
            update["title"] = self._text(record.title, key, mode)
        if isinstance(record, FhirResource):
            update["summary"] = self._text(record.summary, key, mode) or ""
        if isinstance(record, Observation):
            update["value_text"] = self._text(record.value_text, key, mode)
        if isinstance(record, Image):
            update["description"] = self._text(record.description, key, mode)
            update["pixel_ref"] = "[redacted]"
            update["study_id"] = _pseudo_id(self.deid, record.study_id) if record.study_id else None
            for uid in ("study_uid", "series_uid", "sop_instance_uid"):
                value = getattr(record, uid)
                update[uid] = self.deid.pseudonym(value) if value else None
        if isinstance(record, ImagingStudy):
            update["study_uid"] = self.deid.pseudonym(record.study_uid) if record.study_uid else None
            update["description"] = self._text(record.description, key, mode)
        provenance = record.provenance.model_copy(update={"source_file": None, "derived_from": ()})
        update["provenance"] = provenance.with_transform(
            Transform(name=f"deid.{mode}", version=self.deid.version, params={"deidentifier": self.deid.name})
        )
        payload = data | update
        payload["provenance"] = update["provenance"].model_dump()
        if "report_sections" in update:
            payload["report_sections"] = update["report_sections"].model_dump()
        return record_from_dict(payload)

    def _patient(self, p: Patient, key: str, mode: DeidMode, days: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "given_names": [self._name(g, key, mode) for g in p.given_names],
            "family_name": self._name(p.family_name, key, mode) if p.family_name else None,
            "prefix": None,
            "birth_date": None,
        }
        if p.birth_date is not None and _age(p.birth_date) <= AGE_LIMIT:
            out["birth_date"] = p.birth_date + timedelta(days=days)
        out["address"] = [a for a in (self._safe_harbor_address(a) for a in p.address) if a]
        if mode == "surrogate":
            out["telecom"] = [self._text(t, key, "surrogate") or "" for t in p.telecom]
            out["identifiers"] = [
                Coding(
                    system=c.system,
                    display=c.display,
                    code=self.deid.replacement("ID", c.code, patient_key=key, mode="surrogate") if c.code else None,
                )
                for c in p.identifiers
            ]
        else:
            out["telecom"] = []
            out["identifiers"] = []
        return out

    @staticmethod
    def _safe_harbor_address(address: str) -> str:
        """Keep the state, the ZIP's first three digits and the country of a rendered address; drop the rest."""
        places = place_lexicon()
        parts = [p.strip() for p in address.split(",") if p.strip()]
        kept: list[str] = []
        for part in parts:
            low = part.lower()
            if low in places.regions or (part.upper() in places.region_codes and part.isupper()):
                kept.append(part)
            elif re.fullmatch(r"\d{5}(?:-\d{4})?", part):
                kept.append(_zip3(part))
            elif low in places.countries or part in {"US", "USA", "United States"}:
                kept.append(part)
        return ", ".join(kept)

    # ------------------------------------------------------------------ raw FHIR

    def fhir(self, resource: dict[str, Any], *, patient_key: str | None, mode: DeidMode = "tag") -> dict[str, Any]:
        """A de-identified deep copy of one FHIR resource (dict, any type; a Bundle's entries are processed)."""
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise DeidentificationError("deidentify_fhir needs a FHIR resource: a dict with a 'resourceType'")
        out = copy.deepcopy(resource)
        days = self.deid.date_shift(patient_key)
        self._fhir_walk(out, patient_key, mode, days)
        return out

    def _fhir_walk(self, node: dict[str, Any], patient_key: str | None, mode: DeidMode, days: int) -> None:
        rtype = node.get("resourceType")
        if rtype in ("Patient", "Practitioner", "RelatedPerson", "Person"):
            self._fhir_person(node, patient_key, mode, days)
        if isinstance(node.get("id"), str) and rtype is not None:
            node["id"] = self.deid.pseudonym(node["id"])
        for k in list(node):
            value = node[k]
            if (k == "fullUrl" and isinstance(value, str)) or (k == "reference" and isinstance(value, str)):
                node[k] = self._fhir_reference(value)
            elif k == "div" and isinstance(value, str):
                node[k] = '<div xmlns="http://www.w3.org/1999/xhtml">[removed]</div>'
            elif k == "url" and isinstance(value, str) and value.endswith(_DROP_EXTENSIONS):
                continue
            elif isinstance(value, str):
                m = _FHIR_DATE.match(value)
                if m and (k.lower().endswith(("date", "datetime", "instant", "time")) or k in _DATE_KEYS):
                    node[k] = _shift_fhir_date(value, days)
                elif k in _FREE_TEXT_KEYS or (k == "display" and "coding" not in node):
                    node[k] = self._text(value, patient_key, mode)
            elif isinstance(value, dict):
                self._fhir_walk(value, patient_key, mode, days)
            elif isinstance(value, list):
                kept = []
                for item in value:
                    if isinstance(item, dict):
                        url = item.get("url")
                        if k == "extension" and isinstance(url, str) and url.endswith(_DROP_EXTENSIONS):
                            continue
                        self._fhir_walk(item, patient_key, mode, days)
                    elif isinstance(item, str) and k in _FREE_TEXT_KEYS:
                        item = self._text(item, patient_key, mode)
                    kept.append(item)
                node[k] = kept

    def _fhir_reference(self, value: str) -> str:
        for prefix in ("urn:uuid:", "urn:oid:"):
            if value.startswith(prefix):
                return prefix + self.deid.pseudonym(value[len(prefix) :])
        parts = value.split("/")
        if len(parts) >= 2 and re.fullmatch(r"[A-Z][A-Za-z]+", parts[-2]):
            parts[-1] = self.deid.pseudonym(parts[-1])
            return "/".join(parts)
        return value

    def _fhir_person(self, node: dict[str, Any], patient_key: str | None, mode: DeidMode, days: int) -> None:
        names = node.get("name")
        if isinstance(names, list):
            new_names = []
            for name in names:
                if not isinstance(name, dict):
                    continue
                given = [self._name(g, patient_key, mode) for g in name.get("given", []) if isinstance(g, str)]
                family = name.get("family")
                entry: dict[str, Any] = {"use": name["use"]} if "use" in name else {}
                if given:
                    entry["given"] = given
                if isinstance(family, str):
                    entry["family"] = self._name(family, patient_key, mode)
                new_names.append(entry)
            node["name"] = new_names
        addresses = node.get("address")
        if isinstance(addresses, list):
            node["address"] = [
                {k: v for k, v in {"state": a.get("state"), "country": a.get("country")}.items() if v}
                | ({"postalCode": _zip3(a["postalCode"])} if isinstance(a.get("postalCode"), str) else {})
                for a in addresses
                if isinstance(a, dict)
            ]
        birth = node.get("birthDate")
        if isinstance(birth, str) and (m := _FHIR_DATE.match(birth)):
            year = int(m.group(1))
            if datetime.now(UTC).year - year > AGE_LIMIT:
                del node["birthDate"]
        if mode == "surrogate":
            for tel in node.get("telecom", []) if isinstance(node.get("telecom"), list) else []:
                if isinstance(tel, dict) and isinstance(tel.get("value"), str):
                    label: EntityLabel = "EMAIL" if tel.get("system") == "email" else "PHONE"
                    tel["value"] = self.deid.replacement(label, tel["value"], patient_key=patient_key, mode=mode)
            for ident in node.get("identifier", []) if isinstance(node.get("identifier"), list) else []:
                if isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    ident["value"] = self.deid.replacement("ID", ident["value"], patient_key=patient_key, mode=mode)
            for key in ("photo", "contact", "link"):
                node.pop(key, None)
        else:
            for key in _DROP_PATIENT_KEYS:
                node.pop(key, None)


_DATE_KEYS: Final = frozenset({"start", "end", "issued", "recorded", "authoredOn", "created", "occurrenceDateTime"})


def _shift_fhir_date(value: str, days: int) -> str:
    m = _FHIR_DATE.match(value)
    if m is None:
        return value
    year, month, day, rest = m.group(1), m.group(2), m.group(3), m.group(4) or ""
    if day is None:
        base = date(int(year), int(month or 1), 15) + timedelta(days=days)
        return f"{base.year:04d}-{base.month:02d}" if month else f"{base.year:04d}"
    shifted = date(int(year), int(month), int(day)) + timedelta(days=days)
    return shifted.isoformat() + rest


def deidentify_record(
    record: AnyRecord,
    deidentifier: PresidioDeidentifier,
    *,
    patient_key: str | None = None,
    mode: DeidMode = "tag",
) -> AnyRecord:
    """A de-identified copy of a stored record (structured fields by rule, free text by ``deidentifier``)."""
    return RecordDeidentifier(deidentifier).record(record, patient_key=patient_key, mode=mode)


def deidentify_fhir(
    resource: dict[str, Any],
    deidentifier: PresidioDeidentifier,
    *,
    patient_key: str | None,
    mode: DeidMode = "tag",
) -> dict[str, Any]:
    """A de-identified deep copy of a raw FHIR resource or Bundle (module docstring: the rules)."""
    return RecordDeidentifier(deidentifier).fhir(resource, patient_key=patient_key, mode=mode)
