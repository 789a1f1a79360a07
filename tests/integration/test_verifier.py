"""Verifier agent: unsupported sentences removed (and why), supported ones kept with their citations, and the
label_conflict / negation / laterality / empty_section flags, with the real CheXpert labeler (real phrase files from
``<data_dir>/chexpert_labeler``) and a real store behind the agent context."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sage_health.agents.base import Agent, AgentContext
from sage_health.agents.types import (
    Draft,
    DraftSentence,
    EvidenceItem,
    ImageFinding,
    ImagingResult,
    ReportSection,
    Verification,
    VerifierFlag,
)
from sage_health.agents.verifier import Verifier, VerifierInput, verify
from sage_health.core.config import Settings
from sage_health.data.embed import MiniLMEmbedder
from sage_health.data.governance.access import open_governed
from sage_health.data.store.sqlite import SqliteDocumentStore
from sage_health.models.evaluation.labeler import CheXpertLabeler

PRIOR = EvidenceItem(
    id="iu-xray/DiagnosticReport/101",
    kind="similar_report",
    section="findings",
    text="The heart is normal in size. No pleural effusion or pneumothorax. Small left pleural effusion is present.",
)
PRIOR_RIGHT = EvidenceItem(
    id="iu-xray/DiagnosticReport/102",
    kind="similar_report",
    section="impression",
    text="Large right pleural effusion. Lungs are otherwise clear.",
)
EFFUSION = ImageFinding(
    observation="Pleural Effusion",
    present=True,
    probability=0.91,
    image_id="CXR7",
    evidence_id="image:CXR7#Pleural Effusion",
)
IMAGING = ImagingResult(findings=(EFFUSION,), abstained=False, model_ref="cxr-densenet@1")
EVIDENCE = (PRIOR, PRIOR_RIGHT)


def s(section: ReportSection, text: str, *citations: str) -> DraftSentence:
    return DraftSentence(section=section, text=text, citations=citations)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, data_dir: Path, embedder: MiniLMEmbedder) -> Iterator[AgentContext]:
    root = tmp_path_factory.mktemp("verifier")
    with SqliteDocumentStore(root / "sage.db", embedder) as store:
        settings = Settings(store=root, data_dir=data_dir)
        yield AgentContext.create(settings, open_governed(settings, store, principal="clinician", purpose="treatment"))


@pytest.fixture(scope="module")
def labeler(ctx: AgentContext) -> CheXpertLabeler:
    return ctx.labeler  # the context's own lazily loaded labeler: loaded once for the module


def check(labeler: CheXpertLabeler, *sentences: DraftSentence, imaging: ImagingResult | None = None) -> Verification:
    return verify(Draft(sentences=sentences), EVIDENCE, imaging, labeler=labeler, threshold=0.5)


def kinds(result: Verification) -> list[str]:
    return [f.kind for f in result.flags]


# ---------------------------------------------------------------------- supported / unsupported


def test_supported_sentences_are_kept_with_citations_and_support(labeler: CheXpertLabeler) -> None:
    draft = Draft(
        sentences=(
            s("findings", "The heart is normal in size.", PRIOR.id),
            s("findings", "No pneumothorax.", PRIOR.id, PRIOR_RIGHT.id),
            s("impression", "Lungs are clear.", PRIOR_RIGHT.id),
        ),
        notes=("imaging agent abstained: no usable image",),
        model_ref="smollm2@1",
    )
    result = verify(draft, EVIDENCE, None, labeler=labeler, threshold=0.5)

    assert result.flags == ()
    assert result.ok
    assert [x.text for x in result.draft.sentences] == [x.text for x in draft.sentences]
    assert [x.citations for x in result.draft.sentences] == [
        (PRIOR.id,),
        (PRIOR.id, PRIOR_RIGHT.id),
        (PRIOR_RIGHT.id,),
    ]
    assert [x.support for x in result.draft.sentences] == [1.0, 1.0, 1.0]
    assert result.draft.notes == draft.notes
    assert result.draft.model_ref == "smollm2@1"
    assert result.labels == {
        "findings": {"No Finding": "positive", "Cardiomegaly": "negative", "Pneumothorax": "negative"},
        "impression": {"No Finding": "positive"},
    }


def test_sentence_without_citation_is_removed(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "The heart is normal in size.", PRIOR.id),
        s("findings", "Osteopenia of the thoracic spine."),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags == (
        VerifierFlag(
            kind="unsupported",
            section="findings",
            sentence="Osteopenia of the thoracic spine.",
            detail="no citation",
            action="removed",
        ),
    )
    assert [x.text for x in result.draft.sentences] == ["The heart is normal in size.", "Large right pleural effusion."]


def test_sentence_citing_only_unknown_ids_is_removed(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "The heart is normal in size.", "iu-xray/DiagnosticReport/999"),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags[0] == VerifierFlag(
        kind="unsupported",
        section="findings",
        sentence="The heart is normal in size.",
        detail="cited id unknown: iu-xray/DiagnosticReport/999",
        action="removed",
    )
    # removing the only findings sentence empties the section
    assert kinds(result) == ["unsupported", "empty_section"]
    assert result.flags[1].section == "findings"
    assert [x.text for x in result.draft.sentences] == ["Large right pleural effusion."]


def test_unknown_citation_next_to_a_valid_one_is_dropped_and_flagged(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "The heart is normal in size.", PRIOR.id, "iu-xray/DiagnosticReport/999"),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags == (
        VerifierFlag(
            kind="unsupported",
            section="findings",
            sentence="The heart is normal in size.",
            detail="cited id unknown: iu-xray/DiagnosticReport/999 (citation dropped, sentence kept)",
            action="flagged",
        ),
    )
    assert result.draft.sentences[0].citations == (PRIOR.id,)


def test_low_lexical_support_is_removed_with_the_score(labeler: CheXpertLabeler) -> None:
    # content words: moderate, hiatal, hernia, behind, heart; only "heart" is in the cited report: 1/5
    result = check(
        labeler,
        s("findings", "Moderate hiatal hernia behind the heart.", PRIOR.id),
        s("findings", "The heart is normal in size.", PRIOR.id),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags[0].kind == "unsupported"
    assert result.flags[0].action == "removed"
    assert result.flags[0].detail == "support 0.20 < 0.50"
    assert [x.text for x in result.draft.sentences] == ["The heart is normal in size.", "Large right pleural effusion."]


def test_contradicting_label_in_cited_evidence_is_removed(labeler: CheXpertLabeler) -> None:
    # every content word is in the cited report ("No pleural effusion or pneumothorax"): support 1.0, but the
    # report says there is no pneumothorax.
    result = check(
        labeler,
        s("findings", "Pneumothorax is present.", PRIOR.id),
        s("findings", "The heart is normal in size.", PRIOR.id),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags == (
        VerifierFlag(
            kind="unsupported",
            section="findings",
            sentence="Pneumothorax is present.",
            detail="'Pneumothorax' positive in sentence but negative in cited evidence",
            action="removed",
        ),
    )
    assert "Pneumothorax" not in result.labels["findings"]


def test_observation_absent_from_cited_evidence_is_removed(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "The heart is normal in size with pleural effusion.", PRIOR_RIGHT.id),
        s("findings", "The heart is normal in size.", PRIOR.id),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags[0] == VerifierFlag(
        kind="unsupported",
        section="findings",
        sentence="The heart is normal in size with pleural effusion.",
        detail="support 0.40 < 0.50; 'Cardiomegaly' negative in sentence but not mentioned in cited evidence",
        action="removed",
    )


def test_sentence_citing_a_matching_image_finding_is_supported(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "The heart is normal in size.", PRIOR.id),
        s("findings", "Moderate pleural effusion layering posteriorly.", EFFUSION.evidence_id),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
        imaging=IMAGING,
    )
    assert result.flags == ()
    kept = result.draft.sentences[1]
    assert kept.citations == (EFFUSION.evidence_id,)
    assert kept.support is not None
    assert kept.support < 0.5  # lexically weak, supported through the finding


def test_sentence_contradicting_its_image_finding_is_removed(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "No pleural effusion.", EFFUSION.evidence_id),
        s("findings", "The heart is normal in size.", PRIOR.id),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
        imaging=IMAGING,
    )
    # lexical support is 2/3 (no, pleural, effusion vs the finding's sentence): only the polarity fails
    assert result.flags == (
        VerifierFlag(
            kind="unsupported",
            section="findings",
            sentence="No pleural effusion.",
            detail="'Pleural Effusion' negative in sentence but positive in cited evidence",
            action="removed",
        ),
    )
    assert [x.text for x in result.draft.sentences] == ["The heart is normal in size.", "Large right pleural effusion."]
    # the image finding id is unknown without the imaging result
    without = check(labeler, s("findings", "Pleural effusion.", EFFUSION.evidence_id))
    assert without.flags[0].detail == f"cited id unknown: {EFFUSION.evidence_id}"


# ---------------------------------------------------------------------- cross-sentence checks


def test_findings_and_impression_disagree_label_conflict(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "No pleural effusion.", PRIOR.id),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags == (
        VerifierFlag(
            kind="label_conflict",
            section="impression",
            sentence="Large right pleural effusion.",
            detail="'Pleural Effusion' negative in findings ('No pleural effusion.') but positive in impression",
            action="flagged",
        ),
    )
    assert [x.text for x in result.draft.sentences] == ["No pleural effusion.", "Large right pleural effusion."]
    assert result.labels["findings"]["Pleural Effusion"] == "negative"
    assert result.labels["impression"]["Pleural Effusion"] == "positive"


def test_present_and_absent_in_one_section_is_a_negation_flag(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "No pleural effusion.", PRIOR.id),
        s("findings", "Small left pleural effusion.", PRIOR.id),
        s("impression", "Small left pleural effusion.", PRIOR.id),
    )
    assert result.flags == (
        VerifierFlag(
            kind="negation",
            section="findings",
            sentence="Small left pleural effusion.",
            detail="'Pleural Effusion' negative in 'No pleural effusion.' but positive in "
            "'Small left pleural effusion.' (same section)",
            action="flagged",
        ),
    )


def test_left_in_findings_right_in_impression_is_a_laterality_flag(labeler: CheXpertLabeler) -> None:
    result = check(
        labeler,
        s("findings", "Small left pleural effusion.", PRIOR.id),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    assert result.flags == (
        VerifierFlag(
            kind="laterality",
            section="impression",
            sentence="Large right pleural effusion.",
            detail="'Pleural Effusion' left in findings ('Small left pleural effusion.') but right in impression",
            action="flagged",
        ),
    )


def test_same_side_bilateral_and_clause_scoped_sides_are_not_laterality_flags(labeler: CheXpertLabeler) -> None:
    evidence = (
        EvidenceItem(
            id="r/1",
            kind="similar_report",
            text="Left lower lobe atelectasis, and right pleural effusion. Bilateral pleural effusions.",
        ),
    )
    draft = Draft(
        sentences=(
            # effusion is on the right: "left" belongs to the atelectasis clause
            s("findings", "Left lower lobe atelectasis, and right pleural effusion.", "r/1"),
            s("impression", "Bilateral pleural effusions.", "r/1"),
        )
    )
    assert verify(draft, evidence, None, labeler=labeler, threshold=0.5).flags == ()
    same_side = Draft(
        sentences=(
            s("findings", "Left lower lobe atelectasis, and right pleural effusion.", "r/1"),
            s("impression", "Right pleural effusion.", "r/1"),
        )
    )
    assert verify(same_side, evidence, None, labeler=labeler, threshold=0.5).flags == ()


def test_everything_removed_flags_both_sections_empty(labeler: CheXpertLabeler) -> None:
    result = check(labeler, s("findings", "Osteopenia."), s("impression", "Chronic changes."))
    assert kinds(result) == ["unsupported", "unsupported", "empty_section", "empty_section"]
    assert [(f.section, f.detail) for f in result.flags[2:]] == [
        ("findings", "findings has no supported sentence"),
        ("impression", "impression has no supported sentence"),
    ]
    assert result.draft.sentences == ()
    assert result.labels == {"findings": {}, "impression": {}}


def test_verifier_is_deterministic(labeler: CheXpertLabeler) -> None:
    sentences = (
        s("findings", "No pleural effusion.", PRIOR.id),
        s("findings", "Small left pleural effusion.", PRIOR.id),
        s("findings", "Osteopenia."),
        s("impression", "Large right pleural effusion.", PRIOR_RIGHT.id),
    )
    first = check(labeler, *sentences)
    # findings as a whole is positive for effusion (positive beats negative), like the impression: no
    # label_conflict, but the findings contradict themselves and the sides differ
    assert kinds(first) == ["unsupported", "negation", "laterality"]
    assert check(labeler, *sentences).model_dump() == first.model_dump()


# ---------------------------------------------------------------------- the agent


def test_verifier_agent_uses_the_context_threshold_and_round_trips(ctx: AgentContext) -> None:
    agent = Verifier()
    assert isinstance(agent, Agent)
    assert agent.name == "verifier"
    payload = VerifierInput(
        draft=Draft(
            sentences=(
                s("findings", "The heart is normal in size.", PRIOR.id),
                s("findings", "Moderate pleural effusion layering posteriorly.", EFFUSION.evidence_id),
                s("impression", "No pleural effusion.", PRIOR.id),
            )
        ),
        evidence=EVIDENCE,
        imaging=IMAGING,
    )
    assert VerifierInput.model_validate_json(payload.model_dump_json()) == payload
    result = agent.run(payload, ctx)
    assert Verification.model_validate_json(result.model_dump_json()) == result
    assert [f.kind for f in result.flags] == ["label_conflict"]
    assert result.flags[0].detail == (
        "'Pleural Effusion' positive in findings ('Moderate pleural effusion layering posteriorly.') "
        "but negative in impression"
    )
    assert result.draft.sentences[1].citations == (EFFUSION.evidence_id,)
