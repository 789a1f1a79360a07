"""``make demo`` / ``sage-health demo``: ingest the shared data, show cited search results, then run the chest
X-ray report workflow on IU X-ray studies that have images: draft (evidence, verifier notes), approve one with a
radiologist's edit (signed report + feedback event), and print its trace."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from sage_health.core.config import Settings
from sage_health.core.errors import SageError
from sage_health.data.governance.access import GovernedStore, open_governed
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.policy import Action
from sage_health.data.ingest.pipeline import IngestPipeline, expand_paths
from sage_health.data.retrieval import patient_context
from sage_health.data.store.protocol import SearchFilters, SearchHit, SearchQuery
from sage_health.data.store.sqlite import SqliteDocumentStore


def _cite(out: Console, title: str, hits: list[SearchHit]) -> None:
    lines = []
    for hit in hits:
        prov = hit.provenance
        where = f"{Path(prov.source_file).name}:{prov.locator}" if prov.source_file else "n/a"
        when = f" {hit.effective.date().isoformat()}" if hit.effective else ""
        lines.append(
            f"[bold][{hit.rank}][/] {hit.text[:220]}{'…' if len(hit.text) > 220 else ''}\n"
            f"    [dim]evidence: {hit.record_id} v{hit.record_version} · {hit.resource_type}/{hit.section}{when} · "
            f"{where} · score {hit.score:.4f} (bm25 #{hit.bm25_rank or '-'}, dense #{hit.dense_rank or '-'})[/]"
        )
    out.print(Panel("\n".join(lines) or "no results", title=title, title_align="left"))


def run_demo(settings: Settings, raw: SqliteDocumentStore, out: Console, err: Console) -> None:
    """Each step acts as the built-in principal whose role it is: the data steward ingests, a clinician searches
    and drafts for treatment, a researcher sees the same patient de-identified; every step is audited."""
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        raise SageError(
            f"public data not found at {data_dir}; set SAGE_DATA_DIR (see README: Data) and re-run `make demo`"
        )
    with raw:
        steward = open_governed(settings, raw, principal="data_steward", purpose="operations")
        steward.decide(Action.INGEST)
        store = open_governed(settings, raw, principal="clinician", purpose="treatment")
        pipeline = IngestPipeline(
            raw, batch_records=settings.batch_records, max_file_bytes=int(settings.max_file_mb * 2**20)
        )
        total = sum(f.stat().st_size for f, _ in expand_paths([data_dir]))
        out.print(
            f"[bold]1. Ingest[/] {data_dir} into {settings.store} as data_steward (operations; idempotent: unchanged "
            "files are skipped)"
        )
        with Progress(
            TextColumn("[bold]ingest"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=err
        ) as progress:
            task = progress.add_task("ingest", total=total)
            report = pipeline.run([data_dir], command="demo", progress=lambda _e, size: progress.advance(task, size))
        t = report.total()
        steward.log(
            Action.INGEST.value,
            detail={"run_id": report.run_id, "records": t.records, "inserted": t.inserted, "demo": True},
        )
        out.print(
            f"   run {report.run_id}: {t.inserted:,} new, {t.updated:,} updated, {t.unchanged:,} unchanged records, "
            f"{t.chunks:,} chunks, {len(report.problems)} problems, {len(report.skipped)} files skipped, "
            f"{report.seconds:.0f} s"
        )
        for problem in report.problems[:10]:
            out.print(f"   [red]rejected[/] {problem.line()}", highlight=False)
        stats = steward.stats()
        out.print(
            f"   store: {stats['records']:,} records ({stats['patients']} patients), {stats['chunks']:,} chunks, "
            f"{stats['bytes_on_disk'] / 2**20:.0f} MiB; by type: "
            + ", ".join(f"{k} {v:,}" for k, v in stats["by_type"].items())
        )

        out.print(
            "\n[bold]2. Hybrid search with evidence[/] as clinician (treatment): BM25 + MiniLM dense, reciprocal-rank "
            "fusion"
        )
        _cite(
            out,
            "Radiology: 'enlarged heart with pleural effusion' (DiagnosticReport, impression section)",
            store.search(
                SearchQuery(
                    text="enlarged heart with pleural effusion",
                    k=3,
                    filters=SearchFilters(resource_types=("DiagnosticReport",), sections=("impression",)),
                )
            ),
        )
        _cite(
            out,
            "Knowledge: 'What are the early symptoms of glaucoma?' (KnowledgeDocument)",
            store.search(
                SearchQuery(
                    text="What are the early symptoms of glaucoma?",
                    k=3,
                    filters=SearchFilters(resource_types=("KnowledgeDocument",)),
                )
            ),
        )
        _cite(
            out,
            "Imaging: 'COVID-19 pneumonia chest X-ray' (Image records; pixels stay in their files)",
            store.search(
                SearchQuery(
                    text="COVID-19 pneumonia chest X-ray",
                    k=3,
                    filters=SearchFilters(resource_types=("Image",)),
                )
            ),
        )
        patient = next(
            (s.record for s in store.iter_records(SearchFilters(resource_types=("Patient",), sources=("synthea",)))),
            None,
        )
        if patient is not None:
            ctx = patient_context(
                store,
                patient.id,
                "blood pressure and cholesterol",
                k=5,
                since=datetime(2010, 1, 1, tzinfo=UTC),
            )
            _cite(
                out,
                f"Patient-scoped, since 2010: 'blood pressure and cholesterol' for {patient.id} "
                f"({len(ctx.timeline)} timeline records; hits in date order)",
                ctx.hits,
            )
            _researcher_view(settings, raw, out)
        run_radiology_demo(settings, store, out)
        check = AuditLog.for_settings(settings).verify()
        out.print(
            f"\n[bold]6. Audit[/]: {check.events:,} events in the hash-chained log; verify: "
            + ("[green]intact[/]" if check.ok else f"[red]BROKEN at {check.first_bad_seq}: {check.reason}[/]")
            + " (`sage-health audit show --as data_steward --purpose operations`)"
        )
        out.print(
            "\nTry: [bold].venv/bin/sage-health search 'pneumothorax' --type DiagnosticReport[/], "
            "[bold]sage-health radiology draft --study-id iu-xray/DiagnosticReport/3[/], "
            "[bold]sage-health runs[/], [bold]sage-health show <record id>[/], [bold]sage-health doctor[/]"
        )


DEMO_STUDIES = ("iu-xray/DiagnosticReport/7", "iu-xray/DiagnosticReport/1900", "iu-xray/DiagnosticReport/3")


def _researcher_view(settings: Settings, raw: SqliteDocumentStore, out: Console) -> None:
    researcher = open_governed(settings, raw, principal="researcher", purpose="research")
    hits = researcher.search(
        SearchQuery(text="patient demographics address birth", k=1, filters=SearchFilters(resource_types=("Patient",)))
    )
    _cite(
        out,
        "The same kind of record as a researcher (research purpose) receives it: de-identified text, pseudonymous "
        "patient id, scrubbed file path; opted-out patients excluded inside the query",
        hits,
    )


def run_radiology_demo(settings: Settings, store: GovernedStore, out: Console) -> None:
    """Draft reports for the IU studies that have images, approve the first with an edit, print its trace."""
    from sage_health.agents.base import AgentContext
    from sage_health.agents.trace import TraceStore
    from sage_health.apps.radiology.workflow import draft_report, prepare_request, report_text, review_draft
    from sage_health.interfaces.cli.radiology import print_outcome, trace_tree

    ctx = AgentContext.create(settings, store)
    out.print(
        "\n[bold]3. Chest X-ray report workflow[/] (planner → retriever → safety screen → imaging → writer → "
        "verifier → safety → radiologist)"
    )
    outcomes = []
    for study in DEMO_STUDIES:
        if store.get(study) is None:
            out.print(f"   study {study} is not in the store; skipped")
            continue
        request = prepare_request(ctx, indication=None, study_id=study)
        out.print(f"\n   study {study}: indication from the stored study, {len(request.images)} image(s); drafting …")
        outcome = draft_report(ctx, request)
        print_outcome(outcome)
        outcomes.append(outcome)
    approvable = [o for o in outcomes if not o.blocked and o.findings and o.impression]
    if not approvable:
        out.print("   no draft could be approved (all blocked or empty); see the notes above")
        return
    first = approvable[0]
    edited = report_text(
        first.findings + " No pneumothorax.", first.impression.rstrip(".") + ", reviewed by the demo radiologist."
    )
    out.print(f"\n[bold]4. Radiologist review[/] of {first.run_id}: one sentence added, impression reworded, approved")
    review = review_draft(ctx, first.run_id, approve=True, edited=edited)
    out.print(
        f"   signed {review.record_id} v{review.record_version} ({review.feedback_kind}); feedback event stored for "
        "the co-evolution loop"
    )
    out.print(Panel(review.diff or "no change", title="edit diff (draft → signed)", title_align="left"))
    traces = TraceStore(settings.db_path)
    out.print("\n[bold]5. The persisted trace[/] (`sage-health trace RUN_ID`)")
    out.print(trace_tree(traces.get_run(first.run_id), traces.steps(first.run_id)))
