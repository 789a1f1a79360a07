"""The learned de-identification component: the training-text generator, the shipped NER model, how it is fused
with the rules (weak-hit gate, address blocks joined) and that every PHI path runs the same detector."""

from __future__ import annotations

import json
import re
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from sage_health.data.governance.deid import PresidioDeidentifier
from sage_health.data.governance.deid.fusion import DEFAULT_FUSION, Fusion, fusion_grid, gate, join_addresses
from sage_health.data.governance.deid.generate import MODEL_LABELS, SLOT_LABELS, TEMPLATES, generate, template_ids
from sage_health.data.governance.deid.identifiers import detect_phi
from sage_health.data.governance.deid.learned import MODEL_DIR, RECIPE, find_learned, find_learned_many, load_model
from sage_health.data.governance.deid.types import PhiSpan

KEY = b"unit-test-deid-key-0123456789abcdef"


def test_generator_is_deterministic_and_spans_are_exact() -> None:
    a = generate(300, seed=7)
    b = generate(300, seed=7)
    assert a == b
    assert generate(50, seed=8) != a[:50]
    labelled = [span for ex in a for span in ex.spans]
    assert {label for _, _, label in labelled} == set(MODEL_LABELS)
    for ex in a:
        for start, end, label in ex.spans:
            value = ex.text[start:end]
            assert value, (ex.template, label)
            assert value == value.strip(), (ex.template, label)
    assert any(not ex.spans for ex in a), "negative texts (no identifier) are part of the training text"


def test_generator_holds_templates_out() -> None:
    held = template_ids(["letter"])
    examples = generate(200, seed=1, exclude=held)
    assert all(not ex.template.startswith("letter:") for ex in examples)
    only = generate(50, seed=1, include=held)
    assert {ex.template.split(":")[0] for ex in only} == {"letter"}
    with pytest.raises(ValueError, match="no template left"):
        generate(1, include=["chat:0"], exclude=["chat:0"])


def test_every_template_slot_is_known() -> None:
    slots = {slot for items in TEMPLATES.values() for t in items for slot in re.findall(r"\{(\w+)\}", t)}
    assert slots <= set(SLOT_LABELS)
    assert set(TEMPLATES) == {"chat", "narrative", "clinical", "letter", "form", "negative", "frame"}
    assert len(template_ids()) >= 200


def test_shipped_model_loads_offline_with_its_recipe() -> None:
    assert (MODEL_DIR / "meta.json").is_file()
    packaged = resources.files("sage_health.data.governance.deid").joinpath("model", "meta.json")
    assert packaged.is_file(), "the model lives inside the package (it ships in the wheel)"
    nlp = load_model()
    assert nlp.pipe_names == ["ner"]
    assert set(nlp.get_pipe("ner").labels) == set(MODEL_LABELS)
    meta = nlp.meta
    assert meta["sage_recipe"]["examples"] == RECIPE.examples
    assert meta["sage_validation"]["ALL"]["f"] > 0.65, "exact-span F on generator templates held out of training"
    training = json.loads((MODEL_DIR / "training.json").read_text(encoding="utf-8"))
    assert training["train_templates"] + training["validation_templates"] == len(template_ids())
    size = sum(p.stat().st_size for p in MODEL_DIR.rglob("*") if p.is_file())
    assert size < 8 * 1024 * 1024, "small enough to commit"


def test_model_files_are_not_git_ignored() -> None:
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        ["git", "check-ignore", "-q", str(MODEL_DIR / "meta.json")], cwd=repo, check=False, capture_output=True
    )
    assert result.returncode == 1, "deid/model/ must not be ignored (it ships with the install)"


def test_learned_model_finds_identifiers_in_unseen_sentence_shapes() -> None:
    text = "Yesterday Ingrid Solberg drove her neighbour from Trondheim to the clinic, ring her on +47 912 34 567."
    found = {(text[h.start : h.end], h.label) for h in find_learned(text)}
    assert ("Ingrid Solberg", "NAME") in found
    assert any(label == "PHONE" and "912 34 567" in value for value, label in found)
    place = "She moved back to Tromsø last spring with her husband."
    assert [(place[h.start : h.end], h.label) for h in find_learned(place)] == [("Tromsø", "LOCATION")]
    assert find_learned("Chronic Lymphocytic Leukemia treatment with arsenic trioxide; AML in remission.") == []
    assert find_learned("") == []
    assert find_learned_many([text, "No acute cardiopulmonary process."])[1] == []


def test_gate_keeps_weak_rule_hits_only_with_model_support() -> None:
    hits = [
        (0, 5, "NAME", 0.35, "SageNameRecognizer:name"),
        (10, 15, "NAME", 0.35, "SageNameRecognizer:name"),
        (10, 16, "NAME", 0.75, "SageLearnedRecognizer:learned"),
        (20, 25, "NAME", 0.95, "SageNameRecognizer:name"),
        (30, 35, "DATE", 0.3, "SageDateRecognizer:date"),
    ]
    kept = gate(hits, Fusion(learned=True, gate=0.5))  # type: ignore[arg-type]
    assert (0, 5, "NAME", 0.35, "SageNameRecognizer:name") not in kept
    assert len(kept) == 4
    assert gate(hits, Fusion(learned=True, gate=0.0)) == hits  # type: ignore[arg-type]
    assert gate(hits, Fusion(learned=False, gate=0.9)) == hits  # type: ignore[arg-type]


def test_join_addresses_makes_one_span_of_an_address_block() -> None:
    text = "Send it to 12 Main Street, Boston, MA 02110 today. Boston is nice."
    spans = [
        PhiSpan(11, 25, "ADDRESS", 0.8, "street", text[11:25]),
        PhiSpan(27, 33, "LOCATION", 0.9, "city", text[27:33]),
        PhiSpan(35, 37, "LOCATION", 0.9, "state", text[35:37]),
        PhiSpan(38, 43, "ZIP", 0.9, "zip", text[38:43]),
        PhiSpan(51, 57, "LOCATION", 0.6, "city", text[51:57]),
    ]
    joined = join_addresses(text, spans)
    assert [(s.label, s.text) for s in joined] == [
        ("ADDRESS", "12 Main Street, Boston, MA 02110"),
        ("LOCATION", "Boston"),
    ]
    block = "Hoge Wei 32\n Suite 12\n8921 Pärnu"
    parts = [
        PhiSpan(0, 11, "ADDRESS", 0.8, "street", block[0:11]),
        PhiSpan(13, 21, "ADDRESS", 0.7, "unit", block[13:21]),
        PhiSpan(22, 26, "ZIP", 0.7, "zip", block[22:26]),
        PhiSpan(27, 32, "LOCATION", 0.7, "city", block[27:32]),
    ]
    assert [s.text for s in join_addresses(block, parts)] == [block]


def test_one_detector_on_every_path() -> None:
    """The presidio engine and detect_phi (the safety agent's detector) give the same spans, learned ones included."""
    deid = PresidioDeidentifier(KEY)
    text = (
        "Seen with her son Tavish Okonkwo-Reyes, who drove in from Ljubljana. He can be reached on 0046 70 123 45 67."
        " Address: Kongsvegen 14, 7020 Trondheim, Norway."
    )
    engine = [(s.start, s.end, s.label) for s in deid.detect(text)]
    direct = [(s.start, s.end, s.label) for s in detect_phi(text)]
    assert engine == direct
    assert any(s.recognizer.startswith("SageLearnedRecognizer") for s in detect_phi(text))
    values = {text[s:e]: label for s, e, label in engine}
    assert values.get("Kongsvegen 14, 7020 Trondheim, Norway") == "ADDRESS"
    assert "Tavish Okonkwo-Reyes" in values


def test_fusion_grid_holds_the_default() -> None:
    grid = fusion_grid()
    assert DEFAULT_FUSION in grid
    assert len({f.name for f in grid}) == len(grid)
    variants = PresidioDeidentifier(KEY).variants()
    assert set(variants) == {f.name for f in grid}
    assert all(v.fusion.name == name for name, v in variants.items())


@pytest.mark.parametrize(
    ("span", "label", "kept"),
    [
        ("Lucas said", "NAME", "Lucas"),
        ("rue de Lecomte closes", "ADDRESS", "rue de Lecomte"),
        ("+64 5851313 before 9 am", "PHONE", "+64 5851313"),
        ("(71) 4233-6306.", "PHONE", "(71) 4233-6306"),
        ("Mellemvej 32", "ADDRESS", "Mellemvej 32"),
        ("account", "NAME", None),  # a lower-case English word
        ("doxorubicin", "LOCATION", None),  # a lower-case word that is no known place
        ("Adult Soft Tissue Sarcoma", "NAME", None),  # ordinary and clinical words, none a known name
        ("Level 5", "ADDRESS", None),  # no street word, no word outside the English vocabulary
        ("10", "ZIP", None),
        ("Abe604 Bode78", "ZIP", None),
        ("12 34", "PHONE", None),
    ],
)
def test_learned_spans_are_tidied(span: str, label: str, kept: str | None) -> None:
    from sage_health.data.governance.deid.learned import _tidy

    text = f"Note. {span}"
    result = _tidy(text, 6, len(text), label)
    assert (text[result[0] : result[1]] if result else None) == kept
