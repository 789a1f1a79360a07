"""The learned component of the de-identifier: a small spaCy NER model trained on generated text.

* **What it is**: ``spacy.blank("en")`` + a transition-based ``ner`` over a hashed-embedding CNN (``HashEmbedCNN``:
  NORM/PREFIX/SUFFIX/SHAPE features, width 64, depth 3; no pretrained vectors, nothing downloaded). Labels:
  :data:`~.generate.MODEL_LABELS` (NAME, ADDRESS, LOCATION, PHONE, ZIP).
* **What it was trained on**: only text from :mod:`.generate` (templates written for it, faker identities of ~45
  locales) — never an evaluation sentence. The training recipe (:data:`RECIPE`) is recorded in the model's
  ``meta.json``; :func:`train` rebuilds it deterministically (one thread; ``make deid-model``).
* **Where it ships**: ``deid/model/`` inside the package (a few MB, in the wheel); it loads offline on the first
  detection (:func:`load_model`, ~0.3 s).

:func:`find_learned` is one of the recognizers of :mod:`.recognizers`, so every path that detects PHI (the presidio
engine, :func:`.identifiers.detect_phi`, the safety agent, researcher views, snapshots, exports) runs it.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from sage_health.data.governance.deid.generate import MODEL_LABELS, Example, generate, template_ids
from sage_health.data.governance.deid.hit import Hit
from sage_health.data.governance.deid.lexicon import english_words, place_lexicon
from sage_health.data.governance.deid.types import DeidentificationError, EntityLabel

if TYPE_CHECKING:
    from spacy.language import Language

MODEL_DIR: Final = Path(__file__).with_name("model")
SCORE: Final = 0.75
"""Score of a learned span (the transition-based NER gives no per-span probability)."""


@dataclass(frozen=True)
class Recipe:
    """How the shipped model is trained (recorded in its ``meta.json``)."""

    examples: int = 14000
    validation: int = 1500
    epochs: int = 7
    seed: int = 20261128
    dropout: float = 0.2
    width: int = 64
    depth: int = 3
    embed_rows: int = 3000
    hidden: int = 64
    validation_every: int = 7
    """Every n-th template (by id order) is held out of training and generates the validation texts."""


RECIPE: Final = Recipe()


@dataclass(frozen=True)
class TrainReport:
    examples: int
    validation_examples: int
    train_templates: int
    validation_templates: int
    epochs: int
    seconds: float
    losses: tuple[float, ...]
    validation: dict[str, dict[str, float]]
    """Per label (and ``ALL``): precision, recall, f of exact spans on texts of held-out templates."""
    path: str


def _ner_config(recipe: Recipe) -> dict[str, Any]:
    return {
        "model": {
            "@architectures": "spacy.TransitionBasedParser.v2",
            "state_type": "ner",
            "extra_state_tokens": False,
            "hidden_width": recipe.hidden,
            "maxout_pieces": 2,
            "use_upper": True,
            "nO": None,
            "tok2vec": {
                "@architectures": "spacy.HashEmbedCNN.v2",
                "pretrained_vectors": None,
                "width": recipe.width,
                "depth": recipe.depth,
                "embed_size": recipe.embed_rows,
                "window_size": 1,
                "maxout_pieces": 3,
                "subword_features": True,
            },
        }
    }


def _to_examples(nlp: Language, data: Sequence[Example]) -> list[Any]:
    from spacy.training import Example as SpacyExample

    out = []
    for item in data:
        doc = nlp.make_doc(item.text)
        ents = []
        taken: set[int] = set()
        for start, end, label in item.spans:
            span = doc.char_span(start, end, label=label, alignment_mode="expand")
            if span is None or any(i in taken for i in range(span.start, span.end)):
                continue
            taken.update(range(span.start, span.end))
            ents.append((span.start_char, span.end_char, label))
        out.append(SpacyExample.from_dict(doc, {"entities": ents}))
    return out


def _score(nlp: Language, data: Sequence[Any]) -> dict[str, dict[str, float]]:
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    fn: dict[str, int] = {}
    for ex, doc in zip(data, nlp.pipe([e.reference.text for e in data], batch_size=128), strict=True):
        gold = {(e.start_char, e.end_char, e.label_) for e in ex.reference.ents}
        pred = {(e.start_char, e.end_char, e.label_) for e in doc.ents}
        for key in ("ALL", *MODEL_LABELS):
            g = {x for x in gold if key in ("ALL", x[2])}
            q = {x for x in pred if key in ("ALL", x[2])}
            tp[key] = tp.get(key, 0) + len(g & q)
            fp[key] = fp.get(key, 0) + len(q - g)
            fn[key] = fn.get(key, 0) + len(g - q)
    out: dict[str, dict[str, float]] = {}
    for key in tp:
        p = tp[key] / (tp[key] + fp[key]) if tp[key] + fp[key] else 0.0
        r = tp[key] / (tp[key] + fn[key]) if tp[key] + fn[key] else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        out[key] = {"precision": round(p, 4), "recall": round(r, 4), "f": round(f, 4)}
    return out


def train(
    out_dir: Path = MODEL_DIR, *, recipe: Recipe = RECIPE, on_progress: Callable[[str], None] | None = None
) -> TrainReport:
    """Train the NER model from generated text and write it to ``out_dir`` (deterministic for one recipe, one
    thread). Validation texts come from templates held out of training (every ``validation_every``-th id)."""
    import spacy

    spacy_util: Any = spacy.util
    say = on_progress or (lambda _msg: None)
    started = time.perf_counter()
    spacy_util.fix_random_seed(recipe.seed)
    ids = template_ids()
    held = [t for i, t in enumerate(ids) if i % recipe.validation_every == recipe.validation_every - 1]
    kept = [t for t in ids if t not in set(held)]
    nlp = spacy.blank("en")
    ner: Any = nlp.add_pipe("ner", config=_ner_config(recipe))
    for label in MODEL_LABELS:
        ner.add_label(label)
    train_data = _to_examples(nlp, generate(recipe.examples, seed=recipe.seed, include=kept))
    valid_data = _to_examples(nlp, generate(recipe.validation, seed=recipe.seed + 1, include=held))
    say(f"generated {len(train_data)} training texts ({len(kept)} templates), {len(valid_data)} validation texts")
    optimizer = nlp.initialize(lambda: train_data)
    rng = random.Random(recipe.seed)  # noqa: S311 - reproducible shuffling
    losses_by_epoch: list[float] = []
    for epoch in range(recipe.epochs):
        rng.shuffle(train_data)
        losses: dict[str, float] = {}
        for batch in spacy_util.minibatch(train_data, size=spacy_util.compounding(8.0, 64.0, 1.001)):
            nlp.update(batch, drop=recipe.dropout, sgd=optimizer, losses=losses)
        losses_by_epoch.append(round(losses.get("ner", 0.0), 2))
        say(f"epoch {epoch + 1}/{recipe.epochs}: loss {losses_by_epoch[-1]} ({time.perf_counter() - started:.0f} s)")
    validation = _score(nlp, valid_data)
    say(f"validation on held-out templates: {validation['ALL']}")
    out_dir.mkdir(parents=True, exist_ok=True)
    nlp.meta["name"] = "sage_deid_ner"
    nlp.meta["version"] = "1.0.0"
    nlp.meta["description"] = "SAGE-Health de-identification NER, trained on generated text only (deid/generate.py)"
    nlp.meta["sage_recipe"] = asdict(recipe)
    nlp.meta["sage_validation"] = validation
    nlp.to_disk(out_dir)
    report = TrainReport(
        examples=len(train_data),
        validation_examples=len(valid_data),
        train_templates=len(kept),
        validation_templates=len(held),
        epochs=recipe.epochs,
        seconds=round(time.perf_counter() - started, 1),
        losses=tuple(losses_by_epoch),
        validation=validation,
        path=str(out_dir),
    )
    (out_dir / "training.json").write_text(json.dumps(asdict(report), indent=2) + "\n", encoding="utf-8")
    return report


_LOCK: Final = threading.Lock()


@cache
def load_model(path: Path = MODEL_DIR) -> Language:
    """The shipped NER pipeline (loaded once per process, offline)."""
    import spacy

    if not (path / "meta.json").is_file():
        raise DeidentificationError(
            f"the learned de-identification model is missing ({path.name}/ in the package); rebuild it with "
            "`make deid-model`"
        )
    try:
        return spacy.load(path)
    except (OSError, ValueError) as exc:
        raise DeidentificationError(
            f"the learned de-identification model could not be loaded ({type(exc).__name__}); rebuild it with "
            "`make deid-model`"
        ) from exc


_PARTICLES: Final = frozenset(
    {"de", "van", "von", "der", "den", "del", "della", "la", "le", "di", "da", "du", "dos", "das", "y", "al", "el",
     "bin", "ibn", "ter", "ten", "st", "am", "an", "upon", "on", "sur"}
)  # fmt: skip
_WORD: Final = re.compile(r"\S+")
_PHONE_RUN: Final = re.compile(r"[+(]?\(?\d[\d \t().\-/]*\d(?:\s*(?:x|ext\.?|extension)\s*\d+)?", re.IGNORECASE)
_EDGE_PUNCT: Final = " \t\n,;:.!?-\u2013()\"'"


def _tidy(text: str, start: int, end: int, label: str) -> tuple[int, int] | None:
    """The span without what the model may have run into: ordinary lower-case words after (or before) a name, a place
    or an address, words after the last digit of a phone number, a "ZIP" without digits. None: nothing is left."""
    span = text[start:end]
    if label == "PHONE":
        m = _PHONE_RUN.search(span)
        if m is None or sum(ch.isdigit() for ch in m.group()) < 6:
            return None
        return start + m.start(), start + m.end()
    if label == "ZIP":
        if not any(ch.isdigit() for ch in span):
            return None
    else:
        english = english_words()
        keep = place_lexicon().street_suffixes | _PARTICLES if label == "ADDRESS" else _PARTICLES
        words = [(m.start(), m.end(), m.group().strip(_EDGE_PUNCT)) for m in _WORD.finditer(span)]

        def ordinary(word: str) -> bool:
            return word.islower() and word in english and word not in keep

        while len(words) > 1 and (not words[-1][2] or ordinary(words[-1][2])):
            words.pop()
        while len(words) > 1 and (not words[0][2] or ordinary(words[0][2])) and label != "ADDRESS":
            words.pop(0)
        start, end = start + words[0][0], start + words[-1][1]
    while start < end and text[start] in _EDGE_PUNCT and text[start] not in "+(":
        start += 1
    while end > start and text[end - 1] in _EDGE_PUNCT and not (text[end - 1] == ")" and "(" in text[start:end]):
        end -= 1
    return (start, end) if end > start else None


def _hits(text: str, ents: Sequence[Any]) -> list[Hit]:
    out: list[Hit] = []
    for ent in ents:
        if ent.label_ not in MODEL_LABELS:
            continue
        tidy = _tidy(text, ent.start_char, ent.end_char, ent.label_)
        if tidy is not None:
            out.append(Hit(tidy[0], tidy[1], cast(EntityLabel, ent.label_), SCORE, "learned"))
    return out


def find_learned(text: str) -> list[Hit]:
    """NAME/ADDRESS/LOCATION/PHONE/ZIP spans the learned model finds in ``text`` (edges tidied, :func:`_tidy`)."""
    if not text.strip():
        return []
    nlp = load_model()
    with _LOCK:
        doc = nlp(text)
    return _hits(text, doc.ents)


def find_learned_many(texts: Sequence[str], *, batch_size: int = 64) -> list[list[Hit]]:
    """:func:`find_learned` for many texts at once (batched through the model: several times faster)."""
    nlp = load_model()
    with _LOCK:
        docs = list(nlp.pipe(texts, batch_size=batch_size))
    return [_hits(text, doc.ents) for text, doc in zip(texts, docs, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sage_health.data.governance.deid.learned [OUT_DIR]``: rebuild the shipped model."""
    import os
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out = Path(args[0]) if args else MODEL_DIR
    report = train(out, on_progress=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
