"""Section-aware chunking.

A record's sections (report FINDINGS / IMPRESSION, a note, an abstract, one rendered FHIR resource)
are chunked separately: chunks never cross a section. Long sections are packed sentence by sentence into
passages of at most ``max_words`` words (~256 wordpieces for MiniLM at the default 160), with the last
sentences of a passage repeated at the start of the next (``overlap_words``). A sentence longer than
``max_words`` is split on word boundaries.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from sage_health.core.provenance import Transform
from sage_health.data.schema import Section

CHUNKER_VERSION = "1"
_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+(?=[A-Z0-9\"'(\[])|\n{2,}")


class Chunk(BaseModel):
    """A retrievable passage of one record section."""

    model_config = ConfigDict(frozen=True)

    section: str
    ordinal: int
    text: str
    start: int
    """Character offset of the chunk's first character in the section text."""
    end: int


def split_sentences(text: str) -> list[tuple[int, str]]:
    """(offset, sentence) pairs; offsets index into ``text``."""
    out: list[tuple[int, str]] = []
    pos = 0
    for match in _SENTENCE_END.finditer(text):
        piece = text[pos : match.start()]
        if piece.strip():
            out.append((pos + (len(piece) - len(piece.lstrip())), piece.strip()))
        pos = match.end()
    tail = text[pos:]
    if tail.strip():
        out.append((pos + (len(tail) - len(tail.lstrip())), tail.strip()))
    return out


class Chunker:
    def __init__(self, max_words: int = 160, overlap_words: int = 24, prefix_title: bool = True) -> None:
        if overlap_words >= max_words:
            raise ValueError("overlap_words must be smaller than max_words")
        self.max_words = max_words
        self.overlap_words = overlap_words
        self.prefix_title = prefix_title

    @property
    def transform(self) -> Transform:
        return Transform(
            name="chunk.section_aware",
            version=CHUNKER_VERSION,
            params={"max_words": self.max_words, "overlap_words": self.overlap_words},
        )

    def _pieces(self, text: str) -> list[tuple[int, str, int]]:
        """Sentences as (offset, text, n_words), with over-long sentences split on words."""
        pieces: list[tuple[int, str, int]] = []
        for offset, sentence in split_sentences(text):
            words = list(re.finditer(r"\S+", sentence))
            if len(words) <= self.max_words:
                pieces.append((offset, sentence, len(words)))
                continue
            for i in range(0, len(words), self.max_words):
                group = words[i : i + self.max_words]
                start, end = group[0].start(), group[-1].end()
                pieces.append((offset + start, sentence[start:end], len(group)))
        return pieces

    def chunk_section(self, section: Section, title: str | None = None) -> list[Chunk]:
        text = section.text
        pieces = self._pieces(text)
        if not pieces:
            return []
        chunks: list[Chunk] = []
        i = 0
        while i < len(pieces):
            words = 0
            j = i
            while j < len(pieces) and (words + pieces[j][2] <= self.max_words or j == i):
                words += pieces[j][2]
                j += 1
            start = pieces[i][0]
            end = pieces[j - 1][0] + len(pieces[j - 1][1])
            body = text[start:end]
            if title and self.prefix_title:
                body = f"{title}. {body}"
            chunks.append(Chunk(section=section.name, ordinal=len(chunks), text=body, start=start, end=end))
            if j >= len(pieces):
                break
            # step back over trailing sentences for overlap, but always advance
            back = j
            overlap = 0
            while back - 1 > i and overlap + pieces[back - 1][2] <= self.overlap_words:
                back -= 1
                overlap += pieces[back][2]
            i = back
        return chunks

    def chunk(self, sections: list[Section], title: str | None = None) -> list[Chunk]:
        out: list[Chunk] = []
        for section in sections:
            for chunk in self.chunk_section(section, title=title):
                out.append(chunk.model_copy(update={"ordinal": len(out)}))
        return out
