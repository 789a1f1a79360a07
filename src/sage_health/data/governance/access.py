"""The governed face of the document store: every read, search, write and export asks the policy engine and is
written to the audit log.

:class:`GovernedStore` wraps a backend (:class:`~sage_health.data.store.protocol.GovernableStore`) for one
:class:`~sage_health.data.governance.policy.Access` (principal + purpose). Interfaces, agents, applications,
evaluations and exports receive a ``GovernedStore``, never the raw store, so no path can forget the policy:

- a denied action raises :class:`~sage_health.core.errors.PolicyViolation` (the denial is audited too);
- when the decision excludes research opt-outs, the opted-out patient ids are pushed into the store's filters
  (``SearchFilters.exclude_patients``), so both retrievers skip them — nothing is fetched and then hidden;
- when the decision's view is ``deidentified``, every record and hit passes through a :class:`RecordView`
  (de-identified text and structured fields, pseudonymous patient ids) before it leaves this class;
- every call appends one audit event with the principal, purpose, action and the record ids returned (a query is
  logged by its sha256 only).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation
from sage_health.core.hashing import sha256_text
from sage_health.data.chunking import Chunk
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.policy import RULES, Access, Action, Decision, PolicyEngine, audit_record_ids
from sage_health.data.ingest.pipeline import (
    FileProblem,
    IngestOptions,
    IngestPipeline,
    IngestReport,
    ProgressFn,
    new_run_id,
)
from sage_health.data.schema import Image, RecordBase
from sage_health.data.store.protocol import (
    GovernableStore,
    PatientIndex,
    SearchFilters,
    SearchHit,
    SearchQuery,
    StoredRecord,
    WriteResult,
)

if TYPE_CHECKING:
    from sage_health.data.governance.audit import AuditTrail
    from sage_health.data.governance.erasure import ErasureResult
    from sage_health.data.governance.hooks import ErasureHook, LineageHook
    from sage_health.data.governance.lineage import LineageResult


def append_event(
    audit: AuditLog,
    access: Access,
    action: str,
    *,
    record_ids: Sequence[str] = (),
    query: str | None = None,
    detail: dict[str, Any] | None = None,
    outcome: str = "ok",
    actor: dict[str, Any] | None = None,
) -> None:
    """Append one audit event for ``access``: ids (capped; the total is noted) and hashes only, never record content,
    file paths or query text; ``actor`` says how the principal was identified (token id, channel)."""
    ids = audit_record_ids(record_ids)
    info = {"outcome": outcome, **(actor or {}), **(detail or {})}
    if len(record_ids) > len(ids):
        info["record_count"] = len(record_ids)
    audit.append(
        principal=access.principal.name,
        purpose=access.purpose,
        action=action,
        record_ids=ids,
        query=query,
        detail=info,
    )


class RecordView(Protocol):
    """Turns identified records and hits into the de-identified view a researcher may see."""

    def record(self, stored: StoredRecord) -> StoredRecord: ...

    def hit(self, hit: SearchHit) -> SearchHit: ...

    def text(self, text: str, patient_id: str | None) -> str: ...

    def resolve_patient(self, patient_ref: str, store: PatientIndex) -> str | None:
        """The real patient id behind a pseudonym shown in this view (``None`` if unknown)."""
        ...

    def patient(self, patient_id: str | None) -> str | None:
        """The pseudonym this view shows for a real patient id (``None`` for ``None``)."""
        ...


class GovernedStore:
    """A store bound to one principal and purpose. Cheap; build one per request or command.

    The raw store is private: nothing outside the governance layer reaches it, so nothing can read around the
    policy. Everything a use case needs is a method here, decided and audited."""

    def __init__(
        self,
        store: GovernableStore,
        access: Access,
        policy: PolicyEngine,
        audit: AuditLog,
        view: RecordView | None = None,
        read_as: Action | None = None,
        actor: dict[str, Any] | None = None,
    ) -> None:
        self._store = store
        self.access = access
        self.policy = policy
        self.audit = audit
        self.view = view
        """The de-identified view; required for principals whose decisions say ``deidentified``."""
        self.read_as = read_as
        """When set, reads and searches are decided as this action (e.g. ``train``: secondary use, consent applies)."""
        self.actor: dict[str, Any] = dict(actor or {})
        """How the principal was identified (token id, channel): added to every audit event this store writes."""
        self._opted_out: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return f"GovernedStore({self.access.label}, read_as={self.read_as})"

    def over(self, store: GovernableStore) -> GovernedStore:
        """The same principal, purpose, policy, audit log and view over another store (e.g. an evaluation's
        retrieval memory built from a train file)."""
        return GovernedStore(store, self.access, self.policy, self.audit, self.view, self.read_as, self.actor)

    def acting(self, action: Action) -> GovernedStore:
        """A copy whose reads and searches are decided (and audited) as ``action``: a training job's reads are
        ``train``, an evaluation's are ``evaluate``, so research opt-outs apply to them whatever the purpose."""
        self.decide(action)
        return GovernedStore(self._store, self.access, self.policy, self.audit, self.view, action, self.actor)

    # ------------------------------------------------------------------ policy + audit helpers
    def decide(self, action: Action, *, detail: dict[str, Any] | None = None) -> Decision:
        """Ask the policy engine; a denial is audited and raised as :class:`PolicyViolation`."""
        decision = self.policy.decide(self.access, action)
        if not decision.allowed:
            self.log(Action(action).value, detail={**(detail or {}), "denied": decision.reason}, outcome="denied")
            raise PolicyViolation(decision.reason)
        if decision.view == "deidentified" and self.view is None:
            raise PolicyViolation(
                f"{self.access.label} may only see de-identified data, and no de-identifier is configured"
            )
        return decision

    def log(
        self,
        action: str,
        *,
        record_ids: Sequence[str] = (),
        query: str | None = None,
        detail: dict[str, Any] | None = None,
        outcome: str = "ok",
    ) -> None:
        append_event(self.audit, self.access, action, record_ids=record_ids, query=query, detail=detail,
                     outcome=outcome, actor=self.actor)  # fmt: skip

    def opted_out(self) -> tuple[str, ...]:
        if self._opted_out is None:
            self._opted_out = self.policy.opted_out()
        return self._opted_out

    def _filters(self, filters: SearchFilters, decision: Decision) -> SearchFilters:
        update: dict[str, Any] = {}
        if decision.view == "deidentified" and filters.patient_id and self.view is not None:
            real = self.view.resolve_patient(filters.patient_id, self._store)
            # an unknown pseudonym must match nothing, never everything
            update["patient_id"] = real or f"unknown-pseudonym:{filters.patient_id}"
        if decision.exclude_opted_out:
            excluded = self.opted_out()
            if excluded:
                update["exclude_patients"] = tuple(sorted({*filters.exclude_patients, *excluded}))
        return filters.model_copy(update=update) if update else filters

    def _visible(self, stored: StoredRecord, decision: Decision) -> bool:
        patient = stored.record.patient_id
        return not (decision.exclude_opted_out and patient is not None and patient in self.opted_out())

    def _out_record(self, stored: StoredRecord, decision: Decision) -> StoredRecord:
        if decision.view == "deidentified" and self.view is not None:
            out = self.view.record(stored)
            if decision.action == Action.TRAIN and isinstance(stored.record, Image):
                # a training job reads the pixels themselves: it gets the file reference (never displayed) of an
                # otherwise de-identified record; pixel data is not de-identified (burned-in text is out of scope)
                record = out.record.model_copy(update={"pixel_ref": stored.record.pixel_ref})
                out = out.model_copy(update={"record": record})
            return out
        return stored

    def _out_hit(self, hit: SearchHit, decision: Decision) -> SearchHit:
        if decision.view == "deidentified" and self.view is not None:
            return self.view.hit(hit)
        return hit

    def _resolve_id(self, record_id: str, decision: Decision) -> str | None:
        """The stored id behind ``record_id`` as the caller's view names it (``None``: not visible by that name).

        In the de-identified view a patient is named by pseudonym only: a pseudonym resolves to the real id, and
        a real patient id is not found."""
        if decision.view != "deidentified" or self.view is None:
            return record_id
        real = self.view.resolve_patient(record_id, self._store)
        if real is not None:
            return real
        return None if record_id in self._store.patient_ids() else record_id

    # ------------------------------------------------------------------ reads
    def search(self, query: SearchQuery, *, action: Action | None = None) -> list[SearchHit]:
        decision = self.decide(action or self.read_as or Action.SEARCH)
        filters = self._filters(query.filters, decision)
        hits = self._store.search(query.model_copy(update={"filters": filters}))
        out = [self._out_hit(h, decision) for h in hits]
        self.log(
            decision.action.value,
            record_ids=[h.record_id for h in hits],
            query=query.text,
            detail={"mode": query.mode, "k": query.k, "hits": len(hits), "view": decision.view,
                    "consent_excluded": len(filters.exclude_patients)},
        )  # fmt: skip
        return out

    def get(self, record_id: str, *, version: int | None = None) -> StoredRecord | None:
        decision = self.decide(self.read_as or Action.READ)
        real_id = self._resolve_id(record_id, decision)
        if real_id is None:
            self.log("read", detail={"found": False})
            return None
        stored = self._store.get(real_id, version=version)
        if stored is not None and not self._visible(stored, decision):
            self.log(decision.action.value, record_ids=[real_id], detail={"withheld": "research opt-out"},
                     outcome="withheld")  # fmt: skip
            return None
        self.log(decision.action.value, record_ids=[real_id] if stored else [], detail={"found": stored is not None})
        return self._out_record(stored, decision) if stored is not None else None

    def history(self, record_id: str) -> list[StoredRecord]:
        decision = self.decide(self.read_as or Action.READ)
        real_id = self._resolve_id(record_id, decision)
        if real_id is None:
            return []
        versions = [s for s in self._store.history(real_id) if self._visible(s, decision)]
        self.log("read", record_ids=[real_id] if versions else [], detail={"versions": len(versions)})
        return [self._out_record(s, decision) for s in versions]

    def chunks_of(self, record_id: str) -> list[Chunk]:
        """The chunks of a visible record (texts through the view)."""
        decision = self.decide(self.read_as or Action.READ)
        real_id = self._resolve_id(record_id, decision)
        stored = self._store.get(real_id) if real_id is not None else None
        if stored is None or not self._visible(stored, decision):
            return []
        chunks = self._store.chunks_of(stored.record.id)
        if decision.view == "deidentified" and self.view is not None:
            view = self.view
            chunks = [c.model_copy(update={"text": view.text(c.text, stored.record.patient_id)}) for c in chunks]
        return chunks

    def iter_records(
        self, filters: SearchFilters | None = None, *, action: Action | None = None, batch: int = 1000
    ) -> Iterator[StoredRecord]:
        """Current records matching ``filters`` (consent exclusions pushed into the query); one audit event
        with the ids handed out, written when the iteration ends or is abandoned."""
        decision = self.decide(action or self.read_as or Action.READ)
        pushed = self._filters(filters or SearchFilters(), decision)
        seen: list[str] = []
        try:
            for stored in self._store.iter_records(pushed, batch=batch):
                seen.append(stored.record.id)
                yield self._out_record(stored, decision)
        finally:
            self.log(
                decision.action.value,
                record_ids=seen,
                detail={"records": len(seen), "view": decision.view,
                        "consent_excluded": len(pushed.exclude_patients)},
            )  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """Aggregate counts (no record content): any known principal may ask."""
        result = self._store.stats()
        self.log("stats")
        return result

    # ------------------------------------------------------------------ writes
    def write(
        self, records: Sequence[RecordBase], *, run_id: str | None = None, action: Action = Action.INGEST
    ) -> WriteResult:
        decision = self.decide(action)
        result = self._store.write(records, run_id=run_id)
        self.log(
            decision.action.value,
            record_ids=[*result.inserted_ids, *result.updated_ids],
            detail={"run_id": run_id, "inserted": result.inserted, "updated": result.updated,
                    "unchanged": result.unchanged},
        )  # fmt: skip
        return result

    def ingest(
        self,
        paths: Sequence[Path],
        *,
        options: IngestOptions,
        command: str = "ingest",
        progress: ProgressFn | None = None,
        on_problem: Callable[[FileProblem], None] | None = None,
        detail: dict[str, Any] | None = None,
    ) -> IngestReport:
        """Decide ``ingest``, run the ingest pipeline over this store and write ONE audit event for the run: run
        id and counts, the inputs as sha256 of their paths (a Synthea file name is a patient's name), never a path.
        ``detail`` adds caller fields to that event (token id, channel). A run that raises is audited as failed."""
        decision = self.decide(Action.INGEST)
        run_id = new_run_id()
        inputs = [sha256_text(str(p.resolve())) for p in paths]
        info: dict[str, Any] = {**(detail or {}), "run_id": run_id, "paths": len(paths),
                                "inputs_sha256": inputs[:20], "source_override": options.source_override is not None,
                                "force": options.force}  # fmt: skip
        try:
            report = IngestPipeline.with_options(self._store, options).run(
                paths, command=command, run_id=run_id, progress=progress, on_problem=on_problem
            )
        except BaseException:  # interrupted or a store failure: the run is still audited, then the error goes on
            self.log(decision.action.value, detail=info, outcome="error")
            raise
        total = report.total()
        self.log(
            decision.action.value,
            detail={**info, "files": total.files, "records": total.records, "inserted": total.inserted,
                    "updated": total.updated, "unchanged": total.unchanged, "chunks": total.chunks,
                    "problems": len(report.problems), "failed_files": report.failed_files,
                    "skipped": len(report.skipped)},
        )  # fmt: skip
        return report

    @property
    def path(self) -> Path:
        """The database that holds the governance side tables (principals, consent, lineage, erasure journal)."""
        return self.policy.db_path

    # ------------------------------------------------------------------ lineage + erasure (governance/lineage, erasure)
    def lineage(
        self,
        start: str,
        *,
        up: bool,
        depth: int = 4,
        hooks: Sequence[LineageHook] = (),
        detail: dict[str, Any] | None = None,
    ) -> LineageResult:
        """Decide ``lineage`` and walk from ``start`` as this caller's view names it, with the other layers'
        ``hooks``; audited with ids and hashes only (:func:`sage_health.data.governance.lineage.governed_lineage`)."""
        from sage_health.data.governance.lineage import governed_lineage

        return governed_lineage(self, self._store, start, up=up, depth=depth, hooks=hooks,
                                patients=self._store.patient_ids(), resolve=self._resolve_id,
                                detail=detail)  # fmt: skip

    def erase_patient(
        self,
        patient_id: str,
        *,
        reason: str,
        hooks: Sequence[ErasureHook] = (),
        detail: dict[str, Any] | None = None,
    ) -> ErasureResult:
        """Decide ``erase`` and erase one patient from this store and, through ``hooks``, from every other layer
        (order, journal and resumption: :mod:`sage_health.data.governance.erasure`)."""
        from sage_health.data.governance.erasure import erase

        return erase(self, self._store, patient_id, reason=reason, hooks=hooks, detail=detail)

    def audit_events(
        self,
        *,
        record_id: str | None = None,
        since: str | None = None,
        action: str | None = None,
        patient: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> AuditTrail:
        """Decide ``audit`` and read the audit log as this caller's view names it (de-identified view: patient ids
        as pseudonyms, ``patient`` given by pseudonym); the read is audited (:func:`.audit.read_events`)."""
        from sage_health.data.governance.audit import read_events

        decision = self.decide(Action.AUDIT)
        view = self.view

        def pseudonym(patient_id: str) -> str:
            assert view is not None  # noqa: S101 - only called in the de-identified view, which decide() checked
            return view.patient(patient_id) or patient_id

        trail, real = read_events(self.audit, deidentified=decision.view == "deidentified",
                                  pseudonym=pseudonym if view is not None else None,
                                  known_patients=self._store.patient_ids(), record_ids_of=self.record_ids_of,
                                  record_id=record_id, since=since, action=action, patient=patient)  # fmt: skip
        self.log(Action.AUDIT.value, record_ids=[real] if real else [],
                 detail={**(detail or {}), "op": "show", "events": len(trail.events), "view": trail.view})  # fmt: skip
        return trail

    # ------------------------------------------------------------------ consent checks (counts, never content)
    def resolve_viewed_id(self, viewed_id: str) -> str:
        """The stored id behind an id as this caller's view shows it (a pseudonym → the real patient id)."""
        decision = self.policy.decide(self.access, self.read_as or Action.READ)
        if self.view is not None and decision.view == "deidentified":
            return self.view.resolve_patient(viewed_id, self._store) or viewed_id
        return viewed_id

    def has_patient(self, patient_id: str) -> bool:
        """Whether the store holds records of ``patient_id`` (an existence check for consent and erasure)."""
        return patient_id in self._store.patient_ids()

    def indexed(self, record_ids: Sequence[str]) -> int:
        """How many of ``record_ids`` have chunks in the index (an index check: one decision, one audit event)."""
        decision = self.decide(self.read_as or Action.READ)
        count = sum(1 for rid in record_ids if self._store.chunks_of(rid))
        self.log(decision.action.value, record_ids=record_ids, detail={"check": "indexed", "indexed": count})
        return count

    def record_ids_of(self, patient_id: str) -> set[str]:
        """The ids of ``patient_id``'s records (ids only; for the audit trail of one patient)."""
        return {s.record.id for s in self._store.iter_records(SearchFilters(patient_id=patient_id))}

    def opted_out_with_records(self, filters: SearchFilters | None = None) -> int:
        """How many patients who opted out of research (now) have current records matching ``filters``
        (counted, never read): the consent exclusion a snapshot or export reports."""
        present = sorted(set(self.policy.opted_out()) & self._store.patient_ids())
        if filters is None or filters.is_empty():
            return len(present)
        count = 0
        for patient in present:
            scoped = filters.model_copy(update={"patient_id": patient})
            if any(True for _ in self._store.iter_records(scoped, batch=1)):
                count += 1
        return count

    def opted_out_owners(self, record_ids: set[str]) -> int:
        """How many patients who opted out (now, fresh) own at least one of ``record_ids``."""
        count = 0
        for patient in sorted(set(self.policy.opted_out()) & self._store.patient_ids()):
            ids = {s.record.id for s in self._store.iter_records(SearchFilters(patient_id=patient))}
            if ids & record_ids:
                count += 1
        return count


def open_governed(
    settings: Settings, store: GovernableStore, *, principal: str | None = None, purpose: str | None = None
) -> GovernedStore:
    """The governed store for ``settings.principal`` / ``settings.purpose`` (or the explicit overrides).

    A missing principal or purpose, an unknown principal or purpose is a :class:`PolicyViolation` with a fix."""
    who = principal or settings.principal
    why = purpose or settings.purpose
    if not who:
        raise PolicyViolation(
            "no principal given: pass --as NAME or set SAGE_PRINCIPAL "
            "(built-ins: clinician, researcher, data_steward, admin)"
        )
    policy = PolicyEngine(settings.db_path)
    access = policy.access(who, why)
    view = None
    if any(r.view == "deidentified" for r in RULES if r.role == access.principal.role):
        from sage_health.data.governance.views import build_view

        view = build_view(settings)
    return GovernedStore(store=store, access=access, policy=policy, audit=AuditLog.for_settings(settings), view=view)
