"""Knowledge and QA connectors: MedQuAD (JSONL.gz), PubMedQA (``ori_pqal_*.json``), MIRAGE (``*.json``).

The parsing functions (``medquad_records``, ``pubmedqa_records``, ``mirage_records``) are also used by the
retrieval evaluation, which must read exactly the files it is given.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from sage_health.core.errors import IngestionError
from sage_health.data.ingest.base import (
    IngestContext,
    RecordProblem,
    clean,
    iter_json_lines,
    load_json,
    safe_id,
)
from sage_health.data.schema import KnowledgeDocument, QAItem, RecordBase

_SPACES = re.compile(r"[ \t\r\f\v]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")


def normalise_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs, strip each line, keep paragraph breaks."""
    lines = [_SPACES.sub(" ", line).strip() for line in text.splitlines()]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def _as_list(value: Any) -> list[str]:
    """MedQuAD stores lists as their Python repr (``"['C0751606']"``); accept lists too."""
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return []
        return [str(v) for v in parsed] if isinstance(parsed, list) else []
    return []


# ---------------------------------------------------------------------- MedQuAD


def medquad_local_id(obj: dict[str, Any]) -> str | None:
    """A unique local id for one MedQuAD pair: ``<collection>:<document>-<pair number>``.

    MedQuAD's own ``id`` is not unique (2,489 ids repeat: document numbers restart in every collection,
    and CancerGov multi-focus files share one id), so the id is built from the source XML path and the
    pair number of ``question_id``; the original ``id`` is kept in ``metadata['medquad_id']``.
    """
    file = clean(obj.get("file"))
    question_id = clean(obj.get("question_id"))
    if file and question_id:
        path = PurePosixPath(file)
        local = f"{path.parent}:{path.stem}-{question_id.rsplit('-', 1)[-1]}" if path.parent.name else None
        if local:
            return safe_id(local)
    rid = clean(obj.get("id"))
    return safe_id(rid) if rid else None


def medquad_record(obj: dict[str, Any], source: str) -> KnowledgeDocument:
    """One MedQuAD QA pair -> a KnowledgeDocument (answer text, titled by its focus).

    The question is kept as metadata but not indexed: retrieval evaluation queries with it.
    """
    rid = medquad_local_id(obj)
    answer = clean(obj.get("answer"))
    if not rid or not answer:
        raise ValueError("missing 'id' or 'answer'")
    metadata = {
        k: str(obj[k])
        for k in ("question", "question_id", "question_type", "source", "semantic_group", "file")
        if obj.get(k) not in (None, "")
    }
    if obj.get("id") not in (None, ""):
        metadata["medquad_id"] = str(obj["id"])
    return KnowledgeDocument(
        id=f"{source}/KnowledgeDocument/{rid}",
        source=source,
        title=clean(obj.get("focus")),
        text=normalise_whitespace(answer),
        url=clean(obj.get("url")),
        collection=clean(obj.get("collection")),
        keywords=_as_list(obj.get("cuis")),
        metadata=metadata,
    )


class MedQuADConnector:
    name = "medquad"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return path.name.endswith((".jsonl", ".jsonl.gz")) and b'"question_type"' in head and b'"answer"' in head

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        source = ctx.source("medquad")
        for lineno, obj in iter_json_lines(path):
            if isinstance(obj, RecordProblem):
                yield obj
                continue
            try:
                record = medquad_record(obj, source)
            except ValueError as exc:
                yield RecordProblem(locator=f"line {lineno}", reason=str(exc).splitlines()[0])
                continue
            prov = ctx.provenance(path, file_sha256, f"line {lineno}", self)
            yield record.model_copy(update={"provenance": prov})


# ---------------------------------------------------------------------- PubMedQA


def _pubmedqa_pair(pmid: str, item: dict[str, Any], source: str) -> tuple[KnowledgeDocument, QAItem]:
    contexts = item.get("CONTEXTS")
    question = clean(item.get("QUESTION"))
    if not isinstance(contexts, list) or not contexts or not question:
        raise ValueError("missing QUESTION or CONTEXTS")
    raw_labels = item.get("LABELS")
    labels: list[Any] = raw_labels if isinstance(raw_labels, list) else []
    parts = []
    for i, ctx_text in enumerate(contexts):
        label = labels[i] if i < len(labels) else None
        body = normalise_whitespace(str(ctx_text))
        parts.append(f"{str(label).title()}: {body}" if label else body)
    year = clean(item.get("YEAR"))
    effective = datetime(int(year), 1, 1, tzinfo=UTC) if year and year.isdigit() else None
    doc_id = f"{source}/KnowledgeDocument/{safe_id(pmid)}"
    doc = KnowledgeDocument(
        id=doc_id,
        source=source,
        title=None,
        text="\n".join(parts),
        url=f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/",
        collection="PubMedQA PQA-L abstracts",
        keywords=[str(m) for m in item.get("MESHES") or []],
        effective=effective,
        metadata={"pmid": str(pmid)},
    )
    qa = QAItem(
        id=f"{source}/QAItem/{safe_id(pmid)}",
        source=source,
        dataset="pubmedqa",
        question=question,
        options={"A": "yes", "B": "no", "C": "maybe"},
        answer=clean(item.get("final_decision")),
        long_answer=clean(item.get("LONG_ANSWER")),
        context_ids=[doc_id],
        effective=effective,
    )
    return doc, qa


def pubmedqa_records(
    data: Any, source: str = "pubmedqa"
) -> Iterator[tuple[str, KnowledgeDocument, QAItem] | RecordProblem]:
    if not isinstance(data, dict):
        raise TypeError("expected a JSON object keyed by PMID")
    for pmid, item in data.items():
        if not isinstance(item, dict):
            yield RecordProblem(locator=f"$['{pmid}']", reason="expected an object")
            continue
        try:
            doc, qa = _pubmedqa_pair(str(pmid), item, source)
        except ValueError as exc:
            yield RecordProblem(locator=f"$['{pmid}']", reason=str(exc).splitlines()[0])
            continue
        yield str(pmid), doc, qa


class PubMedQAConnector:
    name = "pubmedqa"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return path.suffix == ".json" and b'"QUESTION"' in head and b'"CONTEXTS"' in head

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        data = load_json(path)
        try:
            items = list(pubmedqa_records(data, ctx.source("pubmedqa")))
        except TypeError as exc:
            raise IngestionError(str(exc), path=str(path)) from exc
        for item in items:
            if isinstance(item, RecordProblem):
                yield item
                continue
            pmid, doc, qa = item
            prov = ctx.provenance(path, file_sha256, f"$['{pmid}']", self)
            yield doc.model_copy(update={"provenance": prov})
            yield qa.model_copy(update={"provenance": prov})


# ---------------------------------------------------------------------- MIRAGE


class MirageConnector:
    """MIRAGE benchmark files: ``{"<task>": {"<key>": {"question", "options", "answer"}}}``."""

    name = "mirage"
    version = "1"

    def detect(self, path: Path, head: bytes) -> bool:
        return path.suffix == ".json" and b'"options"' in head and b'"question"' in head and b'"answer"' in head

    def parse(self, path: Path, file_sha256: str, ctx: IngestContext) -> Iterator[RecordBase | RecordProblem]:
        data = load_json(path)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise IngestionError("expected {task: {key: {question, options, answer}}} (MIRAGE layout)", path=str(path))
        source = ctx.source("mirage")
        for task, items in data.items():
            for key, item in items.items():
                locator = f"$['{task}']['{key}']"
                question = clean(item.get("question")) if isinstance(item, dict) else None
                options = item.get("options") if isinstance(item, dict) else None
                if not question or not isinstance(options, dict):
                    yield RecordProblem(locator=locator, reason="missing question or options")
                    continue
                yield QAItem(
                    id=f"{source}/QAItem/{safe_id(task)}:{safe_id(str(key))}",
                    source=source,
                    dataset=str(task),
                    question=question,
                    options={str(k): str(v) for k, v in options.items()},
                    answer=clean(item.get("answer")),
                    context_ids=[f"pmid:{p}" for p in item.get("PMID") or []],
                    provenance=ctx.provenance(path, file_sha256, locator, self),
                )
