"""``sage-health principals add|list|deactivate``, ``principals token create|list|revoke``, ``auth enable|status``,
``consent set|import|list``, ``erase`` and ``lineage``: parse, call the service, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from sage_health.core.errors import ValidationError
from sage_health.interfaces.cli.common import Cli, err, out, run_command, session_command
from sage_health.services import erasure as erasure_service
from sage_health.services import governance
from sage_health.services import lineage as lineage_service

principals_app = typer.Typer(help="Principals (who may act), their roles and their API tokens.", no_args_is_help=True)
token_app = typer.Typer(
    help="API tokens: a principal proves who it is with a token (shown once; only its hash is stored).",
    no_args_is_help=True,
)
principals_app.add_typer(token_app, name="token")
auth_app = typer.Typer(help="Whether this store requires credentials (SAGE_TOKEN) from every caller.",
                       no_args_is_help=True)  # fmt: skip
consent_app = typer.Typer(help="Patient consent (research opt-out / opt-in), managed by data stewards.")


# --------------------------------------------------------------------------- principals


@principals_app.command("list")
@session_command
def principals_list(cli: Cli) -> None:
    """Every principal with its role (policy: ``principals``, admins)."""

    def body() -> None:
        with cli.session() as session:
            found = governance.list_principals(session)

        def render() -> None:
            table = Table("name", "role", "active", "built-in", "created", "by")
            for p in found:
                table.add_row(p.name, p.role, "yes" if p.active else "no", "yes" if p.builtin else "", p.created_at,
                              p.created_by or "")  # fmt: skip
            out.print(table)

        cli.emit([governance.principal_json(p) for p in found], render)

    run_command(body)


@principals_app.command("add")
@session_command
def principals_add(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="New principal name (lower case, e.g. dr.jones).")],
    role: Annotated[str, typer.Option("--role", help="clinician, researcher, data_steward or admin.")],
) -> None:
    """Add a named principal (policy: ``principals``, admins); give it a token with ``principals token create``."""

    def body() -> None:
        with cli.session() as session:
            added = governance.add_principal(session, name, role)
        cli.emit(governance.principal_json(added), lambda: out.print(f"principal {added.name} ({added.role}) added"))

    run_command(body)


@principals_app.command("deactivate")
@session_command
def principals_deactivate(
    cli: Cli, name: Annotated[str, typer.Argument(help="Principal to deactivate (built-ins cannot be).")]
) -> None:
    """Deactivate a principal: it can no longer act, and its tokens stop working (policy: ``principals``)."""

    def body() -> None:
        with cli.session() as session:
            done = governance.deactivate_principal(session, name)
        cli.emit(governance.principal_json(done), lambda: out.print(f"principal {done.name} deactivated"))

    run_command(body)


# --------------------------------------------------------------------------- tokens


@token_app.command("create")
@session_command
def token_create(
    cli: Cli,
    name: Annotated[str, typer.Argument(help="The principal the token proves (e.g. admin, dr.jones).")],
    expires: Annotated[
        int | None, typer.Option("--expires", help="Days until the token expires (default: never).")
    ] = None,
    label: Annotated[str | None, typer.Option("--label", help="A note for `token list` (e.g. the laptop).")] = None,
) -> None:
    """Issue a token and print it ONCE (only its hash is stored). The first token of a store must be an admin's,
    and issuing it switches authentication on: from then on every command needs SAGE_TOKEN. Policy: ``principals``.
    """

    def body() -> None:
        with cli.session() as session:
            issued = governance.create_token(session, name, expires_days=expires, label=label)

        def render() -> None:
            info = issued.info
            expiry = f"expires {info.expires_at}" if info.expires_at else "does not expire"
            out.print(f"token {info.id} for {info.principal} ({expiry}):", highlight=False)
            typer.echo(issued.token)
            err.print("Store it now: it is not shown again. Use it as SAGE_TOKEN (CLI) or "
                      "`Authorization: Bearer <token>` (API).", highlight=False)  # fmt: skip
            if issued.enabled_auth:
                err.print("[bold]Authentication is now required on this store[/]: --as alone grants nothing; "
                          "set SAGE_TOKEN.", highlight=False)  # fmt: skip

        cli.emit(governance.issued_json(issued), render)

    run_command(body)


@token_app.command("list")
@session_command
def token_list(
    cli: Cli, principal: Annotated[str | None, typer.Option("--principal", help="Only this principal's.")] = None
) -> None:
    """Tokens with their id, owner, state and dates; never a secret (policy: ``principals``)."""

    def body() -> None:
        with cli.session() as session:
            found = governance.list_tokens(session, principal)

        def render() -> None:
            table = Table("id", "principal", "state", "created", "expires", "last used", "label")
            for t in found:
                table.add_row(t.id, t.principal, t.state, t.created_at, t.expires_at or "never",
                              t.last_used_at or "", escape(t.label or ""))  # fmt: skip
            out.print(table)

        cli.emit([governance.token_json(t) for t in found], render)

    run_command(body)


@token_app.command("revoke")
@session_command
def token_revoke(cli: Cli, token_id: Annotated[str, typer.Argument(help="The token id (from `token list`).")]) -> None:
    """Revoke a token: it stops working at once (policy: ``principals``)."""

    def body() -> None:
        with cli.session() as session:
            info = governance.revoke_token(session, token_id)
        cli.emit(governance.token_json(info), lambda: out.print(f"token {info.id} of {info.principal} revoked"))

    run_command(body)


# --------------------------------------------------------------------------- the authentication switch


def _auth_line(status: governance.AuthStatus) -> str:
    if not status.required:
        return (f"authentication is off: --as alone acts on this store ({status.tokens} tokens); it switches on "
                "with the first token or `sage-health auth enable`")  # fmt: skip
    return (f"authentication is required: every command needs SAGE_TOKEN ({status.active_tokens} active tokens "
            f"of {status.tokens})")  # fmt: skip


@auth_app.command("enable")
@session_command
def auth_enable(cli: Cli) -> None:
    """Require credentials (SAGE_TOKEN) on this store from now on. Without an active admin token, one is issued to
    you first and printed once. Policy: ``principals``."""

    def render(status: governance.AuthStatus) -> None:
        out.print(("" if status.changed else "unchanged: ") + _auth_line(status), highlight=False)
        if status.issued is not None:
            out.print(f"token for {status.issued.info.principal} (id {status.issued.info.id}), shown once:",
                      highlight=False)  # fmt: skip
            out.print(status.issued.token, highlight=False, markup=False, soft_wrap=True)
            out.print("export SAGE_TOKEN=<the token> to act from now on", highlight=False)

    def body() -> None:
        with cli.session() as session:
            status = governance.enable_auth(session)
        cli.emit(status.to_json(), lambda: render(status))

    run_command(body)


@auth_app.command("status")
@session_command
def auth_status(cli: Cli) -> None:
    """Whether this store requires credentials, and how many tokens it has (policy: ``principals``)."""

    def body() -> None:
        with cli.session() as session:
            status = governance.auth_status(session)
        cli.emit(status.to_json(), lambda: out.print(_auth_line(status)))

    run_command(body)


# --------------------------------------------------------------------------- consent


def _consent_line(rec: governance.ConsentRecord) -> str:
    return f"consent {rec.id}: {rec.patient_id} {rec.decision} ({rec.scope}) from {rec.effective_from}"


@consent_app.command("set")
@session_command
def consent_set(
    cli: Cli,
    patient: Annotated[str, typer.Option("--patient", help="Patient record id.")],
    opt_out: Annotated[bool, typer.Option("--opt-out", help="The patient opts out of research use.")] = False,
    opt_in: Annotated[bool, typer.Option("--opt-in", help="The patient (again) allows research use.")] = False,
    effective_from: Annotated[str | None, typer.Option("--from", help="YYYY-MM-DD (default today).")] = None,
    until: Annotated[str | None, typer.Option("--until", help="YYYY-MM-DD (open-ended when omitted).")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (e.g. the form's reference).")] = None,
) -> None:
    """Record one consent decision (policy: ``consent``, data stewards)."""

    def body() -> None:
        if opt_in == opt_out:
            raise ValidationError("pass exactly one of --opt-out or --opt-in")
        with cli.session() as session:
            rec = governance.set_consent(session, patient, "opt_out" if opt_out else "opt_in",
                                         effective_from=effective_from, until=until, reason=reason)  # fmt: skip
        cli.emit(governance.consent_json(rec), lambda: out.print(_consent_line(rec), highlight=False))

    run_command(body)


@consent_app.command("import")
@session_command
def consent_import(
    cli: Cli,
    file: Annotated[Path, typer.Argument(help="CSV (patient_id,decision[,scope,effective_from,...]), JSON or JSONL.")],
) -> None:
    """Import consent decisions: every row is checked first, then all are stored or none (policy: ``consent``)."""

    def body() -> None:
        with cli.session() as session:
            records = governance.import_consents(session, file)
        cli.emit([governance.consent_json(r) for r in records],
                 lambda: out.print(f"{len(records)} consent decisions imported from {escape(file.name)}"))  # fmt: skip

    run_command(body)


@consent_app.command("list")
@session_command
def consent_list(
    cli: Cli, patient: Annotated[str | None, typer.Option("--patient", help="Only this patient.")] = None
) -> None:
    """Consent decisions in the order recorded, and who is opted out today (policy: ``consent``)."""

    def body() -> None:
        with cli.session() as session:
            found = governance.list_consents(session, patient)

        def render() -> None:
            table = Table("id", "patient", "scope", "decision", "from", "until", "by", "reason")
            for c in found.consents:
                table.add_row(str(c.id), c.patient_id, c.scope, c.decision, c.effective_from,
                              c.effective_until or "", c.recorded_by, escape(c.reason or ""))  # fmt: skip
            out.print(table)

        cli.emit(found.to_json(), render)

    run_command(body)


# --------------------------------------------------------------------------- erasure and lineage


@session_command
def erase(
    cli: Cli,
    patient: Annotated[str, typer.Option("--patient", help="Patient record id whose data is erased.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log as a hash).")],
) -> None:
    """Erase a patient: records, versions, chunks, vectors, FTS rows and ingest-ledger rows in one transaction, after
    every layer's copies (agent runs and steps, feedback, dataset snapshot files, co-evolution training copies);
    snapshots and model versions built on the records are tainted and tainted production models demoted. A crashed
    erasure is completed by running it again. Policy: ``erase`` (data stewards only)."""

    def body() -> None:
        with cli.session() as session:
            result = erasure_service.erase(session, patient, reason=reason)

        def render() -> None:
            extra = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(result.removed.items())
                              if n and k not in ("records", "agent_runs"))  # fmt: skip
            out.print(
                f"erased patient {patient}: {result.records} records, {result.runs} agent runs"
                + (f", {extra}" if extra else "")
                + f"; {len(result.tainted)} snapshots/models tainted; {len(result.files_sha256)} files removed or "
                "scrubbed"
                + ("; completed an unfinished erasure" if result.resumed else "")
                + "; store "
                + ("consistent" if result.consistent else "INCONSISTENT: " + "; ".join(result.problems)),
                highlight=False,
            )

        cli.emit(erasure_service.result_json(result), render)
        if not result.consistent:
            raise typer.Exit(1)

    run_command(body)


def _tree(node: lineage_service.LineageNode, tree: Tree) -> None:
    for child in node.children:
        label = f"[dim]{escape(child.relation)}[/] [bold]{escape(child.node)}[/]" + (
            f" [dim]({escape(child.detail)})[/]" if child.detail else ""
        )
        _tree(child, tree.add(label))


@session_command
def lineage(
    cli: Cli,
    node: Annotated[
        str,
        typer.Argument(
            help="Record id (or pseudonym), file:PATH (or file:HASH), snapshot:NAME@HASH, model:NAME@VERSION or run:ID."
        ),
    ],
    up: Annotated[
        bool, typer.Option("--up", help="Walk towards sources (default: towards derived artifacts).")
    ] = False,
    down: Annotated[bool, typer.Option("--down", help="Walk towards derived artifacts (the default).")] = False,
    depth: Annotated[int, typer.Option("--depth", min=0, max=10)] = 4,
) -> None:
    """Lineage: source file → records → chunks/vectors → snapshots → model versions → generated reports, and back.
    Researchers and admins see pseudonyms and hashed file names. Policy: ``lineage`` (data stewards, researchers,
    admins)."""

    def body() -> None:
        if up and down:
            raise ValidationError("pass --up or --down, not both")
        with cli.session() as session:
            result = lineage_service.lineage(session, node, up=up, depth=depth)
        root = result.tree

        def render() -> None:
            tree = Tree(f"[bold]{escape(root.node)}[/]" + (f" [dim]({escape(root.detail)})[/]" if root.detail else ""))
            _tree(root, tree)
            out.print(tree)

        cli.emit(root.as_dict(), render)

    run_command(body)
