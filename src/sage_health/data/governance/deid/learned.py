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
from sage_health.data.governance.deid.lexicon import common_words, english_words, name_lexicon, place_lexicon
from sage_health.data.governance.deid.names import clinical_word
from sage_health.data.governance.deid.types import DeidentificationError, EntityLabel

if TYPE_CHECKING:
    from spacy.language import Language

MODEL_DIR: Final = Path(__file__).with_name("model")
SCORE: Final = 0.45
"""Score of a learned span (the transition-based NER gives no per-span probability). Below most rule scores, so
that where a rule and the model find the same span, the rule's label wins (the model adds spans; it does not
relabel them)."""


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
    medical_negatives: int = 2500
    """Sentences of PubMedQA abstracts (shared data, no PHI) added as texts without identifiers; sentences in which
    the rule recognizers see a name, place, address or phone are left out."""


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


PUBMEDQA_FILE: Final = Path("pubmedqa") / "ori_pqal_dev.json"


def medical_negatives(path: Path, n: int, seed: int) -> list[Example]:
    """``n`` sentences of the PubMedQA abstracts in ``path`` (a seeded sample) as texts without identifiers, leaving
    out any sentence in which the rule recognizers find a name, place, address or phone number."""
    from sage_health.data.governance.deid.recognizers import RULE_RECOGNIZERS

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DeidentificationError(
            f"{path.name}: cannot read the PubMedQA file for the model's medical negatives ({type(exc).__name__}); "
            "set SAGE_DATA_DIR to the shared data folder"
        ) from exc
    sentences: list[str] = []
    for key in sorted(data):
        item = data[key]
        for text in [item.get("QUESTION", ""), *item.get("CONTEXTS", [])]:
            sentences += [s.strip() for s in re.split(r"(?<=[.!?])\s+", str(text)) if len(s.strip()) >= 20]
    rng = random.Random(seed)  # noqa: S311 - a reproducible sample
    rng.shuffle(sentences)
    out: list[Example] = []
    unwanted = {"NAME", "LOCATION", "ADDRESS", "PHONE", "ZIP"}
    for sentence in sentences:
        if any(h.label in unwanted for _, _, find in RULE_RECOGNIZERS for h in find(sentence)):
            continue
        out.append(Example(text=sentence, spans=(), template="pubmedqa"))
        if len(out) >= n:
            break
    return out


def train(
    out_dir: Path = MODEL_DIR,
    *,
    recipe: Recipe = RECIPE,
    pubmedqa: Path | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> TrainReport:
    """Train the NER model from generated text (and ``recipe.medical_negatives`` PubMedQA sentences from
    ``pubmedqa``, when given) and write it to ``out_dir`` (deterministic for one recipe, one thread). Validation
    texts come from templates held out of training (every ``validation_every``-th id)."""
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
    generated = generate(recipe.examples, seed=recipe.seed, include=kept)
    if pubmedqa is not None and recipe.medical_negatives:
        generated += medical_negatives(pubmedqa, recipe.medical_negatives, recipe.seed)
    train_data = _to_examples(nlp, generated)
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
    # The string store would list every token of the training texts (some from the shared PubMedQA file); the
    # hashed-feature model predicts without it, so only the entity labels are kept (predictions are identical).
    labels = sorted(nlp.get_pipe("ner").labels)  # type: ignore[attr-defined]
    (out_dir / "vocab" / "strings.json").write_text(json.dumps(labels), encoding="utf-8")
    report = TrainReport(
        examples=len(train_data),
        validation_examples=len(valid_data),
        train_templates=len(kept),
        validation_templates=len(held),
        epochs=recipe.epochs,
        seconds=round(time.perf_counter() - started, 1),
        losses=tuple(losses_by_epoch),
        validation=validation,
        path=out_dir.name,
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
    """The span without what the model may have run into (ordinary lower-case words after or before a name, a place
    or an address; words after a phone number), or None when it cannot be the identifier it is labelled: a name or
    place of ordinary words only (:func:`_only_vocabulary`), an address without a street word or house number
    (:func:`_address_like`), a phone number of fewer than 6 digits, a postal code of fewer than 3."""
    span = text[start:end]
    if label == "PHONE":
        m = _PHONE_RUN.search(span)
        if m is None or sum(ch.isdigit() for ch in m.group()) < 6:
            return None
        return start + m.start(), start + m.end()
    if label == "ZIP":
        if sum(ch.isdigit() for ch in span) < 3 or any(ch.islower() for ch in span):
            return None  # postal codes have digits and no lower-case letters ("02110", "SW1A 1AA", "1012 AB")
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
        if label in ("NAME", "LOCATION") and _only_vocabulary(
            label, [w for _, _, w in words], sentence_start=_opens_sentence(text, start)
        ):
            return None
        if label == "ADDRESS" and not _address_like([w for _, _, w in words]):
            return None
    while start < end and text[start] in _EDGE_PUNCT and text[start] not in "+(":
        start += 1
    while end > start and text[end - 1] in _EDGE_PUNCT and not (text[end - 1] == ")" and "(" in text[start:end]):
        end -= 1
    return (start, end) if end > start else None


def _only_vocabulary(label: str, words: Sequence[str], *, sentence_start: bool) -> bool:
    """Whether a NAME/LOCATION span holds nothing that can be a name or a place: a lower-case span none of whose
    words is a known name (NAME) or place (LOCATION) ("account", "doxorubicin", "high-grade"), or ordinary words —
    English vocabulary, clinical terms (by their endings), short acronyms ("AML") — none of which is a known name or
    place ("Cool", "Personal Info", "Adult Soft Tissue Sarcoma")."""
    english = english_words()
    names = name_lexicon()
    places = place_lexicon()
    cores = [w.strip(_EDGE_PUNCT).removesuffix("'s").removesuffix("\u2019s") for w in words]
    cores = [c for c in cores if c]
    if not cores:
        return True
    lows = [c.lower() for c in cores]
    phrase = " ".join(lows)

    def known(low: str) -> bool:
        if label == "NAME":
            return low in names
        return low in places.cities or low in places.regions or low in places.countries

    if any(c.isdigit() for c in cores):
        return True  # "Approximately 4": a number is no part of a name or a place
    if all(c.islower() for c in cores):
        return not (all(known(w) and w not in english for w in lows) or known(phrase))
    if len(cores) == 1 and sentence_start and lows[0] in common_words():
        return True  # "General", "Several" opening a sentence
    if known(phrase) or any(known(w) for w in lows if len(w) > 2):
        return False
    pairs = zip(cores, lows, strict=True)
    return all(low in english or clinical_word(low) or (c.isupper() and len(c) <= 5) for c, low in pairs)


def _opens_sentence(text: str, start: int) -> bool:
    before = text[max(0, start - 12) : start].rstrip(" \t\"'(*-")
    if start > 12 and not before:
        return False
    return not before or before[-1] in ".!?:;\n"


def _address_like(words: Sequence[str]) -> bool:
    """An address holds a street word ("Rue Cler", "Main Street"), or a number beside a word that is no ordinary
    English word or beside two more words ("Mellemvej 32", "PSC 1234, Box 5678"); not "Level 5" or "5 Musicians"."""
    places = place_lexicon()
    english = english_words()
    streets = places.street_suffixes | places.street_prefixes
    lows = [w.lower().strip(_EDGE_PUNCT) for w in words]
    if any(w in streets or w.endswith(places.street_word_endings) for w in lows):
        return True
    alpha = [w for w in lows if w.isalpha()]
    has_number = any(ch.isdigit() for w in words for ch in w)
    return has_number and (len(alpha) >= 3 or any(w not in english for w in alpha))


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
    data_dir = Path(os.environ.get("SAGE_DATA_DIR", Path(__file__).resolve().parents[6] / "shared" / "data"))
    report = train(out, pubmedqa=data_dir / PUBMEDQA_FILE, on_progress=lambda msg: print(msg, file=sys.stderr))
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
