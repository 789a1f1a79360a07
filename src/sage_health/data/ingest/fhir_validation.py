"""FHIR validation beyond the R4B models: the model class of a resource type, PHI-free error summaries, nested
resource types and the required code bindings the models leave unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import pydantic
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource as FhirResourceModel

_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,63}$")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_MAX_ERRORS = 5

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
