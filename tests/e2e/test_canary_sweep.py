"""The canary sweep: every CLI command and API route a researcher or an admin may call (both see the de-identified
view), run over real Synthea patients, must not reveal a patient name part, address, phone, SSN, MRN, licence or
passport number, birth date, real patient id or source file name — not in the output, not in an error, and not in
the audit log's payloads.

Identity comes from real tokens (``SAGE_TOKEN`` on the CLI, ``Authorization: Bearer`` on the API). A value the
caller typed themselves (e.g. a real id passed to ``show``) is not counted when the platform echoes it back; every
other canary is. Each command also has an expected exit code, so a sweep of commands that all fail early cannot pass
by saying nothing.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from sage_health.core.config import Settings
from sage_health.data.governance.audit import AuditLog
from sage_health.data.governance.identity import IdentityStore
from sage_health.data.governance.policy import PolicyEngine
from sage_health.interfaces.api import create_app
from sage_health.interfaces.cli import app
from sage_health.testing.canaries import Canaries, canaries, leaks, patient_resource

pytestmark = pytest.mark.e2e

BUNDLES = 4


@dataclass(frozen=True)
class World:
    root: Path
    store: Path
    canaries: Canaries
    patient_record_ids: tuple[str, ...]
    pseudonym: str
    observation_id: str
    tokens: dict[str, str]


def _cli(args: list[str], *, token: str | None = None, purpose: str | None = None) -> tuple[int, str]:
    env = {"SAGE_TOKEN": token, "SAGE_PURPOSE": purpose} if token else {}
    result = CliRunner().invoke(app, args, env=env, catch_exceptions=True)
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        text += f"\n{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, text


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> World:
    root = tmp_path_factory.mktemp("canary")
    bundles = root / "bundles"
    bundles.mkdir()
    found = Canaries()
    patient_ids: list[str] = []
    for path in sorted((data_dir / "synthea_fhir_r4" / "bundles").glob("*.json"))[:BUNDLES]:
        shutil.copy(path, bundles / path.name)  # the file names are canaries too
        resource = patient_resource(json.loads(path.read_text(encoding="utf-8")))
        found = found.merged(canaries(resource, file_name=path.name))
        patient_ids.append(f"synthea/Patient/{resource['id']}")
    store = root / "store"
    code, text = _cli(["ingest", str(bundles), "--store", str(store), "--as", "data_steward",
                       "--purpose", "operations", "--json"])  # fmt: skip
    assert code == 0, text

    # real credentials: the admin's first token switches authentication on
    settings = Settings(store=store)
    policy = PolicyEngine(settings.db_path)
    admin_access = policy.access("admin", "operations")
    identity = IdentityStore(settings.db_path, policy)
    tokens = {role: identity.create(role, by=admin_access).token for role in ("admin", "researcher", "data_steward")}

    code, text = _cli(["search", "encounter", "--store", str(store), "--json", "-k", "20"],
                      token=tokens["researcher"], purpose="research")  # fmt: skip
    assert code == 0, text
    hits = json.loads(text)
    pseudonym = next(h["patient_id"] for h in hits if h["patient_id"])
    assert pseudonym.startswith("pseudo-")
    code, text = _cli(["search", "blood pressure", "--store", str(store), "--json", "--type", "Observation"],
                      token=tokens["researcher"], purpose="research")  # fmt: skip
    assert code == 0, text
    observation_id = json.loads(text)[0]["record_id"]
    return World(root, store, found, tuple(patient_ids), pseudonym, observation_id, tokens)


def _check(world: World, label: str, text: str, typed: list[str]) -> list[str]:
    """Leak kinds in ``text``, ignoring canary values the caller typed (echoes of their own input)."""
    typed_text = " ".join(typed).lower()
    visible = Canaries(
        {k: [v for v in vals if v.lower() not in typed_text] for k, vals in world.canaries.values.items()}
    )
    return [f"{label}: {kind}" for kind in leaks(text, visible)]


def _researcher_commands(w: World) -> list[tuple[list[str], int]]:
    real = w.patient_record_ids[0]
    export_dir = w.root / "export"
    return [
        (["stats"], 0),
        (["search", "blood pressure"], 0),
        (["search", "blood pressure", "--json"], 0),
        (["search", "immunization", "--patient", w.pseudonym, "--json"], 0),
        (["search", "encounter", "--patient", w.pseudonym, "--timeline"], 0),
        (["search", "encounter", "--patient", w.pseudonym, "--timeline", "--json"], 0),
        (["search", "encounter", "--patient", real, "--json"], 0),  # a real id finds nothing
        (["show", w.pseudonym], 0),
        (["show", w.pseudonym, "--json"], 0),
        (["show", w.observation_id, "--json"], 0),
        (["show", real], 1),
        (["lineage", w.observation_id, "--up"], 0),
        (["lineage", w.observation_id, "--up", "--json"], 0),
        (["lineage", w.observation_id, "--json"], 0),
        (["lineage", w.pseudonym, "--up", "--json"], 0),
        (["lineage", real, "--up", "--json"], 1),
        (["dataset", "create", "synth-obs", "--from", "Observation", "--task", "text", "--deid", "--json"], 0),
        (["dataset", "list", "--json"], 0),
        (["dataset", "show", "synth-obs", "--json"], 0),
        (["dataset", "export", "synth-obs", "--out", str(export_dir), "--json"], 0),
        (["search", "medication", "--mode", "bm25", "--json"], 0),
        (["search", "medication", "--mode", "dense"], 0),
        (["search", "vital signs", "--type", "Observation", "--since", "2015-01-01", "--json"], 0),
        (["models", "list", "--json"], 0),
        (["models", "show", "extractive", "--json"], 0),
        (["generate", "Summarise: no acute findings.", "--model", "extractive", "--json"], 0),
        (["coevolve", "history", "--json"], 0),
        (["trace", "no-such-run"], 1),
        (["runs", "--json"], 1),
        (["audit", "show"], 1),
        (["erase", "--patient", w.pseudonym, "--reason", "sweep"], 1),
        (["consent", "list", "--json"], 1),
    ]


def _admin_commands(w: World) -> list[tuple[list[str], int]]:
    real = w.patient_record_ids[1]
    return [
        (["stats", "--json"], 0),
        (["search", "blood pressure", "--json"], 0),
        (["show", w.pseudonym, "--json"], 0),
        (["lineage", w.observation_id, "--up", "--json"], 0),
        (["lineage", real, "--up"], 1),
        (["audit", "verify"], 0),
        (["audit", "show", "--json"], 0),
        (["audit", "show"], 0),
        (["audit", "show", "--patient", w.pseudonym, "--json"], 0),
        (["principals", "list", "--json"], 0),
        (["principals", "token", "list", "--json"], 0),
        (["principals", "token", "create", "researcher", "--label", "sweep", "--json"], 0),
        (["auth", "status", "--json"], 0),
        (["dataset", "create", "synth-admin", "--from", "Condition", "--task", "text", "--deid", "--json"], 0),
        (["dataset", "list", "--json"], 0),
        (["dataset", "show", "synth-admin"], 0),
        (["models", "list", "--json"], 0),
        (["models", "show", "extractive"], 0),
        (["generate", "Summarise: lungs clear.", "--model", "extractive"], 0),
        (["coevolve", "history"], 0),
        (["runs"], 1),
        (["trace", "no-such-run", "--json"], 1),
    ]


def _sweep(w: World, role: str, purpose: str, commands: list[tuple[list[str], int]]) -> tuple[list[str], list[str]]:
    found: list[str] = []
    wrong_exit: list[str] = []
    for args, expected in commands:
        full = [*args, "--store", str(w.store)]
        code, text = _cli(full, token=w.tokens[role], purpose=purpose)
        label = f"{role} `{' '.join(args[:2])}`"
        if code != expected:
            wrong_exit.append(f"{label} exit {code} (expected {expected}): {text[-300:]}")
        found += _check(w, label, text, full)
    return found, wrong_exit


def test_the_sweep_sees_identifiers_where_they_are_allowed(world: World) -> None:
    # a data steward reads identified data: the same check must find the patient there, or it could not fail
    real = world.patient_record_ids[0]
    code, text = _cli(["show", real, "--json", "--store", str(world.store)], token=world.tokens["data_steward"],
                      purpose="operations")  # fmt: skip
    assert code == 0, text
    kinds = {line.rsplit(": ", 1)[1] for line in _check(world, "steward show", text, [])}
    assert {"name", "address", "number", "birth_date", "patient_id"} <= kinds


def test_researcher_cli_reveals_no_identifier(world: World) -> None:
    found, wrong = _sweep(world, "researcher", "research", _researcher_commands(world))
    assert not wrong, "\n".join(wrong)
    assert not found, "\n".join(found)


def test_admin_cli_reveals_no_identifier(world: World) -> None:
    found, wrong = _sweep(world, "admin", "operations", _admin_commands(world))
    assert not wrong, "\n".join(wrong)
    assert not found, "\n".join(found)


def test_api_routes_reveal_no_identifier(world: World) -> None:
    client = TestClient(create_app(Settings(store=world.store)))
    found: list[str] = []
    calls = [
        ("GET", "/v1/models", None, 200),
        ("GET", "/v1/runs/no-such-run", None, 404),
        ("GET", "/v1/runs", None, 403),
        ("POST", "/v1/runs/no-such-run/resume", None, 403),
        ("POST", "/v1/chat/completions",
         {"model": "extractive", "messages": [{"role": "user", "content": "Summarise: no acute findings."}]}, 200),
    ]  # fmt: skip
    for role, purpose in (("researcher", "research"), ("admin", "operations")):
        headers = {"Authorization": f"Bearer {world.tokens[role]}", "X-Sage-Purpose": purpose}
        for method, path, body, expected in calls:
            response = client.request(method, path, json=body, headers=headers)
            label = f"{role} {method} {path}"
            if path.startswith("/v1/runs") and response.status_code == 403:
                expected = 403  # traces hold identified data: a de-identified reader is refused before the lookup
            assert response.status_code == expected, (label, response.status_code, response.text[-300:])
            found += _check(world, label, response.text, [])
    assert not found, "\n".join(found)


def test_audit_payloads_hold_no_identifier(world: World) -> None:
    # runs last in this module: the sweeps above have written their events
    events = AuditLog.for_settings(Settings(store=world.store)).events()
    assert len(events) > 40
    found: list[str] = []
    for event in events:
        payload = json.dumps({"principal": event.principal, "purpose": event.purpose, "action": event.action,
                              "detail": event.detail, "query_sha256": event.query_sha256})  # fmt: skip
        found += _check(world, f"audit #{event.seq} {event.action}", payload, [])
    assert not found, "\n".join(sorted(set(found)))
