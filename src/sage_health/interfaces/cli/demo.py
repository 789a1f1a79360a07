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
from sage_health.core.errors import RecordNotFoundError, SageError
from sage_health.data.store.protocol import SearchFilters, SearchHit
from sage_health.interfaces.cli.common import session_as
from sage_health.services import audit as audit_service
from sage_health.services import ingest as ingest_service
from sage_health.services import records
from sage_health.services.session import Runtime, Session


def _cite(out: Console, title: str, hits: tuple[SearchHit, ...]) -> None:
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


def _ingest(steward: Session, data_dir: Path, out: Console, err: Console) -> None:
    settings = steward.settings
    out.print(
        f"[bold]1. Ingest[/] {data_dir} into {settings.store} as data_steward (operations; idempotent: unchanged "
        "files are skipped)"
    )
    with Progress(
        TextColumn("[bold]ingest"), BarColumn(), DownloadColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        task = progress.add_task("ingest", total=None)

        def on_progress(p: ingest_service.IngestProgress) -> None:
            progress.update(task, total=p.bytes_total or None, completed=p.bytes_done)

        report = ingest_service.ingest(steward, [data_dir], command="demo", on_progress=on_progress)
    t = report.total
    out.print(
        f"   run {report.run_id}: {t.inserted:,} new, {t.updated:,} updated, {t.unchanged:,} unchanged records, "
        f"{t.chunks:,} chunks, {len(report.problems)} problems, {len(report.skipped)} files skipped, "
        f"{report.seconds:.0f} s"
    )
    for problem in report.problems[:10]:
        out.print(f"   [red]rejected[/] {problem.line()}", highlight=False)
    stats = records.stats(steward)
    out.print(
        f"   store: {stats.records:,} records ({stats.patients} patients), {stats.chunks:,} chunks, "
        f"{stats.bytes_on_disk / 2**20:.0f} MiB; by type: " + ", ".join(f"{k} {v:,}" for k, v in stats.by_type.items())
    )


def _searches(clinician: Session, out: Console) -> str | None:
    """The cited example searches; returns the Synthea patient the patient-scoped search used (if any)."""
    out.print(
        "\n[bold]2. Hybrid search with evidence[/] as clinician (treatment): BM25 + MiniLM dense, reciprocal-rank "
        "fusion"
    )
    examples = (
        ("Radiology", "enlarged heart with pleural effusion", "DiagnosticReport, impression section",
         SearchFilters(resource_types=("DiagnosticReport",), sections=("impression",))),
        ("Knowledge", "What are the early symptoms of glaucoma?", "KnowledgeDocument",
         SearchFilters(resource_types=("KnowledgeDocument",))),
        ("Imaging", "COVID-19 pneumonia chest X-ray", "Image records; pixels stay in their files",
         SearchFilters(resource_types=("Image",))),
    )  # fmt: skip
    for kind, text, what, filters in examples:
        _cite(out, f"{kind}: '{text}' ({what})", records.search(clinician, text, k=3, filters=filters).hits)
    patients = records.search(
        clinician, "patient", k=1, filters=SearchFilters(resource_types=("Patient",), sources=("synthea",))
    ).hits
    if not patients:
        return None
    patient = patients[0].patient_id or patients[0].record_id
    ctx = records.timeline(
        clinician, patient, "blood pressure and cholesterol", k=5, since=datetime(2010, 1, 1, tzinfo=UTC)
    )
    _cite(
        out,
        f"Patient-scoped, since 2010: 'blood pressure and cholesterol' for {patient} "
        f"({len(ctx.timeline)} timeline records; hits in date order)",
        tuple(ctx.hits),
    )
    return patient


def _researcher_view(researcher: Session, out: Console) -> None:
    hits = records.search(
        researcher, "patient demographics address birth", k=1, filters=SearchFilters(resource_types=("Patient",))
    ).hits
    _cite(
        out,
        "The same kind of record as a researcher (research purpose) receives it: de-identified text, pseudonymous "
        "patient id, scrubbed file path; opted-out patients excluded inside the query",
        hits,
    )


def run_demo(settings: Settings, out: Console, err: Console) -> None:
    """Each step acts as the built-in principal whose role it is: the data steward ingests, a clinician searches
    and drafts for treatment, a researcher sees the same patient de-identified; every step is audited (by the
    services it calls)."""
    data_dir = settings.data_dir
    if not data_dir.is_dir():
        raise SageError(
            f"public data not found at {data_dir}; set SAGE_DATA_DIR (see README: Data) and re-run `make demo`"
        )
    runtime = Runtime()
    try:
        with session_as(settings, "data_steward", "operations", runtime=runtime) as steward:
            _ingest(steward, data_dir, out, err)
        with session_as(settings, "clinician", "treatment", runtime=runtime) as clinician:
            if _searches(clinician, out) is not None:
                with session_as(settings, "researcher", "research", runtime=runtime) as researcher:
                    _researcher_view(researcher, out)
            run_radiology_demo(clinician, out)
        with session_as(settings, "data_steward", "operations", runtime=runtime) as steward:
            check = audit_service.verify(steward)
        out.print(
            f"\n[bold]6. Audit[/]: {check.events:,} events in the hash-chained log; verify: "
            + ("[green]intact[/]" if check.ok else f"[red]BROKEN at {check.first_bad_seq}: {check.reason}[/]")
            + " (`sage-health audit show --as data_steward --purpose operations`)"
        )
    finally:
        runtime.close()
    out.print(
        "\nTry: [bold].venv/bin/sage-health search 'pneumothorax' --type DiagnosticReport[/], "
        "[bold]sage-health radiology draft --study-id iu-xray/DiagnosticReport/3[/], "
        "[bold]sage-health runs[/], [bold]sage-health show <record id>[/], [bold]sage-health doctor[/]"
    )


DEMO_STUDIES = ("iu-xray/DiagnosticReport/7", "iu-xray/DiagnosticReport/1900", "iu-xray/DiagnosticReport/3")


def run_radiology_demo(clinician: Session, out: Console) -> None:
    """Draft reports for the IU studies that have images, approve the first with an edit, print its trace."""
    from sage_health.apps.radiology.workflow import report_text
    from sage_health.interfaces.cli.radiology import print_outcome, trace_tree
    from sage_health.services import radiology, traces

    out.print(
        "\n[bold]3. Chest X-ray report workflow[/] (planner → retriever → safety screen → imaging → writer → "
        "verifier → safety → radiologist)"
    )
    outcomes = []
    for study in DEMO_STUDIES:
        try:
            records.show(clinician, study)
        except RecordNotFoundError:
            out.print(f"   study {study} is not in the store; skipped")
            continue
        out.print(f"\n   study {study}: indication and images from the stored study; drafting …")
        outcome = radiology.draft(clinician, study_id=study)
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
    review = radiology.review(clinician, first.run_id, approve=True, edited=edited)
    out.print(
        f"   signed {review.record_id} v{review.record_version} ({review.feedback_kind}); feedback event stored for "
        "the co-evolution loop"
    )
    out.print(Panel(review.diff or "no change", title="edit diff (draft → signed)", title_align="left"))
    run = traces.trace(clinician, first.run_id)
    out.print("\n[bold]5. The persisted trace[/] (`sage-health trace RUN_ID`)")
    out.print(trace_tree(run.run, run.steps))
