"""``sage-health audit verify|show``: check and read the tamper-evident audit log."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sage_health.core.errors import SageError
from sage_health.interfaces.cli.common import Cli, out, run_command, session_command
from sage_health.services import audit as audit_service

audit_app = typer.Typer(help="The tamper-evident audit log: verify the chain, show events.", no_args_is_help=True)


class AuditTampered(SageError):
    """The audit log failed verification."""


@audit_app.command("verify")
@session_command
def verify(cli: Cli) -> None:
    """Walk the hash chain and the anchor; exit 1 naming the first bad position when anything was changed.
    Policy: ``audit`` (data stewards, admins)."""

    def body() -> None:
        with cli.session() as session:
            result = audit_service.verify(session)
        cli.emit(audit_service.verification_json(result), lambda: out.print(result.line()))
        if not result.ok:
            raise AuditTampered(result.line())

    run_command(body)


@audit_app.command("show")
@session_command
def show(
    cli: Cli,
    record: Annotated[str | None, typer.Option("--record", help="Only events naming this record id.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time, e.g. 2026-11-01.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="Only this action.")] = None,
    patient: Annotated[
        str | None,
        typer.Option(
            "--patient",
            help="Only events naming this patient or one of their records (admins: the patient's pseudonym).",
        ),
    ] = None,
) -> None:
    """Events in order (ids and hashes only; the log holds no record content, query text or file paths). Admins see
    patients' pseudonyms. Policy: ``audit`` (data stewards, admins)."""

    def body() -> None:
        with cli.session() as session:
            found = audit_service.show(session, record=record, since=since, action=action, patient=patient)

        def render() -> None:
            table = Table("seq", "at", "principal", "purpose", "action", "records / query")
            for e in found.events:
                target = ", ".join(e.record_ids[:3]) + (" …" if len(e.record_ids) > 3 else "")
                query = f"query sha256 {e.query_sha256[:12]}" if e.query_sha256 else ""
                table.add_row(str(e.seq), e.at, e.principal, e.purpose or "", e.action, escape(target) or query)
            out.print(table)

        cli.emit(audit_service.events_json(found), render)

    run_command(body)
