"""Provenance travels with the data (the MONAI ``applied_operations`` idea).

Every record, chunk, embedding and, later, snapshot, model version and generated text carries a
:class:`Provenance`: where it came from (file, locator, content hash), which transforms produced it
(name + version, in order) and which run or model produced it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Transform(BaseModel):
    """One step applied to the data, with the version of the code or model that applied it."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    params: dict[str, str | int | float | bool | None] = Field(default_factory=dict)


class Provenance(BaseModel):
    """Where a piece of data came from and how it was made."""

    model_config = ConfigDict(frozen=True)

    source_file: str | None = None
    """Path of the source file (as given to the ingest command, resolved)."""
    locator: str | None = None
    """Where inside the file: ``line:12``, a JSON path such as ``$.entry[3].resource``, a CSV row."""
    source_sha256: str | None = None
    """sha256 of the whole source file's bytes."""
    content_hash: str | None = None
    """sha256 of the canonical content of this item (what idempotency compares)."""
    run_id: str | None = None
    """The ingest run or job that produced it."""
    transforms: tuple[Transform, ...] = ()
    """Transform chain, oldest first."""
    model_id: str | None = None
    """For derived artifacts (embeddings, generated text): the model and version that made them."""
    derived_from: tuple[str, ...] = ()
    """Ids of the records or artifacts this one was derived from."""

    def with_transform(self, transform: Transform) -> Provenance:
        """A copy with one more transform appended (provenance is immutable)."""
        return self.model_copy(update={"transforms": (*self.transforms, transform)})
