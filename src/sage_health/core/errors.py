"""The project's error hierarchy.

Every error message says what failed and how to fix it, and never contains PHI: refer to record ids,
file paths and locators (line numbers, JSON paths), never to field values from patient data.
"""

from __future__ import annotations


class SageError(Exception):
    """Root of every error raised on purpose by SAGE-Health."""


class ConfigError(SageError):
    """Settings are missing or inconsistent."""


class DataError(SageError):
    """Base for data-layer failures."""


class IngestionError(DataError):
    """A file or record could not be ingested. ``path`` and ``locator`` say where."""

    def __init__(self, message: str, *, path: str | None = None, locator: str | None = None) -> None:
        self.path = path
        self.locator = locator
        self.reason = message
        where = path or ""
        if locator:
            where = f"{where}:{locator}" if where else locator
        super().__init__(f"{where}: {message}" if where else message)


class ValidationError(IngestionError):
    """Input parsed but does not satisfy the schema (e.g. an invalid FHIR resource)."""


class UnsupportedFormatError(IngestionError):
    """No connector recognises the file."""


class PolicyViolation(DataError):
    """An access was denied by policy."""


class AuthenticationError(PolicyViolation):
    """No credential, or one that is unknown, expired or revoked (HTTP 401). Never carries the secret."""


class StoreError(DataError):
    """The store is unreadable, of an incompatible schema version, or a write failed."""


class RecordNotFoundError(StoreError):
    """A record id does not exist in the store."""


class RetrievalError(SageError):
    """A search request was invalid or could not be served."""


class ModelError(SageError):
    """A model could not be loaded or failed to produce output."""


class AgentError(SageError):
    """An agent step failed."""


class ModelLoadError(ModelError):
    """Model weights or a backend library could not be loaded (missing extra, missing file, bad format)."""


class GenerationTimeoutError(ModelError):
    """A generator did not answer within its time budget (endpoint timeout, retries exhausted)."""


class EndpointError(ModelError):
    """A remote model endpoint answered with an error status. ``status`` is the HTTP status code (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        self.status = status
        super().__init__(message)


class EmptyGenerationError(ModelError):
    """A generator returned no text."""


class ContextOverflowError(ModelError):
    """The prompt does not fit the model's context window."""


class StructuredOutputError(ModelError):
    """The model's output did not validate against the requested schema after all repair attempts."""


class RegistryError(ModelError):
    """A model-registry operation was refused (unknown model/version, promotion without evaluation, ...)."""


class EvaluationError(ModelError):
    """An evaluation could not run: bad input files, a train/test leak, an unknown task or metric."""


class StudyInputError(AgentError):
    """A workflow request is invalid (unreadable image, unknown patient, empty indication): nothing was stored."""


class RunNotFoundError(AgentError):
    """No agent run with that id exists in the store."""


class RunStateError(AgentError):
    """The run is not in a state that allows the requested action (e.g. reviewing a run that is not paused)."""


class CoevolutionError(ModelError):
    """A co-evolution cycle cannot run (no fixed evaluation set, a changed evaluation file, nothing to train on)."""
