"""Person names: :func:`find_names` (NAME), from name lexicons, titles, cues and the shape of the text."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sage_health.data.governance.deid.dates import MONTHS
from sage_health.data.governance.deid.hit import Hit
from sage_health.data.governance.deid.lexicon import (
    MEDICAL_EPONYMS,
    common_words,
    english_words,
    eponym_spans,
    name_lexicon,
)

_I = re.IGNORECASE

# ---------------------------------------------------------------------- person names

_TOKEN = re.compile(r"[^\W\d_][\w'\u2019]*(?:-[^\W\d_][\w'\u2019]*)*|(?<![\w])[A-Z]\.")
_TITLE = re.compile(
    r"(?:\b(?:mr|mrs|ms|miss|mx|dr|drs|prof|sr|sra|srta|herr|frau|mme|mlle|madame|monsieur|sir|dame|lady|lord|"
    r"rev|fr|hon|capt|sgt|lt|col|gen)\.?|\bdoctor|\bprofessor|\bnurse)\s*$",
    _I,
)
_STRONG_CUE = re.compile(
    r"(?:\b(?:my|his|her|their|the|your|first|last|full|maiden|nick|patient'?s?|user|account|card)?\s*name\s*(?:is|was|:|\?|-)"
    r"|\bnamed|\bcalled|\bcall\s+me|\bi\s+am|\bi'm|\bthis\s+is|\bsigned(?:\s+by)?|\bsignature|\bdictated\s+by"
    r"|\btranscribed\s+by|\bauthored\s+by|\battending|\bphysician|\bsurgeon|\bprovider|\bresident|\bnurse"
    r"|\bpcp|\breferring|\bdear|\bhi|\bhello|\bthanks?,?|\bthank\s+you,?|\bregards,?|\bsincerely,?|\bcc"
    r"|\bpatient|\bpt\.?)[\s:,\-]*$",
    _I,
)
_WEAK_CUE = re.compile(
    r"(?:\bmother|\bfather|\bson|\bdaughter|\bwife|\bhusband|\bbrother|\bsister|\bspouse|\bpartner|\bguardian"
    r"|\bkid|\bchild|\bfriend|\bboss|\bcontact|\bwitness|\bby|\bwith|\bper|\bfrom|\bto|\badd|\bmeet|\bmet|\bsaw"
    r"|\bsee|\bask|\btold|\bspoke\s+(?:to|with)|\band|\bor|\bat|\bshouted\s+at|\bassistant\s+to)[\s:,\-]*$",
    _I,
)
_STOP: Final[frozenset[str]] = frozenset(
    {"the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "by", "for", "with", "from", "as", "is", "was", "be",
     "may", "can", "will", "it", "this", "that", "these", "those", "his", "her", "their", "our", "your", "my", "no",
     "not", "all", "any", "some", "one", "two", "but", "if", "so", "do", "does", "did", "has", "have", "had"}
)  # fmt: skip
_SELF_NAME_CUE = re.compile(r"(?:\bname\s*(?:is|was|:)|\bcall\s+me|\bi\s+am|\bi'm)[\s:,]*$", _I)
_NAME_CUE_LOWER = re.compile(r"(?:\bname\s*(?:is|was|:)|\bnamed|\bcalled|\bcall\s+me|\bi\s+am|\bi'm)[\s:,]*$", _I)
_PARTICLES: Final[frozenset[str]] = frozenset(
    {"van", "von", "de", "der", "den", "del", "della", "di", "da", "du", "dos", "das", "la", "le", "ten", "ter", "bin",
     "ibn", "al", "el", "st", "mac", "mc", "y"}
)  # fmt: skip
_NEVER_NAMES: Final[frozenset[str]] = frozenset(
    {
        # months and days (the date recognizer owns them), headings and clinical words the vocabulary lacks
        *(m for m in MONTHS if len(m) > 3), "monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
        "sunday", "xxxx", "findings", "impression", "indication", "comparison", "history", "technique", "exam",
        "examination", "report", "patient", "doctor", "nurse", "hospital", "clinic", "street", "avenue", "road",
        "i'm", "i'd", "i've", "i'll", "i\u2019m", "i\u2019d", "i\u2019ve", "i\u2019ll",
    }
)  # fmt: skip
_CLINICAL_SUFFIX = re.compile(
    r"(?:itis|osis|oses|emia|aemia|oma|omas|ectomy|otomy|ostomy|plasty|scopy|graphy|gram|grams|pathy|megaly|algia|"
    r"ology|ologist|iasis|penia|plasia|trophy|cele|rrhea|rrhoea|uria|lysis|genic|ogenic|itis|ectasis|sclerosis|"
    r"thorax|pnea|pnoea|cardia|kinesia|mycin|cillin|cycline|azole|statin|olol|pril|sartan|prazole|tidine|zepam|"
    r"oxacin|parin|mab|nib|vir|ase|ases|ular|ary|ical|otic|atic|etic)$"
)


@dataclass
class _Tok:
    start: int
    end: int
    text: str
    core: str
    lex: bool
    first: bool
    eng: bool
    common: bool
    cap: bool
    upper: bool
    lower: bool
    initial: bool
    particle: bool
    sent_start: bool
    clinical: bool


_ABBREVIATION_BEFORE = re.compile(r"(?:\b[A-Z]|\b(?i:mr|mrs|ms|dr|prof|st|sr|jr|mt|ft|no|vs|e\.g|i\.e))\.$")


def _sentence_start(text: str, start: int) -> bool:
    before = text[max(0, start - 6) : start]
    stripped = before.rstrip(" \t\"'\u201c\u2018(*-•?")
    if start == 0 or not stripped or "\n" in before[len(stripped) :]:
        return True
    if stripped[-1] == "." and _ABBREVIATION_BEFORE.search(text[max(0, start - 12) : start].rstrip()):
        return False
    return stripped[-1] in ".!?:;\n"


def _tokens(text: str) -> list[_Tok]:
    names = name_lexicon()
    english = english_words()
    common = common_words()
    out: list[_Tok] = []
    for m in _TOKEN.finditer(text):
        raw = m.group()
        end = m.end()
        # digits glued to a name ("Abe604"): part of the token, not of the word
        while end < len(text) and text[end].isdigit():
            end += 1
        word = raw.rstrip("'\u2019")
        if word.endswith(("'s", "\u2019s")):
            word = word[:-2]
        core = word.rstrip(".").lower()
        parts = core.split("-")
        lex = core in names or (len(parts) > 1 and all(p in names for p in parts if p))
        first = core in names.first
        eng = core in english or (len(parts) > 1 and any(p in english for p in parts))
        is_common = core in common or core in _NEVER_NAMES
        out.append(
            _Tok(
                start=m.start(),
                end=end if end > m.end() else m.start() + len(word),
                text=word,
                core=core,
                lex=lex and core not in _NEVER_NAMES,
                first=first,
                eng=eng or core in _NEVER_NAMES,
                common=is_common,
                cap=word[:1].isupper(),
                upper=word.isupper() and len(word.rstrip(".")) > 1,
                lower=word.islower(),
                initial=bool(re.fullmatch(r"[A-Z]\.?", word)),
                particle=core in _PARTICLES,
                sent_start=_sentence_start(text, m.start()),
                clinical=bool(_CLINICAL_SUFFIX.search(core)) and not lex,
            )
        )
    return out


def _title_case_line(text: str, tok: _Tok) -> bool:
    line_start = text.rfind("\n", 0, tok.start) + 1
    line_end = text.find("\n", tok.end)
    line = text[line_start : line_end if line_end >= 0 else len(text)]
    words = [w for w in re.findall(r"[^\W\d_]+", line) if len(w) > 3]
    return len(words) >= 4 and sum(w[0].isupper() for w in words) / len(words) >= 0.7


def _joinable(text: str, a: _Tok, b: _Tok) -> bool:
    gap = text[a.end : b.start]
    return gap in (" ", "  ", ". ", " \t") or (gap == "\t")


_PERSON_VERB = re.compile(
    r"^\s+(?:is|was|has|had|will|would|can|could|says|said|lives|lived|spent|reports|reported|denies|denied|presents"
    r"|presented|states|stated|complains|complained|shouted|went|goes|comes|came|returned|returns|works|worked|called"
    r"|wants|wanted|told|tells|feels|felt|knows|knew|died|agreed|declined|underwent|received|arrived|left|got|gets)\b"
)


_UNKNOWN_NOT_NAME = re.compile(
    r"(?:ia|ias|ic|ics|ical|al|ous|ism|isms|ity|ion|ions|ed|ing|ive|ly|ness|ment|able|ible|ose|oid|um|ae|ies|ysis|ata"
    r"|ema|ity|ary|ery|ory|ure|ance|ence|ist|ists|oma|cyte|cytes|blast|phil|phils|plus|net|tm)$"
)


#: Verbs after a sentence-initial word that say "person" even for a word in no name list ("Tavrin is from ...",
#: "Oksana spent a year", "Radomir shouted at ...").
_PERSON_ONLY_VERB = re.compile(
    r"^\s+(?:spent|shouted|(?:is|was|comes|came)\s+from|lives|lived|works|worked|studied|graduated|joined|married"
    r"|says|said|told|asked|wrote|loves|loved|hates|hated|went|replied|answered|smiled|laughed|cried|whispered)\b"
)
#: After a sentence-initial word and a comma, an address to that person ("Ingrid, can you ...").
_VOCATIVE_AFTER = re.compile(
    r"^,\s+(?:can|could|would|will|please|i|we|do|did|are|have|how|what|where|when|why|let's|is|thank|thanks)\b", _I
)
_REPORT_VERB = re.compile(
    r"^\s+(?:reports|reported|denies|denied|presents|presented|states|stated|complains|complained|says|said|lives"
    r"|lived|underwent|returned|returns|was\s+seen|is\s+seen|notes|noted|endorses|endorsed)\b"
)


def _token_strength(text: str, toks: list[_Tok], i: int, *, titled: bool, cue: bool, line_before: str) -> float:
    """How strongly one token alone says "person name" (0: not at all)."""
    tok = toks[i]
    weak_cue = bool(_WEAK_CUE.search(line_before))
    if tok.core in _STOP and not titled:
        return 0.0
    shaped = tok.cap or tok.upper
    verb_after = bool(_PERSON_VERB.match(text[tok.end : tok.end + 16]))
    unknown = not tok.eng and not tok.lex
    if titled and (shaped or tok.lex):
        return 0.95
    if tok.cap and not tok.upper and not tok.common and (unknown or tok.lex) and len(tok.core) >= 3:
        after = text[tok.end : tok.end + 24]
        if tok.sent_start and (_PERSON_ONLY_VERB.match(after) or _VOCATIVE_AFTER.match(after)):
            return 0.55  # "Tavrin is from ...", "Oksana spent ...", "Ingrid, can you ..."
    if tok.upper and tok.lex and len(tok.core) >= 3 and (not tok.eng or cue):
        return 0.8  # "JOHN SMITH", "Signed: JOHN SMITH"
    if tok.cap and not tok.upper and tok.lex and not tok.common:
        if not tok.sent_start or not tok.eng or verb_after or cue or weak_cue:
            return 0.85
        return 0.0
    if tok.cap and not tok.upper and tok.lex and tok.common:
        if (not tok.sent_start and not _title_case_line(text, tok)) or (tok.sent_start and (cue or verb_after)):
            return 0.6
        return 0.0
    if tok.lower and tok.lex and (bool(_NAME_CUE_LOWER.search(line_before)) or (not tok.eng and len(tok.core) >= 4)):
        return 0.6
    if tok.lower and not tok.eng and len(tok.core) >= 3 and _SELF_NAME_CUE.search(line_before):
        return 0.55  # "my name is zofija", "call me radovan"

    if tok.cap and re.search(r"[a-z]\d{1,3}$", text[tok.start : tok.end]) and not tok.eng:
        return 0.7  # Synthea-style "Abe604"
    camel = bool(re.search(r"[a-z][A-Z]", tok.text)) and not re.match(
        r"(?:Mc|Mac|O'|D'|De|Van|Di|La|Le)[A-Z]", tok.text
    )
    if tok.cap and not tok.upper and unknown and len(tok.core) >= 3 and not camel:
        if cue or (tok.sent_start and _REPORT_VERB.match(text[tok.end : tok.end + 16])):
            return 0.5  # an unknown capitalised word at a name cue ("signed by Vizirov", "Karataev reports")
        if not tok.sent_start and not _UNKNOWN_NOT_NAME.search(tok.core) and not _title_case_line(text, tok):
            return 0.4 if weak_cue else 0.35  # an unknown proper noun mid-sentence
    return 0.0


def clinical_word(word: str) -> bool:
    """Whether ``word`` (lower case) has the ending of a clinical term or of a word that is no name ("-itis",
    "-ectomy", "-mycin", "-ular", "-ism", "-ation"...)."""
    return bool(_CLINICAL_SUFFIX.search(word) or _UNKNOWN_NOT_NAME.search(word))


def is_title(word: str) -> bool:
    """Whether ``word`` is a person title as this recognizer reads titles ("Dr", "MRS.", "Prof", "Doctor")."""
    return _TITLE.fullmatch(word) is not None


def never_a_name(word: str) -> bool:
    """Whether this recognizer never reads ``word`` as a name: months and weekdays (the date recognizer owns them),
    report headings and role words ("June", "Findings", "Patient")."""
    return word.lower() in _NEVER_NAMES


def find_names(text: str) -> list[Hit]:
    toks = _tokens(text)
    hits: list[Hit] = []
    protected = eponym_spans(text)

    def allowed(tok: _Tok) -> bool:
        return any(s <= tok.start < e for s, e in protected)

    strength: list[float] = []
    for i, tok in enumerate(toks):
        before = text[max(0, tok.start - 40) : tok.start]
        line_before = before.rsplit("\n", 1)[-1]
        titled = bool(_TITLE.search(line_before))
        cue = bool(_STRONG_CUE.search(line_before)) or (
            i > 0
            and toks[i - 1].lower is False
            and bool(_TITLE.search(text[max(0, toks[i - 1].start - 20) : toks[i - 1].end]))
        )
        if allowed(tok) or tok.particle or (tok.clinical and not titled):
            strength.append(0.0)
            continue
        strength.append(_token_strength(text, toks, i, titled=titled, cue=cue, line_before=line_before))
    _list_names(text, toks, strength, allowed)
    _name_lines(text, toks, strength, allowed)

    # runs of name-shaped tokens; a run with one name token is a name (unknown capitalised neighbours included)
    i = 0
    n = len(toks)
    while i < n:
        if strength[i] <= 0.0:
            i += 1
            continue
        lo = hi = i
        lower_run = toks[i].lower

        def member(tok: _Tok, k: int, lower_run: bool = lower_run, anchor: int = i) -> bool:
            if allowed(tok) or tok.clinical:
                return False
            if strength[k] > 0:
                return True
            if lower_run:
                if _lower_initial(tok) and k + 1 < n and toks[k + 1].lower and not toks[k + 1].eng:
                    return True  # "maria k nowak", "kenji t. sato"
                if tok.lower and not tok.eng and k > 0 and _lower_initial(toks[k - 1]) and len(tok.core) >= 3:
                    return True  # "anna b kovacz": a surname after a middle initial
                return tok.lower and (tok.lex or _lower_initial(tok))
            if tok.initial or tok.particle:
                return True
            if not (tok.cap or tok.upper):
                return False
            prev = toks[k - 1] if k > 0 else None
            if (
                prev is not None
                and prev.first
                and not prev.eng
                and strength[k - 1] > 0
                and not tok.common
                and k > anchor
            ):
                return tok.cap  # a given name (no English word), then a capitalised word: the surname ("Ines Pagan")
            return not tok.eng or (tok.lex and not tok.sent_start) or (tok.lex and not tok.common)

        while lo > 0 and _joinable(text, toks[lo - 1], toks[lo]) and member(toks[lo - 1], lo - 1):
            prev = toks[lo - 1]
            given = prev.first and prev.core not in _STOP
            if prev.sent_start and prev.eng and strength[lo - 1] <= 0 and not given and (prev.common or not prev.lex):
                break
            lo -= 1
            if toks[lo].sent_start:
                break
        while hi + 1 < n and _joinable(text, toks[hi], toks[hi + 1]) and member(toks[hi + 1], hi + 1):
            if toks[hi + 1].sent_start:
                break
            hi += 1
        while lo < hi and (toks[lo].particle or (toks[lo].initial and strength[lo] <= 0 and lo == i - 1)):
            lo += 1
        while hi > lo and (toks[hi].particle or (lower_run and _lower_initial(toks[hi]))):
            hi -= 1
        best = max(strength[lo : hi + 1])
        if best > 0:
            hits.append(Hit(toks[lo].start, toks[hi].end, "NAME", best, "name"))
        i = max(i, hi) + 1
    return hits


def _lower_initial(tok: _Tok) -> bool:
    """A lower-case middle initial ("m", "t.") but not the words "a" and "i"."""
    return len(tok.core) == 1 and tok.text[:1].islower() and tok.core not in ("a", "i")


_LIST_GAP = re.compile(r",[ \t]*(?:(?:and|or|&)[ \t]+)?|[ \t]+(?:and|or|&)[ \t]+")


def _list_names(text: str, toks: list[_Tok], strength: list[float], allowed: Callable[[_Tok], bool]) -> None:
    """Enumerations of single words ("Guests: Zorvan, Miller, Hannah and Derek", "founders: Tavrin, Becker and
    Jansen", "sven, ingrid, maren and joachim"): when most items are names, every item is one."""
    by_start = {t.start: k for k, t in enumerate(toks)}
    k = 0
    n = len(toks)
    while k < n:
        items = [k]
        while True:
            gap = _LIST_GAP.match(text, toks[items[-1]].end)
            nxt = by_start.get(gap.end()) if gap is not None else None
            if nxt is None or toks[nxt].lower != toks[k].lower:
                break
            items.append(nxt)
        if len(items) >= 3 and text[toks[items[-2]].end : toks[items[-1]].start].strip(" ,") in ("and", "or", "&"):
            _mark_list(toks, items, strength, allowed)
        k = items[-1] + 1 if len(items) > 1 else k + 1


def _mark_list(toks: list[_Tok], items: list[int], strength: list[float], allowed: Callable[[_Tok], bool]) -> None:
    def eligible(tok: _Tok) -> bool:
        return not (tok.common or tok.clinical or allowed(tok) or tok.particle)

    if any(allowed(toks[k]) for k in items):
        return  # "Parkinson's, Huntington and Wilson disease": a list of clinical eponyms
    if toks[items[0]].lower:
        named = sum(1 for k in items if toks[k].first and eligible(toks[k]) and toks[k].core not in MEDICAL_EPONYMS)
        if named < max(3, 2 * len(items) // 3):
            return
    else:
        # known names count (capitalised common words too: "Baker and White"); eponyms count only beside a name
        named = sum(1 for k in items if (strength[k] > 0 or toks[k].lex) and toks[k].core not in MEDICAL_EPONYMS)
        eponyms = sum(1 for k in items if toks[k].core in MEDICAL_EPONYMS)
        if named < 1 or named + eponyms < 2 or (named + eponyms) * 2 < len(items):
            return
    for k in items:
        if eligible(toks[k]) and (toks[k].lower or toks[k].cap):
            strength[k] = max(strength[k], 0.5)


def _name_lines(text: str, toks: list[_Tok], strength: list[float], allowed: Callable[[_Tok], bool]) -> None:
    """A line that is nothing but a name: two or three capitalised words (initials allowed), one of them a known
    first or last name and none a common word ("Laura Hides", "Tavrin Okafor"); in lower case, a given name and
    known names or initials ("laura jensen")."""
    k = 0
    n = len(toks)
    while k < n:
        line_start = text.rfind("\n", 0, toks[k].start) + 1
        line_end = text.find("\n", toks[k].start)
        line_end = len(text) if line_end < 0 else line_end
        j = k
        while j < n and toks[j].start < line_end and j - k <= 6:
            j += 1
        if j < n and toks[j].start < line_end:  # a long line: skip to its end
            while j < n and toks[j].start < line_end:
                j += 1
            k = j
            continue
        line = list(range(k, j))
        k = j
        bounds = [line_start, *(x for t in line for x in (toks[t].start, toks[t].end)), line_end]
        gaps = "".join(text[bounds[g] : bounds[g + 1]] for g in range(0, len(bounds), 2))
        words = [t for t in line if not toks[t].initial and not _lower_initial(toks[t])]
        if not 2 <= len(words) <= 3 or gaps.strip(" \t.?*•-") or any(allowed(toks[t]) for t in line):
            continue
        if any(toks[t].common or toks[t].clinical or toks[t].core in MEDICAL_EPONYMS for t in words):
            continue
        if all(toks[t].cap for t in words):
            ok = any(toks[t].lex for t in words)
        elif all(toks[t].lower for t in words):
            ok = toks[words[0]].first and all(toks[t].lex for t in words)
        else:
            ok = False
        if ok:
            for t in line:
                strength[t] = max(strength[t], 0.5)
