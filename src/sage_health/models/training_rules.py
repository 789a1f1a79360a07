"""The rules every training run on store data follows, written once (the ``train lora`` use case and the
co-evolution loop both call them):

- a **tainted** snapshot (records erased since it was made) is refused;
- a principal whose view is de-identified trains only on a **de-identified** snapshot;
- a snapshot holding records of patients who **opted out** of research *since it was made* is refused (training is
  secondary use; the snapshot's own consent filter ran when it was built, so any opted-out owner now is a later
  opt-out): build a fresh snapshot, which leaves them out;
- an adapter is continued only from an **untainted** parent on the **same base**.

Every refusal is a :class:`~sage_health.core.errors.PolicyViolation` (or a ``ValidationError`` for a bad request)
and a refusal on policy grounds is written to the audit log (ids only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sage_health.core.config import Settings
from sage_health.core.errors import PolicyViolation, ValidationError
from sage_health.data.datasets import SnapshotInfo, get_snapshot
from sage_health.data.governance.access import GovernedStore
from sage_health.data.governance.lineage import LineageStore, snapshot_node
from sage_health.data.governance.policy import Action
from sage_health.models.catalog import resolve_model
from sage_health.models.registry import ModelRegistry, ModelVersion


def _refuse(governed: GovernedStore, message: str, **detail: str) -> PolicyViolation:
    governed.log(Action.TRAIN.value, detail={**detail, "denied": message}, outcome="denied")
    return PolicyViolation(message)


def snapshot_record_ids(settings: Settings, info: SnapshotInfo) -> set[str]:
    """The (real) ids of the records in snapshot ``info``, from its lineage edges."""
    edges = LineageStore(settings.db_path).parents(snapshot_node(info.name, info.hash))
    return {e.parent.removeprefix("record:") for e in edges if e.parent.startswith("record:")}


def snapshot_for_training(governed: GovernedStore, settings: Settings, ref: str) -> SnapshotInfo:
    """Snapshot ``ref`` if the acting principal may train on it now (see the module docstring), else a
    :class:`PolicyViolation` (audited)."""
    decision = governed.decide(Action.TRAIN)
    info = get_snapshot(settings, ref)
    if info.tainted:
        raise _refuse(
            governed,
            f"snapshot {info.ref} is tainted ({info.taint}); build a fresh snapshot with "
            "`sage-health dataset create` and train on that",
            snapshot=info.ref,
        )
    if decision.view == "deidentified" and not info.params.get("deid"):
        raise _refuse(
            governed,
            f"snapshot {info.ref} is not de-identified and {governed.access.principal.name} "
            "only receives de-identified data; build the snapshot with --deid",
            snapshot=info.ref,
        )
    if decision.exclude_opted_out:
        since = governed.opted_out_owners(snapshot_record_ids(settings, info))
        if since:
            raise _refuse(
                governed,
                f"snapshot {info.ref} holds records of {since} patient(s) who opted out of "
                "research since it was made; build a fresh snapshot with `sage-health dataset create` "
                "(it leaves them out) and train on that",
                snapshot=info.ref,
            )
    return info


def base_of(model: ModelVersion) -> str:
    """The LoRA base (``smollm2`` or a saved model folder) an adapter registered as ``model`` was trained on."""
    if model.backend == "smollm2":
        return "smollm2"
    path = model.config.get("backend_options", {}).get("path")
    if model.backend == "transformers" and path:
        return str(path)
    raise ValidationError(
        f"--init-adapter {model.ref} runs on backend {model.backend}: only smollm2 and "
        "transformers adapters can be continued"
    )


def same_base(a: str, b: str) -> bool:
    if a == "smollm2" or b == "smollm2":
        return a == b
    return Path(a).resolve() == Path(b).resolve()


@dataclass(frozen=True)
class ParentAdapter:
    """The registered adapter a LoRA run continues."""

    model: ModelVersion
    adapter: Path
    base: str


def parent_for_training(governed: GovernedStore, registry: ModelRegistry, ref: str, base: str | None) -> ParentAdapter:
    """The adapter ``ref`` to continue: it must have an adapter, be untainted (else an audited
    :class:`PolicyViolation`) and run on ``base`` when one is given."""
    parent = resolve_model(registry, ref)
    if not parent.adapter_path:
        raise ValidationError(
            f"--init-adapter {parent.ref} has no LoRA adapter; name a model trained with `sage-health train lora`"
        )
    taint = registry.taint(parent)
    if taint is not None:
        raise _refuse(
            governed,
            f"--init-adapter {parent.ref} is tainted ({taint}); train from its base instead",
            parent=parent.ref,
        )
    parent_base = base_of(parent)
    if base is not None and not same_base(base, parent_base):
        raise ValidationError(
            f"--base {base} differs from the base of {parent.ref} ({parent_base}); leave --base "
            "out to continue that adapter"
        )
    return ParentAdapter(model=parent, adapter=Path(parent.adapter_path), base=parent_base)
