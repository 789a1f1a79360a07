"""``sage-health audit verify|show``: check and read the tamper-evident audit log."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sage_health.core.errors import SageError
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.policy import Action
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

audit_app = typer.Typer(help="The tamper-evident audit log: verify the chain, show events.", no_args_is_help=True)


class AuditTampered(SageError):
    """The audit log failed verification."""


@audit_app.command("verify")
def verify(store: StoreOpt = None, as_: AsOpt = None, purpose: PurposeOpt = None, as_json: JsonOpt = False) -> None:
    """Walk the hash chain and the anchor; exit 1 naming the first bad position when anything was changed.
    Policy: ``audit`` (data stewards, admins)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        evaluation_access(settings, Action.AUDIT)
        result = AuditLog.for_settings(settings).verify()
        if as_json:
            echo_json(
                {"ok": result.ok, "events": result.events, "first_bad_seq": result.first_bad_seq,
                 "reason": result.reason, "note": result.note}
            )  # fmt: skip
        else:
            out.print(result.line())
        if not result.ok:
            raise AuditTampered(result.line())

    run_command(body)


@audit_app.command("show")
def show(
    record: Annotated[str | None, typer.Option("--record", help="Only events naming this record id.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time, e.g. 2026-11-01.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    patient: Annotated[
        str | None, typer.Option("--patient", help="Only events naming this patient or one of their records.")
    ] = None,
    store: StoreOpt = None,
    as_: AsOpt = None,
    purpose: PurposeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Events in order (ids and hashes only; the log holds no record content or query text).
    Policy: ``audit`` (data stewards, admins)."""

    def body() -> None:
        settings = settings_for(store, as_, purpose)
        governed = evaluation_access(settings, Action.AUDIT)
        events = AuditLog.for_settings(settings).events(record_id=record, since=since, action=action)
        if patient:
            ids = {patient} | governed.record_ids_of(patient)
            events = [e for e in events if ids.intersection(e.record_ids)]
        governed.log(Action.AUDIT.value, record_ids=[patient] if patient else [], detail={"events": len(events)})
        if as_json:
            echo_json([e.model_dump(mode="json") for e in events])
            return
        table = Table("seq", "at", "principal", "purpose", "action", "records / query")
        for e in events:
            target = ", ".join(e.record_ids[:3]) + (" …" if len(e.record_ids) > 3 else "")
            table.add_row(str(e.seq), e.at, e.principal, e.purpose or "", e.action,
                          target or (f"query sha256 {e.query_sha256[:12]}" if e.query_sha256 else ""))  # fmt: skip
        out.print(table)

    run_command(body)
