"""Canonical FHIR-aligned record schema.

Every connector turns its input into these pydantic models. Each record has a stable ``id``
(``<source>/<ResourceType>/<local id>``), a ``patient_id`` where one exists, an ``effective`` time,
a :class:`~sage_health.core.provenance.Provenance`, and knows how to render itself to readable text
(``render()``) and how to split itself into named sections for section-aware chunking (``sections()``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from sage_health.core.hashing import sha256_json
from sage_health.core.provenance import Provenance


class RecordType(StrEnum):
    PATIENT = "Patient"
    ENCOUNTER = "Encounter"
    OBSERVATION = "Observation"
    CONDITION = "Condition"
    MEDICATION_REQUEST = "MedicationRequest"
    PROCEDURE = "Procedure"
    IMMUNIZATION = "Immunization"
    DIAGNOSTIC_REPORT = "DiagnosticReport"
    IMAGING_STUDY = "ImagingStudy"
    IMAGE = "Image"
    DOCUMENT_REFERENCE = "DocumentReference"
    KNOWLEDGE_DOCUMENT = "KnowledgeDocument"
    QA_ITEM = "QAItem"
    FHIR_RESOURCE = "FhirResource"


class Section(BaseModel):
    """A named part of a record's text; chunks never cross sections."""

    model_config = ConfigDict(frozen=True)

    name: str
    text: str


class Coding(BaseModel):
    model_config = ConfigDict(frozen=True)

    system: str | None = None
    code: str | None = None
    display: str | None = None

    def label(self) -> str:
        return self.display or self.code or "unknown"


class Quantity(BaseModel):
    model_config = ConfigDict(frozen=True)

    value: float | None = None
    unit: str | None = None

    def render(self) -> str:
        if self.value is None:
            return ""
        number = f"{self.value:g}" if isinstance(self.value, float) else str(self.value)
        return f"{number} {self.unit}".strip() if self.unit else number


def _day(value: datetime | date | None) -> str:
    if value is None:
        return ""
    return value.date().isoformat() if isinstance(value, datetime) else value.isoformat()


def _join(*parts: str | None) -> str:
    return " ".join(p.strip() for p in parts if p and p.strip())


class RecordBase(BaseModel):
    """Fields every record has. Subclasses fix ``resource_type`` and add typed fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=3, pattern=r"^[A-Za-z0-9._:\-]+(/[A-Za-z0-9._:\-]+)+$")
    source: str = Field(min_length=1, description="Dataset / connector name, e.g. 'synthea', 'iu-xray'.")
    patient_id: str | None = None
    effective: datetime | None = None
    provenance: Provenance = Field(default_factory=Provenance)

    def render(self) -> str:
        raise NotImplementedError

    def sections(self) -> list[Section]:
        text = self.render()
        return [Section(name="text", text=text)] if text.strip() else []

    def content_hash(self) -> str:
        """Hash of the clinical content (everything but provenance): what idempotency compares."""
        return sha256_json(self.model_dump(mode="json", exclude={"provenance"}))


class Patient(RecordBase):
    resource_type: Literal["Patient"] = "Patient"
    given_names: list[str] = Field(default_factory=list)
    family_name: str | None = None
    prefix: str | None = None
    gender: str | None = None
    birth_date: date | None = None
    deceased: datetime | None = None
    address: list[str] = Field(default_factory=list, description="Address lines, city, state, postal code.")
    telecom: list[str] = Field(default_factory=list)
    identifiers: list[Coding] = Field(default_factory=list, description="system + value (code).")
    marital_status: str | None = None
    language: str | None = None
    race: str | None = None
    ethnicity: str | None = None

    def render(self) -> str:
        name = _join(self.prefix, *self.given_names, self.family_name) or "unnamed"
        born = f"born {self.birth_date.isoformat()}" if self.birth_date else "birth date unknown"
        parts = [f"Patient {name}", self.gender or "gender unknown", born]
        if self.deceased:
            parts.append(f"deceased {_day(self.deceased)}")
        if self.marital_status:
            parts.append(f"marital status {self.marital_status}")
        if self.race:
            parts.append(f"race {self.race}")
        if self.ethnicity:
            parts.append(f"ethnicity {self.ethnicity}")
        if self.language:
            parts.append(f"language {self.language}")
        if self.address:
            parts.append("address " + ", ".join(self.address))
        return "; ".join(parts) + "."


class Encounter(RecordBase):
    resource_type: Literal["Encounter"] = "Encounter"
    status: str | None = None
    encounter_class: str | None = None
    types: list[Coding] = Field(default_factory=list)
    reasons: list[Coding] = Field(default_factory=list)
    end: datetime | None = None

    def render(self) -> str:
        kind = ", ".join(t.label() for t in self.types) or "encounter"
        text = _join(_day(self.effective), f"{self.encounter_class or ''} encounter:", kind)
        if self.reasons:
            text += "; reason: " + ", ".join(r.label() for r in self.reasons)
        return text


class Component(BaseModel):
    """One component of a multi-part observation (e.g. systolic / diastolic blood pressure)."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: Quantity


class Observation(RecordBase):
    resource_type: Literal["Observation"] = "Observation"
    status: str | None = None
    category: str | None = None
    code: Coding
    value: Quantity | None = None
    value_text: str | None = None
    components: list[Component] = Field(default_factory=list)

    def render(self) -> str:
        if self.components:
            value = ", ".join(f"{c.name} {c.value.render()}" for c in self.components)
        elif self.value is not None:
            value = self.value.render()
        else:
            value = self.value_text or ""
        return _join(_day(self.effective), self.code.label(), value)


class Condition(RecordBase):
    resource_type: Literal["Condition"] = "Condition"
    code: Coding
    clinical_status: str | None = None
    verification_status: str | None = None
    abatement: datetime | None = None

    def render(self) -> str:
        text = _join(_day(self.effective), "Condition:", self.code.label())
        status = [s for s in (self.clinical_status, self.verification_status) if s]
        if status:
            text += f" ({', '.join(status)})"
        if self.abatement:
            text += f"; resolved {_day(self.abatement)}"
        return text


class MedicationRequest(RecordBase):
    resource_type: Literal["MedicationRequest"] = "MedicationRequest"
    medication: Coding
    status: str | None = None
    intent: str | None = None
    dosage: str | None = None
    reasons: list[Coding] = Field(default_factory=list)

    def render(self) -> str:
        text = _join(_day(self.effective), "Medication:", self.medication.label())
        extra = [s for s in (self.status, self.intent) if s]
        if extra:
            text += f" ({', '.join(extra)})"
        if self.dosage:
            text += f"; dosage: {self.dosage}"
        if self.reasons:
            text += "; for " + ", ".join(r.label() for r in self.reasons)
        return text


class Procedure(RecordBase):
    resource_type: Literal["Procedure"] = "Procedure"
    code: Coding
    status: str | None = None
    reasons: list[Coding] = Field(default_factory=list)

    def render(self) -> str:
        text = _join(_day(self.effective), "Procedure:", self.code.label())
        if self.reasons:
            text += "; reason: " + ", ".join(r.label() for r in self.reasons)
        return text


class Immunization(RecordBase):
    resource_type: Literal["Immunization"] = "Immunization"
    vaccine: Coding
    status: str | None = None

    def render(self) -> str:
        return _join(
            _day(self.effective),
            "Immunization:",
            self.vaccine.label(),
            f"({self.status})" if self.status else "",
        )


class ReportSections(BaseModel):
    """Sections of a radiology report (IU X-ray / Open-i layout)."""

    model_config = ConfigDict(frozen=True)

    indication: str | None = None
    comparison: str | None = None
    findings: str | None = None
    impression: str | None = None


class DiagnosticReport(RecordBase):
    resource_type: Literal["DiagnosticReport"] = "DiagnosticReport"
    status: str | None = None
    category: str | None = None
    code: Coding | None = None
    modality: str | None = None
    report_sections: ReportSections = Field(default_factory=ReportSections)
    conclusion: str | None = None
    results: list[str] = Field(default_factory=list, description="Rendered result lines or result ids.")
    mesh_major: list[str] = Field(default_factory=list)
    mesh_automatic: list[str] = Field(default_factory=list)
    image_ids: list[str] = Field(default_factory=list)

    _ORDER: ClassVar[tuple[str, ...]] = ("indication", "comparison", "findings", "impression")

    def sections(self) -> list[Section]:
        out: list[Section] = []
        for name in self._ORDER:
            text = getattr(self.report_sections, name)
            if text and text.strip():
                out.append(Section(name=name, text=f"{name.upper()}: {text.strip()}"))
        if self.conclusion and self.conclusion.strip():
            out.append(Section(name="conclusion", text=f"CONCLUSION: {self.conclusion.strip()}"))
        if self.results:
            title = self.code.label() if self.code else "Report"
            out.append(Section(name="results", text=_join(_day(self.effective), f"{title}:", "; ".join(self.results))))
        if not out:
            header = self.render()
            if header:
                out.append(Section(name="text", text=header))
        return out

    def render(self) -> str:
        parts = [s.text for s in self.sections()] if self._has_body() else []
        if not parts:
            title = self.code.label() if self.code else "Diagnostic report"
            return _join(_day(self.effective), title)
        return "\n".join(parts)

    def _has_body(self) -> bool:
        rs = self.report_sections
        return bool(rs.indication or rs.comparison or rs.findings or rs.impression or self.conclusion or self.results)


class ImagingStudy(RecordBase):
    resource_type: Literal["ImagingStudy"] = "ImagingStudy"
    study_uid: str | None = None
    modality: str | None = None
    body_part: str | None = None
    description: str | None = None
    number_of_series: int | None = None
    number_of_instances: int | None = None

    def render(self) -> str:
        return _join(
            _day(self.effective),
            "Imaging study",
            self.modality or "",
            self.body_part or "",
            self.description or "",
            f"({self.number_of_series} series, {self.number_of_instances} instances)"
            if self.number_of_series is not None
            else "",
        )


class Image(RecordBase):
    """One image (PNG or DICOM instance). Pixels stay in the file: ``pixel_ref`` points at it."""

    resource_type: Literal["Image"] = "Image"
    image_id: str
    file_format: Literal["PNG", "DICOM"]
    pixel_ref: str = Field(description="Path of the file holding the pixels (never loaded into the DB).")
    pixel_sha256: str
    study_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    sop_class: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None
    bits_stored: int | None = None
    photometric: str | None = None
    labels: list[str] = Field(default_factory=list, description="Dataset-provided diagnosis labels.")
    description: str | None = None

    def render(self) -> str:
        size = f"{self.width}x{self.height}" if self.width and self.height else ""
        text = _join(
            _day(self.effective),
            self.modality or "image",
            self.body_part or "",
            self.view or "",
            f"image {self.image_id}",
            size,
        )
        if self.labels:
            text += "; labels: " + ", ".join(self.labels)
        if self.description:
            text += f"; {self.description}"
        return text


class DocumentReference(RecordBase):
    """A clinical note or other free-text document about a patient."""

    resource_type: Literal["DocumentReference"] = "DocumentReference"
    title: str | None = None
    doc_type: str | None = None
    text: str

    def sections(self) -> list[Section]:
        return [Section(name="note", text=self.text)] if self.text.strip() else []

    def render(self) -> str:
        return _join(self.title, self.text)


class KnowledgeDocument(RecordBase):
    """Reference knowledge (a MedQuAD answer, a PubMedQA abstract). ``title`` prefixes every chunk."""

    resource_type: Literal["KnowledgeDocument"] = "KnowledgeDocument"
    title: str | None = None
    text: str
    url: str | None = None
    collection: str | None = None
    keywords: list[str] = Field(default_factory=list)
    metadata: dict[str, str] = Field(default_factory=dict)

    def sections(self) -> list[Section]:
        return [Section(name="body", text=self.text)] if self.text.strip() else []

    def render(self) -> str:
        return _join(self.title, self.text)


class QAItem(RecordBase):
    """A benchmark or curated question with options and its answer."""

    resource_type: Literal["QAItem"] = "QAItem"
    dataset: str
    question: str
    options: dict[str, str] = Field(default_factory=dict)
    answer: str | None = None
    long_answer: str | None = None
    context_ids: list[str] = Field(default_factory=list)

    def render(self) -> str:
        text = f"Question: {self.question.strip()}"
        if self.options:
            text += " Options: " + " ".join(f"({k}) {v}" for k, v in sorted(self.options.items()))
        if self.answer:
            text += f" Answer: {self.answer}"
        if self.long_answer:
            text += f" {self.long_answer.strip()}"
        return text


class FhirResource(RecordBase):
    """Any other valid FHIR resource (Claim, CarePlan, Organization, ...), kept whole and rendered briefly."""

    resource_type: Literal["FhirResource"] = "FhirResource"
    fhir_type: str
    summary: str
    codes: list[Coding] = Field(default_factory=list)

    def render(self) -> str:
        return _join(_day(self.effective), f"{self.fhir_type}:", self.summary)


AnyRecord = Annotated[
    Patient
    | Encounter
    | Observation
    | Condition
    | MedicationRequest
    | Procedure
    | Immunization
    | DiagnosticReport
    | ImagingStudy
    | Image
    | DocumentReference
    | KnowledgeDocument
    | QAItem
    | FhirResource,
    Field(discriminator="resource_type"),
]

RECORD_ADAPTER: TypeAdapter[AnyRecord] = TypeAdapter(AnyRecord)


def record_from_json(payload: str | bytes) -> AnyRecord:
    """Parse a record serialised with ``record.model_dump_json()``."""
    return RECORD_ADAPTER.validate_json(payload)


def record_from_dict(payload: dict[str, Any]) -> AnyRecord:
    return RECORD_ADAPTER.validate_python(payload)


def as_utc(value: datetime | date | None) -> datetime | None:
    """Normalise dates/datetimes to aware UTC datetimes (a date becomes midnight UTC)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_utc(value: datetime | None) -> str | None:
    """ISO 8601 in UTC with a Z suffix: the sortable form stored in the database."""
    if value is None:
        return None
    aware = as_utc(value)
    assert aware is not None  # noqa: S101 - narrowed for mypy
    return aware.strftime("%Y-%m-%dT%H:%M:%SZ")
