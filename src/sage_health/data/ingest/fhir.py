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

This module holds the connector; validation is in :mod:`.fhir_validation`, value converters in :mod:`.fhir_values`,
the per-file parse state in :mod:`.fhir_bundle` and the per-type mappers in :mod:`.fhir_mappers`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pydantic
from fhir.resources.R4B.bundle import Bundle as FhirBundle
from fhir.resources.R4B.condition import Condition as FhirCondition
from fhir.resources.R4B.diagnosticreport import DiagnosticReport as FhirDiagnosticReport
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.imagingstudy import ImagingStudy as FhirImagingStudy
from fhir.resources.R4B.immunization import Immunization as FhirImmunization
from fhir.resources.R4B.medication import Medication as FhirMedication
from fhir.resources.R4B.medicationrequest import MedicationRequest as FhirMedicationRequest
from fhir.resources.R4B.observation import Observation as FhirObservation
from fhir.resources.R4B.patient import Patient as FhirPatient
from fhir.resources.R4B.procedure import Procedure as FhirProcedure
from fhir.resources.R4B.reference import Reference as FhirReference
from fhir.resources.R4B.resource import Resource as FhirResourceModel

from sage_health.core.errors import IngestionError
from sage_health.data.ingest.base import IngestContext, RecordProblem, clean, load_json, safe_id
from sage_health.data.ingest.fhir_bundle import _Bundle, _Entry, _id_from_url, _is_synthea
from sage_health.data.ingest.fhir_mappers import _generic, _imaging_study, _observation, _patient
from sage_health.data.ingest.fhir_validation import (
    _TYPE_NAME,
    _binding_problems,
    _unknown_nested_type,
    describe_errors,
    resource_model,
)
from sage_health.data.ingest.fhir_values import (
    _coding,
    _concept,
    _concepts,
    _dosage,
    _end,
    _first,
    _first_code,
    _start,
    _when,
)
from sage_health.data.schema import (
    Coding,
    Condition,
    DiagnosticReport,
    Encounter,
    Immunization,
    MedicationRequest,
    Observation,
    Procedure,
    RecordBase,
)

__all__ = ["FhirBundleConnector", "describe_errors", "resource_model"]

# http://terminology.hl7.org/CodeSystem/v3-ActCode (encounter class)
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
