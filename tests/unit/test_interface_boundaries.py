"""Interfaces only parse, call a service and render: no module under ``interfaces/`` touches the raw store,
decides policy, writes audit events or authenticates by itself (those live in ``services/`` and below).

The check reads the source (AST), so it holds for every command and route, including ones added later. The one
service an interface calls before any other is authentication (``services.session.open_session``: credentials in,
a session out)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "sage_health"
INTERFACES = SRC / "interfaces"

FORBIDDEN_MODULES = (
    "sqlite3",
    "sage_health.data.sqlite_tables",
    "sage_health.data.store.sqlite",
    "sage_health.data.store.factory",
    "sage_health.data.store.sparse",
    "sage_health.data.governance.access",
    "sage_health.data.governance.audit",
    "sage_health.data.governance.policy",
    "sage_health.data.governance.identity",
    "sage_health.data.governance.erasure",
    "sage_health.data.governance.lineage",
    "sage_health.data.governance.views",
    "sage_health.data.ingest.pipeline",
    "sage_health.models.registry",
    "sage_health.agents.trace",
)
"""Modules whose use is a use case, not rendering (typed values come from ``data.store.protocol``,
``data.schema`` and the services' result types)."""

FORBIDDEN_NAMES = frozenset(
    {"PolicyEngine", "AuditLog", "GovernedStore", "open_governed", "open_store", "SqliteDocumentStore",
     "IdentityStore", "evaluation_access"}
)  # fmt: skip
FORBIDDEN_ATTRS = frozenset({"decide", "audit", "audit_log", "governed", "policy", "_store", "connection"})


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(FORBIDDEN_MODULES):
                    found.append(f"{where}: imports {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(FORBIDDEN_MODULES):
                found.append(f"{where}: imports from {node.module}")
            for alias in node.names:
                if alias.name in FORBIDDEN_NAMES:
                    found.append(f"{where}: imports {alias.name}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"{where}: uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
            found.append(f"{where}: uses .{node.attr}")
    return found


MODULES = sorted(p for p in INTERFACES.rglob("*.py"))


def test_every_interface_module_is_checked() -> None:
    names = {str(p.relative_to(SRC)) for p in MODULES}
    assert "interfaces/cli/app.py" in names
    assert "interfaces/api/app.py" in names
    assert len(names) >= 15, sorted(names)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(INTERFACES)))
def test_interface_module_only_parses_calls_and_renders(path: Path) -> None:
    found = violations(path)
    assert not found, "\n".join(found)


def test_the_check_catches_a_use_case_written_in_an_interface(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from sage_health.data.governance.policy import Action\n"
        "from sage_health.data.store.factory import open_store\n"
        "def cmd(session):\n"
        "    session.decide(Action.READ)\n"
        "    session.audit('read')\n"
        "    return session.governed().get('x')\n",
        encoding="utf-8",
    )
    tree_src = SRC
    try:
        globals()["SRC"] = tmp_path
        found = violations(bad)
    finally:
        globals()["SRC"] = tree_src
    text = "\n".join(found)
    for needle in ("sage_health.data.governance.policy", "open_store", ".decide", ".audit", ".governed"):
        assert needle in text, needle
