"""The model registry on a real SQLite database: lineage, evaluations, stage gates, rollback."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sage_health.core.errors import RegistryError
from sage_health.models.catalog import resolve_model
from sage_health.models.registry import ModelRegistry


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "sage.db")


def test_register_versions_with_lineage_and_config(registry: ModelRegistry, tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    a = registry.register("cxr-impression", backend="smollm2", config={"exemplars": 3}, actor="alice")
    b = registry.register(
        "cxr-impression", backend="smollm2", adapter_path=adapter, dataset_snapshot_id="snap-7", actor="bob"
    )
    assert (a.version, b.version) == ("1", "2")
    assert a.stage == "candidate"
    assert a.config == {"exemplars": 3}
    assert a.created_by == "alice"
    assert b.dataset_snapshot_id == "snap-7"
    assert b.adapter_sha256 == hashlib.sha256(b"weights").hexdigest()
    assert registry.resolve("cxr-impression").version == "2"  # newest when nothing is in production
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("cxr-impression", backend="smollm2", version="1")
    with pytest.raises(RegistryError, match=r"no adapter_model\.safetensors"):
        registry.register("x", backend="smollm2", adapter_path=tmp_path)
    with pytest.raises(RegistryError, match="unknown model cxr-impression@9"):
        registry.get("cxr-impression", "9")


def test_promotion_requires_an_evaluation_on_productions_eval_sets(registry: ModelRegistry) -> None:
    registry.register("m", backend="extractive")
    registry.register("m", backend="smollm2")
    registry.record_evaluation("m", "1", eval_set="iu-val:impression:abc", run_id="r1", metrics={"rouge_l": 0.2})
    first = registry.promote("m", "1", actor="alice", reason="first baseline")
    assert first.stage == "production"
    assert first.promoted_by == "alice"
    with pytest.raises(
        RegistryError, match=r"no evaluation on iu-val:impression:abc, the evaluation set\(s\) of production m@1"
    ):
        registry.promote("m", "2", actor="bob")
    registry.record_evaluation("m", "2", eval_set="other-set", run_id="r2", metrics={"rouge_l": 0.9})
    with pytest.raises(RegistryError, match="no evaluation on iu-val"):
        registry.promote("m", "2", actor="bob")
    registry.record_evaluation("m", "2", eval_set="iu-val:impression:abc", run_id="r3", metrics={"rouge_l": 0.3})
    second = registry.promote("m", "2", actor="bob")
    assert second.stage == "production"
    assert registry.get("m", "1").stage == "archived"
    assert registry.resolve("m").version == "2"
    assert registry.get("m", "2").metrics_for("iu-val:impression:abc") == {"rouge_l": 0.3}
    with pytest.raises(RegistryError, match="already in production"):
        registry.promote("m", "2", actor="bob")


def test_rollback_restores_the_previous_production_and_logs_events(registry: ModelRegistry) -> None:
    for _ in range(2):
        registry.register("m", backend="extractive")
    registry.promote("m", "1", actor="a")
    registry.promote("m", "2", actor="a")  # production m@1 has no evaluations: nothing to compare
    restored = registry.rollback("m", actor="oncall", reason="regression")
    assert restored.version == "1"
    assert restored.stage == "production"
    assert registry.get("m", "2").stage == "archived"
    actions = [(e.version, e.action, e.to_stage) for e in registry.events("m")]
    assert actions[-2:] == [("2", "rollback", "archived"), ("1", "restore", "production")]
    assert registry.events("m")[-1].reason == "regression"
    registry.rollback("m", actor="oncall")  # back to 2 (the version promoted before 1's restore)
    assert registry.resolve("m").version == "2"
    with pytest.raises(RegistryError, match="no production version"):
        registry.rollback("nothing", actor="x")


def test_only_one_production_version_even_across_connections(tmp_path: Path) -> None:
    a = ModelRegistry(tmp_path / "sage.db")
    b = ModelRegistry(tmp_path / "sage.db")
    a.register("m", backend="extractive")
    b.register("m", backend="extractive")
    a.promote("m", "1", actor="x")
    b.promote("m", "2", actor="y")
    assert [v.stage for v in a.list_versions("m")] == ["archived", "production"]


def test_builtin_models_are_registered_on_first_use(registry: ModelRegistry) -> None:
    mv = resolve_model(registry, "smollm2")
    assert mv.ref == "smollm2@q4_1-gguf"
    assert mv.backend == "smollm2"
    assert mv.dataset_snapshot_id is None
    assert resolve_model(registry, "smollm2").created_at == mv.created_at  # idempotent
    assert resolve_model(registry, "extractive@1").backend == "extractive"
    with pytest.raises(RegistryError, match="invalid model reference"):
        resolve_model(registry, "@3")
