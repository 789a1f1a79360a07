"""``sage-health principals add|list|deactivate`` and ``sage-health consent set|import|list``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from sage_health.core.errors import ValidationError
from sage_health.data.governance.access import open_governed
from sage_health.data.governance.erasure import erase_patient
from sage_health.data.governance.lineage import LineageNode, LineageStore, walk
from sage_health.data.governance.policy import Action, ConsentRecord, Principal, read_consent_file
from sage_health.data.store.factory import open_store
from sage_health.interfaces.cli.common import (
    AsOpt,
    JsonOpt,
    PurposeOpt,
    StoreOpt,
    echo_json,
    evaluation_access,
    out,
    run_command,
    settings_for,
)

principals_app = typer.Typer(help="Principals (who may act) and their roles.", no_args_is_help=True)
consent_app = typer.Typer(help="Patient consent (research opt-out / opt-in), managed by data stewards.")


def _principal_json(p: Principal) -> dict[str, object]:
    return {"name": p.name, "role": p.role, "active": p.active, "builtin": p.builtin, "created_at": p.created_at,
            "created_by": p.created_by}  # fmt: skip


def _consent_json(c: ConsentRecord) -> dict[str, object]:
    return {"id": c.id, "patient_id": c.patient_id, "scope": c.scope, "decision": c.decision,
            "effective_from": c.effective_from, "effective_until": c.effective_until,
            "recorded_by": c.recorded_by, "reason": c.reason, "recorded_at": c.recorded_at}  # fmt: skip


@principals_app.command("list")
def principals_list(
    store: StoreOpt = None, as_: AsOpt = None, purpose: PurposeOpt = None, as_json: JsonOpt = False
) -> None:
    """Every principal with its role (policy: ``principals``, admins)."""

    def body() -> None:
        governed = evaluation_access(settings_for(store, as_, purpose), Action.PRINCIPALS)
        found = governed.policy.principals()
        governed.log(Action.PRINCIPALS.value, detail={"listed": len(found)})
        if as_json:
            echo_json([_principal_json(p) for p in found])
            return
        table = Table("name", "role", "active", "built-in", "created", "by")
        for p in found:
            table.add_row(p.name, p.role, "yes" if p.active else "no", "yes" if p.builtin else "", p.created_at,
                          p.created_by or "")  # fmt: skip
        out.print(table)

    run_command(body)


@principals_app.command("add")
def principals_add(
    name: Annotated[str, typer.Argument(help="New principal name (lower case, e.g. dr.jones).")],
    role: Annotated[str, typer.Option("--role", help="clinician, researcher, data_steward or admin.")],
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a named principal (policy: ``principals``, admins)."""

    def body() -> None:
        governed = evaluation_access(settings_for(store, as_, purpose), Action.PRINCIPALS)
        added = governed.policy.add_principal(name, role, by=governed.access)
        governed.log(Action.PRINCIPALS.value, detail={"added": name, "role": role})
        if as_json:
            echo_json(_principal_json(added))
        else:
            out.print(f"principal {added.name} ({added.role}) added")

    run_command(body)


@principals_app.command("deactivate")
def principals_deactivate(
    name: Annotated[str, typer.Argument(help="Principal to deactivate (built-ins cannot be).")],
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
) -> None:
    """Deactivate a principal: it can no longer act (policy: ``principals``)."""

    def body() -> None:
        governed = evaluation_access(settings_for(store, as_, purpose), Action.PRINCIPALS)
        governed.policy.set_active(name, False, by=governed.access)
        governed.log(Action.PRINCIPALS.value, detail={"deactivated": name})
        out.print(f"principal {name} deactivated")

    run_command(body)


@consent_app.command("set")
def consent_set(
    patient: Annotated[str, typer.Option("--patient", help="Patient record id.")],
    opt_out: Annotated[bool, typer.Option("--opt-out", help="The patient opts out of research use.")] = False,
    opt_in: Annotated[bool, typer.Option("--opt-in", help="The patient (again) allows research use.")] = False,
    effective_from: Annotated[str | None, typer.Option("--from", help="YYYY-MM-DD (default today).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="YYYY-MM-DD (open-ended when omitted).")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (e.g. the form's reference).")] = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Record one consent decision (policy: ``consent``, data stewards)."""

    def body() -> None:
        if opt_in == opt_out:
            raise ValidationError("pass exactly one of --opt-out or --opt-in")
        governed = evaluation_access(settings_for(store, as_, purpose), Action.CONSENT)
        if not governed.has_patient(patient):
            raise ValidationError(f"unknown patient {patient}: no such record in the store")
        rec = governed.policy.record_consent(
            patient,
            "opt_out" if opt_out else "opt_in",
            by=governed.access,
            effective_from=effective_from,
            effective_until=until,
            reason=reason,
        )
        governed.log(
            Action.CONSENT.value, record_ids=[patient], detail={"decision": rec.decision, "consent_id": rec.id}
        )
        if as_json:
            echo_json(_consent_json(rec))
        else:
            out.print(f"consent {rec.id}: {patient} {rec.decision} ({rec.scope}) from {rec.effective_from}")

    run_command(body)


@consent_app.command("import")
def consent_import(
    file: Annotated[Path, typer.Argument(help="CSV (patient_id,decision[,scope,effective_from,...]), JSON or JSONL.")],
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Import consent decisions: every row is checked first, then all are stored or none (policy: ``consent``)."""

    def body() -> None:
        governed = evaluation_access(settings_for(store, as_, purpose), Action.CONSENT)
        rows = read_consent_file(file)
        records = governed.policy.import_consents(rows, by=governed.access, where=f"{file}: ")
        governed.log(Action.CONSENT.value, record_ids=[r.patient_id for r in records],
                     detail={"imported": len(records), "file": file.name})  # fmt: skip
        if as_json:
            echo_json([_consent_json(r) for r in records])
        else:
            out.print(f"{len(records)} consent decisions imported from {file.name}")

    run_command(body)


@consent_app.command("list")
def consent_list(
    patient: Annotated[str | None, typer.Option("--patient", help="Only this patient.")] = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Consent decisions in the order recorded, and who is opted out today (policy: ``consent``)."""

    def body() -> None:
        governed = evaluation_access(settings_for(store, as_, purpose), Action.CONSENT)
        found = governed.policy.consents(patient)
        governed.log(Action.CONSENT.value, record_ids=[patient] if patient else [], detail={"listed": len(found)})
        if as_json:
            echo_json({"consents": [_consent_json(c) for c in found], "opted_out": list(governed.policy.opted_out())})
            return
        table = Table("id", "patient", "scope", "decision", "from", "until", "by", "reason")
        for c in found:
            table.add_row(str(c.id), c.patient_id, c.scope, c.decision, c.effective_from, c.effective_until or "",
                          c.recorded_by, c.reason or "")  # fmt: skip
        out.print(table)

    run_command(body)


def erase(
    patient: Annotated[str, typer.Option("--patient", help="Patient record id whose data is erased.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log as a hash).")],
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Erase a patient: records, versions, chunks, vectors, FTS rows and agent runs in one transaction; snapshots
    and model versions built on them are marked tainted. Policy: ``erase`` (data stewards only)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        with open_store(settings) as raw:
            governed = open_governed(settings, raw)
            result = erase_patient(governed, patient, reason=reason)
        payload = {"patient_id": result.patient_id, "records": result.records, "runs": result.runs,
                   "tainted": list(result.tainted), "consistent": result.consistent,
                   "problems": list(result.problems)}  # fmt: skip
        if as_json:
            echo_json(payload)
        else:
            out.print(
                f"erased patient {patient}: {result.records} records, {result.runs} agent runs; "
                f"{len(result.tainted)} snapshots/models tainted; store "
                + ("consistent" if result.consistent else "INCONSISTENT: " + "; ".join(result.problems))
            )
        if not result.consistent:
            raise typer.Exit(1)

    run_command(body)


def _tree(node: LineageNode, tree: Tree) -> None:
    for child in node.children:
        label = f"[dim]{child.relation}[/] [bold]{escape(child.node)}[/]" + (
            f" [dim]({escape(child.detail)})[/]" if child.detail else ""
        )
        _tree(child, tree.add(label))


def lineage(
    node: Annotated[str, typer.Argument(help="Record id, file:PATH, snapshot:NAME@HASH or model:NAME@VERSION.")],
    up: Annotated[
        bool, typer.Option("--up", help="Walk towards sources (default: towards derived artifacts).")
    ] = False,
    down: Annotated[bool, typer.Option("--down", help="Walk towards derived artifacts (the default).")] = False,
    depth: Annotated[int, typer.Option("--depth", min=0, max=10)] = 4,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Lineage: source file → records → chunks/vectors → snapshots → model versions → generated reports, and back.
    Policy: ``lineage`` (data stewards, researchers, admins)."""

    def body() -> None:
        if up and down:
            raise ValidationError("pass --up or --down, not both")
        settings = settings_for(store, as_, purpose)
        governed = evaluation_access(settings, Action.LINEAGE)
        tree_root = walk(governed._store.connection, LineageStore(settings.db_path), node, up=up, depth=depth)
        governed.log(Action.LINEAGE.value, record_ids=[node], detail={"direction": "up" if up else "down"})
        if as_json:
            echo_json(tree_root.as_dict())
            return
        tree = Tree(f"[bold]{escape(tree_root.node)}[/]" + (f" [dim]({escape(tree_root.detail)})[/]"
                                                              if tree_root.detail else ""))  # fmt: skip
        _tree(tree_root, tree)
        out.print(tree)

    run_command(body)
