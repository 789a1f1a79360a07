from __future__ import annotations

import itertools

import pytest

from sage_health.data.chunking import Chunker, split_sentences
from sage_health.data.schema import Section


def test_short_section_is_one_chunk_with_offsets() -> None:
    section = Section(name="findings", text="FINDINGS: Heart size normal. Lungs are clear.")
    chunks = Chunker(max_words=50, overlap_words=5).chunk([section])
    assert len(chunks) == 1
    assert chunks[0].text == section.text
    assert (chunks[0].start, chunks[0].end) == (0, len(section.text))


def test_long_section_is_packed_by_sentence_with_overlap_and_bounded_size() -> None:
    sentences = [f"Sentence number {i} talks about finding {i} in some detail here." for i in range(40)]
    section = Section(name="body", text=" ".join(sentences))
    chunker = Chunker(max_words=40, overlap_words=12)
    chunks = chunker.chunk([section])
    assert len(chunks) > 5
    for chunk in chunks:
        assert len(chunk.text.split()) <= 40
        assert section.text[chunk.start : chunk.end] == chunk.text
    # consecutive chunks overlap by at least one whole sentence
    for a, b in itertools.pairwise(chunks):
        assert b.start < a.end
    # every sentence is covered
    covered = " ".join(c.text for c in chunks)
    assert all(s in covered for s in sentences)


def test_chunks_never_cross_sections_and_ordinals_are_global() -> None:
    sections = [Section(name="findings", text="FINDINGS: A. B."), Section(name="impression", text="IMPRESSION: C.")]
    chunks = Chunker(max_words=100, overlap_words=0).chunk(sections)
    assert [(c.section, c.ordinal) for c in chunks] == [("findings", 0), ("impression", 1)]


def test_overlong_sentence_is_split_on_words() -> None:
    words = " ".join(f"w{i}" for i in range(95))
    chunks = Chunker(max_words=30, overlap_words=0).chunk([Section(name="t", text=words)])
    assert [len(c.text.split()) for c in chunks] == [30, 30, 30, 5]


def test_title_prefix() -> None:
    chunks = Chunker(max_words=30, overlap_words=0).chunk([Section(name="body", text="Text.")], title="Glaucoma")
    assert chunks[0].text == "Glaucoma. Text."


def test_invalid_overlap() -> None:
    with pytest.raises(ValueError, match="overlap_words"):
        Chunker(max_words=10, overlap_words=10)


def test_split_sentences_offsets() -> None:
    text = "One. Two!  Three?\n\nFour"
    assert [(o, s) for o, s in split_sentences(text)] == [(0, "One."), (5, "Two!"), (11, "Three?"), (19, "Four")]
