"""LoRA training examples: snapshot items as the evaluation harness's chats (:func:`chat_example`), their token ids
under the truncation rule (:func:`encode_example`), the seeded batches and the target-token loss; and the train
items of a snapshot (:func:`snapshot_train_items`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sage_health.core.errors import PolicyViolation, StoreError, ValidationError
from sage_health.core.hashing import sha256_file
from sage_health.data.datasets import SnapshotInfo
from sage_health.models.adaptation.lora_config import LORA_TASKS, LoraConfig, _steps_per_epoch
from sage_health.models.evaluation.harness import PUBMEDQA_LABELS, REPORT_TASKS, ReportStudy
from sage_health.models.generation.base import ChatMessage
from sage_health.models.generation.prompts import MULTIPLE_CHOICE, PUBMEDQA, PromptTemplate

# ---------------------------------------------------------------------------------------------- examples


def _text(value: Any) -> str:
    """Whitespace-normalised text, as the harness reads report sections (non-strings are empty)."""
    return " ".join(value.split()) if isinstance(value, str) else ""


@dataclass(frozen=True)
class _Prompt:
    """A task prompt whose data text (the ``<input>`` block, or the QA question) can be shortened."""

    template: PromptTemplate
    data: str
    as_question: bool = False
    options: tuple[str, ...] = ()

    def messages(self, data: str | None = None) -> list[ChatMessage]:
        text = self.data if data is None else data
        if self.as_question:
            return self.template.messages(None, question=text, options=self.options)
        return self.template.messages(text, exemplars=[])


def _item_id(item: Mapping[str, Any]) -> str:
    return str(item.get("record_id") or item.get("id") or "?")


def _prompt_of(task: str, item: Mapping[str, Any]) -> tuple[_Prompt, str]:
    rid = _item_id(item)
    if task in ("impression", "findings"):
        spec = REPORT_TASKS[task]
        inp, tgt = _text(item.get("input")), _text(item.get("target"))
        if not inp or not tgt:
            raise ValidationError(f"item {rid}: empty input or target")
        if task == "impression":
            study = ReportStudy(id=rid, indication="", comparison="", findings=inp, impression=tgt)
        else:  # a findings snapshot's input is the indication, or 'none' when the report has none
            study = ReportStudy(id=rid, indication=inp, comparison="", findings=tgt, impression="")
        return _Prompt(spec.template, spec.input_of(study)), spec.reference_of(study)
    if task != "qa":
        raise ValidationError(f"unknown LoRA task {task!r}: use one of {', '.join(LORA_TASKS)}")
    raw_question = item.get("question") if isinstance(item.get("question"), str) else item.get("input")
    question = raw_question if isinstance(raw_question, str) else ""
    answer = str(item.get("target") or "").strip()
    if not question.strip() or not answer:
        raise ValidationError(f"item {rid}: empty question or answer")
    raw_options = item.get("options")
    options = {str(k): str(v) for k, v in raw_options.items()} if isinstance(raw_options, Mapping) else {}
    yes_no = {v.strip().lower() for v in options.values()} <= set(PUBMEDQA_LABELS)
    if answer.lower() in PUBMEDQA_LABELS and yes_no:  # PubMedQA: question only, one-word answer
        return _Prompt(PUBMEDQA, question, as_question=True), answer.lower()
    if answer in options:  # multiple choice: "A. text" option lines, the letter as answer
        lines = tuple(f"{key}. {options[key]}" for key in sorted(options))
        return _Prompt(MULTIPLE_CHOICE, question, as_question=True, options=lines), answer
    raise ValidationError(f"item {rid}: the answer is neither yes/no/maybe nor one of the item's option letters")


def chat_example(task: str, item: Mapping[str, Any]) -> tuple[list[ChatMessage], str]:
    """The messages and target text for one snapshot item: exactly the prompt the evaluation harness uses
    (see the module docstring). :class:`ValidationError` when the item cannot make an example."""
    prompt, target = _prompt_of(task, item)
    return prompt.messages(), target


@dataclass(frozen=True)
class _Encoded:
    input_ids: tuple[int, ...]
    n_prompt: int
    truncated: bool


def _chat_ids(tokenizer: Any, messages: Sequence[ChatMessage]) -> list[int]:
    convo = [{"role": m.role, "content": m.content} for m in messages]
    ids = tokenizer.apply_chat_template(convo, add_generation_prompt=True, return_dict=True)["input_ids"]
    return [int(i) for i in ids]


def _encode(tokenizer: Any, prompt: _Prompt, target: str, max_length: int) -> _Encoded | None:
    """Prompt + target + eos token ids under the truncation rule; ``None`` when the target cannot fit."""
    target_ids = [int(i) for i in tokenizer(target, add_special_tokens=False)["input_ids"]]
    target_ids.append(int(tokenizer.eos_token_id))
    prompt_ids = _chat_ids(tokenizer, prompt.messages())
    truncated = False
    if len(prompt_ids) + len(target_ids) > max_length:
        truncated = True
        data_ids = tokenizer(prompt.data, add_special_tokens=False)["input_ids"]
        keep = len(data_ids) - (len(prompt_ids) + len(target_ids) - max_length)
        while True:
            if keep <= 0:
                return None
            cut = tokenizer.decode(data_ids[:keep]).rstrip()
            prompt_ids = _chat_ids(tokenizer, prompt.messages(cut))
            over = len(prompt_ids) + len(target_ids) - max_length
            if over <= 0:
                break
            keep -= over
    return _Encoded(tuple(prompt_ids + target_ids), len(prompt_ids), truncated)


def encode_example(tokenizer: Any, task: str, item: Mapping[str, Any], max_length: int) -> tuple[list[int], int]:
    """``(token ids, number of prompt tokens)`` of one item as trained (chat + target + eos, truncation rule);
    :class:`ValidationError` when the item makes no example or its target does not fit ``max_length``."""
    prompt, target = _prompt_of(task, item)
    encoded = _encode(tokenizer, prompt, target, max_length)
    if encoded is None:
        raise ValidationError(f"item {_item_id(item)}: the target alone does not fit max_length {max_length}")
    return list(encoded.input_ids), encoded.n_prompt


@dataclass(frozen=True)
class _Prepared:
    examples: tuple[_Encoded, ...]
    skipped: Mapping[str, int]
    truncated: int
    usable: int


def _prepare(items: Sequence[Mapping[str, Any]], tokenizer: Any, config: LoraConfig) -> _Prepared:
    import numpy as np

    skipped: Counter[str] = Counter()
    encoded: list[_Encoded] = []
    for item in items:
        if not isinstance(item, Mapping):
            skipped["not an object"] += 1
            continue
        try:
            prompt, target = _prompt_of(config.task, item)
        except ValidationError as exc:
            skipped[exc.reason.partition(": ")[2] or exc.reason] += 1
            continue
        enc = _encode(tokenizer, prompt, target, config.max_length)
        if enc is None:
            skipped[f"target longer than max_length {config.max_length}"] += 1
            continue
        encoded.append(enc)
    usable = len(encoded)
    if config.limit is not None and config.limit < len(encoded):
        picked = np.sort(np.random.default_rng(config.seed).choice(len(encoded), config.limit, replace=False))
        encoded = [encoded[int(i)] for i in picked]
    return _Prepared(tuple(encoded), dict(sorted(skipped.items())), sum(e.truncated for e in encoded), usable)


def _batch_indices(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Example indices of 0-based step ``step``: a slice of the permutation of epoch ``step // batches_per_epoch``,
    drawn from ``(seed, epoch)`` only (so a resumed run sees the same batches)."""
    import numpy as np

    per_epoch = _steps_per_epoch(n, batch_size)
    epoch, pos = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return [int(i) for i in order[pos * batch_size : (pos + 1) * batch_size]]


def _collate(examples: Sequence[_Encoded], pad_id: int) -> tuple[Any, Any, Any]:
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        mask[row, :n] = 1
        labels[row, ex.n_prompt : n] = ids[row, ex.n_prompt : n]
    return ids, mask, labels


def _batch_loss(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    """Mean cross-entropy over the batch's target tokens. The LM head runs on the target positions only (the
    vocabulary projection of every prompt position would cost memory and time for nothing)."""
    import torch

    inner = model.get_base_model()
    hidden = inner.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    shifted = labels[:, 1:]
    keep = shifted != -100
    logits = inner.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), shifted[keep])


# ---------------------------------------------------------------------------------------------- snapshots


def snapshot_train_items(info: SnapshotInfo) -> list[dict[str, Any]]:
    """The items of the snapshot's ``train.jsonl``, after checking the file against its manifest (snapshots are
    immutable). A tainted snapshot is refused (:class:`PolicyViolation`): build a fresh one."""
    if info.tainted:
        raise PolicyViolation(
            f"snapshot {info.ref} is tainted ({info.taint}) and cannot be trained on; build a fresh snapshot with "
            "`sage-health dataset create`"
        )
    path = info.path / "train.jsonl"
    expected = info.manifest().get("files", {}).get("train.jsonl", {}).get("sha256")
    if not path.is_file() or (expected is not None and sha256_file(path) != expected):
        raise StoreError(
            f"snapshot {info.ref}: train.jsonl is missing or changed since creation; snapshots are immutable, so "
            "create a new one"
        )
    items: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StoreError(f"snapshot {info.ref}: train.jsonl line {lineno} is not JSON ({exc.msg})") from exc
            if isinstance(value, dict):
                items.append(value)
    return items


def _template_name(task: str, items: Sequence[Mapping[str, Any]]) -> str:
    if task in REPORT_TASKS:
        template = REPORT_TASKS[task].template
        return f"{template.name}@{template.version}"
    names: Counter[str] = Counter()
    for item in items:
        try:
            prompt, _ = _prompt_of(task, item)
        except ValidationError:
            continue
        names[f"{prompt.template.name}@{prompt.template.version}"] += 1
    return ", ".join(sorted(names)) or "-"
