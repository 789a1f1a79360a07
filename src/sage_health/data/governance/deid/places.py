"""Addresses and places: :func:`find_addresses` (ADDRESS, LOCATION, ZIP) and :func:`find_places` (LOCATION)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Final

from sage_health.data.governance.deid.dates import MONTHS
from sage_health.data.governance.deid.hit import Hit
from sage_health.data.governance.deid.lexicon import common_words, english_words, name_lexicon, place_lexicon
from sage_health.data.governance.deid.names import _CLINICAL_SUFFIX, _UNKNOWN_NOT_NAME
from sage_health.data.governance.deid.types import EntityLabel

_I = re.IGNORECASE

# ---------------------------------------------------------------------- addresses and places


@dataclass(frozen=True)
class _AddressPatterns:
    street: re.Pattern[str]
    prefix_street: re.Pattern[str]
    ending_street: re.Pattern[str]
    short_prefix_street: re.Pattern[str]
    abbrev_suffix_street: re.Pattern[str]
    lower_street: re.Pattern[str]
    lower_prefix_street: re.Pattern[str]
    numbers_words: re.Pattern[str]
    unit: re.Pattern[str]
    po_box: re.Pattern[str]
    military: re.Pattern[str]
    block_part: re.Pattern[str]
    city_state_zip: re.Pattern[str]
    number_words_number: re.Pattern[str]
    words_number: re.Pattern[str]
    cued_street: re.Pattern[str]
    corner: re.Pattern[str]
    trailing_place: re.Pattern[str]
    lower_tail: re.Pattern[str]


_UPPER = "A-ZÀ-ÖØ-ÞĀ-ŽΆ-ΏΑ-ΫЀ-Я"
_CAP_WORD = rf"(?:[{_UPPER}][\w'\u2019.\-]*|[dlDL]['\u2019][{_UPPER}][\w'\u2019.\-]*|\d{{1,3}}(?:st|nd|rd|th)|[A-Z])"
_PARTICLE = r"(?:de|del|della|delle|dei|degli|di|da|do|dos|das|du|des|la|le|les|van|von|der|den|het|of|the|y|e|i)"
_UNIT = (
    r"(?:(?i:apt|apartment|suite|ste|unit|room|rm|floor|fl|bldg|building|flat|no)\.?\s*#?\s*[A-Za-z]?\d{1,5}"
    r"[A-Za-z]?|#\s*\d{1,5}[A-Za-z]?)"
)
_LOWER_SUFFIXES: Final = frozenset({"st", "str", "ave", "rd", "blvd", "ln", "dr"})
#: Street-type words before the name that are not English words, so that they count in lower-case text too.
_LOWER_PREFIXES: Final = (
    "rue", "calle", "rua", "rúa", "avenida", "avda", "strada", "ulica", "ul.", "piazza", "viale", "corso", "trg",
    "carrer", "travessa", "largo", "vicolo", "chemin", "boulevard", "avenue", "allée", "odos", "leoforos",
)  # fmt: skip
_HOUSE_NUMBER = r"\d{1,6}[A-Za-z]?(?:[\-/]\d{1,4}[A-Za-z]?)?"


@cache
def _address_patterns() -> _AddressPatterns:
    places = place_lexicon()
    suffix = "|".join(re.escape(s) for s in sorted(places.street_suffixes, key=len, reverse=True))
    # "Road", "ROAD" and, for a few abbreviations, "st"/"rd" (a lower-case "road" is a word, not a street type)
    cased = {v for s in places.street_suffixes for v in (s.title(), s.upper()) if not s[:1].isdigit()}
    cased |= _LOWER_SUFFIXES
    suffix_cased = "|".join(re.escape(s) for s in sorted(cased, key=len, reverse=True))
    prefix = "|".join(
        re.escape(p) for p in sorted(places.street_prefixes, key=len, reverse=True) if len(p.rstrip(".")) >= 3
    )
    endings = "|".join(re.escape(e) for e in sorted(set(places.street_word_endings), key=len, reverse=True))
    number = _HOUSE_NUMBER
    unit = _UNIT
    direction = r"(?:(?:[NSEW]|NE|NW|SE|SW|North|South|East|West)\.?\s+)?"
    street = re.compile(
        rf"(?<![\w\-/.])(?:\d{{1,6}}[ \t]+){{0,2}}{number}[ \t]+{direction}(?:{_CAP_WORD}[ \t]+){{0,4}}"
        rf"(?P<suffix>{suffix_cased})\b\.?(?:[ \t]+(?:[NSEW]|NE|NW|SE|SW)\b\.?)?(?:,?[ \t]*{unit})?"
    )
    prefix_street = re.compile(
        rf"(?<![\w\-])(?:\d{{1,6}}[ \t]+){{0,2}}(?P<prefix>(?i:{prefix}))\.?[ \t]+"
        rf"(?:(?:{_CAP_WORD}|{_PARTICLE})[ \t]+){{0,4}}"
        rf"{_CAP_WORD}(?:,?[ \t]+{number}\b\.?)?(?:,?[ \t]*{unit})?"
    )
    ending_street = re.compile(
        rf"(?<![\w\-])(?:\d{{1,6}}[ \t]+){{0,2}}(?:[\w'\u2019\-]+[ \t]+){{0,2}}?[\w'\u2019\-]*(?i:{endings})\.?"
        rf"[ \t]+{number}\b\.?"
        rf"(?:,?[ \t]*{unit})?"
    )
    return _AddressPatterns(
        street=street,
        prefix_street=prefix_street,
        ending_street=ending_street,
        # abbreviated street types before the name: "ul. Lipowa 4", "al. Jana Pawła 5", "12 Av Mohammed V"
        # (a house number before or after is required; checked by the caller)
        short_prefix_street=re.compile(
            rf"(?<![\w\-])(?:\d{{1,6}}[ \t]+){{0,2}}(?:(?i:ul|al|pl|os|avda|av)\.|Av|AV|Avda)[ \t]+"
            rf"(?:(?:{_CAP_WORD}|{_PARTICLE})[ \t]+){{0,3}}{_CAP_WORD}(?:,?[ \t]+{number}\b\.?)?(?:,?[ \t]*{unit})?"
        ),
        # Hungarian and similar street types after the name: "Kossuth u. 7.", "Andrássy út 12", "Petőfi tér 3"
        abbrev_suffix_street=re.compile(
            rf"(?<![\w\-/.])(?:\d{{1,6}}[ \t]+){{0,2}}(?:{_CAP_WORD}[ \t]+){{1,3}}(?:u\.|utca|út|útja|krt\.|körút|tér"
            rf"|sor|köz|fasor|rakpart)[ \t]+{number}\b\.?(?:,?[ \t]*{unit})?"
        ),
        # lower-case "1200 34 second avenue": house number(s), words and an unabbreviated street type
        lower_street=re.compile(
            rf"(?<![\w\-/.])(?:\d{{1,6}}[ \t]+){{0,1}}{number}[ \t]+(?:[a-zà-ÿ][\w'\u2019\-]*[ \t]+){{1,3}}"
            rf"(?:street|avenue|road|boulevard|lane|drive|court|place|square)\b(?:,?[ \t]*{unit})?"
        ),
        # lower-case "12 rue des lilas 4", "9 rúa nova 21": a street type, words and a house number
        lower_prefix_street=re.compile(
            rf"(?<![\w\-/.])(?:\d{{1,6}}[ \t]+)?(?:{'|'.join(re.escape(p) for p in _LOWER_PREFIXES)})[ \t]+"
            rf"(?:[^\W\d_][\w'\u2019\-]*[ \t]+){{0,3}}{number}\b(?:,?[ \t]*{unit})?"
        ),
        # "5120 88 Kallio Rinne": a building number, a house number, street words (the caller checks the words)
        numbers_words=re.compile(
            rf"(?<![\w\-/.,])\d{{1,6}}[ \t]+\d{{1,5}}[A-Za-z]?[ \t]+(?P<words>{_CAP_WORD}(?:[ \t]+{_CAP_WORD}){{0,3}})"
            r"(?=[.,;?!]?(?:\s|$))"
        ),
        unit=re.compile(
            r"(?<![\w\-])(?:(?:Apt|Apartment|Suite|Ste|Unit|APT|SUITE|UNIT)\.?\s*#?\s*[A-Za-z]?\d{1,5}[A-Za-z]?)(?!\w)"
        ),
        po_box=re.compile(
            r"(?<!\w)(?:p\.?\s?o\.?\s*box|post\s+office\s+box|postbox|postfach|box)\s*#?\s*\d{1,6}(?!\w)", _I
        ),
        military=re.compile(
            r"(?<!\w)(?i:(?:PSC|Unit|CMR)[ \t]+\d{1,5},?[ \t]+Box[ \t]+\d{1,5}"
            r"|(?:USNS|USS|USNV|USCGC)[ \t]+[\w ]{1,30}?"
            r"(?:,?[ \t]+Box[ \t]+\d{1,5})?)(?=(?i:\s*\n?\s*[AFD]PO\b|,?[ \t]+Box))"
            r"(?i:\s*\n?\s*[AFD]PO[ \t]+A[AEP][ \t]+\d{5})?"
            r"|(?<!\w)(?i:[AFD]PO[ \t]+A[AEP][ \t]+\d{5})(?!\w)"
        ),
        block_part=re.compile(
            r"[ \t]*(?:,[ \t]*\n?|\n(?:[ \t]*\n)?)[ \t]*(?:[?*•·>\-]{1,3}[ \t]+)?,?[ \t]*(?P<seg>[^\n,]{1,60})"
        ),
        # "07960 Aqqusinersuaq 111", "4923 Parmova 109": a building number, street words, a house number
        number_words_number=re.compile(
            rf"(?<![\w\-/.])\d{{1,6}}(?:[ \t]+\d{{1,6}})?[ \t]+(?P<words>{_CAP_WORD}"
            rf"(?:[ \t]+(?:{_CAP_WORD}|[^\W\d_A-Z]{{3,}})){{0,2}})"
            rf"[ \t]+\d{{1,5}}[A-Za-z]?\b\.?"
            rf"(?:,?[ \t]*{unit})?"
        ),
        # "on Lange Gracht 12", "of Pablo Neruda 1450": capitalised street words and a house number after a
        # preposition (the caller wants a word outside the English vocabulary and no unit after the number)
        words_number=re.compile(
            rf"\b(?i:on|at|of|to|in|is|from|address)[ \t]+(?P<street>(?:[{_UPPER}][^\W\d_]+[ \t]+){{1,3}}"
            rf"\d{{1,5}}[A-Za-z]?)(?![\w%:/]|[.,]\d|\s*(?i:mg|mcg|ml|cc|g|kg|units?|iu|cm|mm|mmhg|%|x|times|days?"
            rf"|weeks?|months?|years?|hours?|minutes?|h|hrs?)\b)"
        ),
        # "lives on Grössgstötten 50", "located at Via Roma 131", "corner of Kuusiku 7"
        cued_street=re.compile(
            r"(?i:\b(?:lives?\s+(?:on|at|in)|living\s+(?:on|at)|located\s+at|address(?:\s+is)?\s*:?|sent\s+to|send\s+"
            r"(?:it|them|a\s+new\s+one)\s+to|corner\s+of|is\s+at|and|moved\s+to|resides?\s+(?:on|at)))[ \t]+"
            rf"(?P<street>(?:{_CAP_WORD}[ \t]+){{1,3}}\d{{1,5}}[A-Za-z]?\b\.?"
            rf"|(?:{_CAP_WORD}[ \t]+){{0,2}}{_CAP_WORD}[ \t]+(?i:{suffix})\b\.?)"
        ),
        # "the corner of 12 Elm Avenue and Rue Cler": the whole phrase is the address
        corner=re.compile(
            r"(?<!\w)(?i:the[ \t]+)?(?i:corner)[ \t]+(?i:of)[ \t]+"
            r"(?P<a>[\w'\u2019.\-]+(?:[ \t]+[\w'\u2019.\-]+){0,5}?)[ \t]+and[ \t]+"
            rf"(?P<b>(?:(?:{_CAP_WORD}|\d{{1,6}}[A-Za-z]?|[a-z]{{1,4}}\.?)[ \t]+){{0,5}}"
            rf"(?:{_CAP_WORD}|\d{{1,6}}[A-Za-z]?\b))"
        ),
        trailing_place=re.compile(
            rf"[ \t]+(?P<place>(?:[{_UPPER}][\w'\u2019\-]*(?:[ \t]+\([{_UPPER}][\w'\u2019\-]*\))?[ \t]*){{1,4}})"
            r"(?=[.,;?!]?(?:\s|$))"
        ),
        lower_tail=re.compile(
            r"[ \t]*,?[ \t]+(?P<place>[^\W\d_][\w'\u2019\-]*(?:,?[ \t]+[^\W\d_][\w'\u2019\-]*){0,5})"
        ),
        city_state_zip=re.compile(
            r"(?<![\w])(?P<city>[A-Z][A-Za-z'\u2019.\-]+(?:[ \t]+[A-Z][A-Za-z'\u2019.\-]+){0,3}),?[ \t]+"
            r"(?P<state>[A-Z]{2}|[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)?),?[ \t]+(?P<zip>\d{5}(?:-\d{4})?)(?!\w)"
        ),
    )


_ZIP_SHAPE = re.compile(
    r"(?:\d{3,5}(?:[\- ]\d{3,4})?|[A-Z]\d[A-Z][ ]?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}|\d{2}-\d{3})"
)
_SEG_WORD = re.compile(r"[^\W\d_][\w'\u2019.\-]*|\d[\w\-]*")
_UNIT_LINE = re.compile(rf"{_UNIT}(?:[ \t]+{_UNIT})?", _I)
_ABBREVIATIONS: Final = frozenset(
    {"apt", "ste", "st", "str", "ave", "rd", "no", "ul", "al", "pl", "av", "u", "blvd", "dr", "ln", "fl", "rm", "bldg",
     "mt", "ft", "sq", "hwy", "pkwy", "ct", "krt", "n", "s", "e", "w"}
)  # fmt: skip


def _place_words(words: list[str]) -> int:
    """How many of ``words`` (from the start) are known places: cities, regions, countries (multi-word ones too)."""
    places = place_lexicon()
    i = 0
    while i < len(words):
        for n in (3, 2, 1):
            chunk = " ".join(words[i : i + n]).lower().strip(",.")
            if len(words[i : i + n]) == n and (
                chunk in places.cities or chunk in places.regions or chunk in places.countries
            ):
                i += n
                break
        else:
            break
    return i


def _is_country(segment: str) -> bool:
    """ "Sweden", "Cyprus (Greek)", "United States": a country, a qualifier in brackets allowed."""
    core = re.sub(r"\s*\([^)]*\)\s*$", "", segment.strip()).lower()
    return core in place_lexicon().countries


def _segment_kind(segment: str) -> EntityLabel | None:
    """What one line or comma part of an address block is: ZIP, LOCATION (city/state/country), ADDRESS or None."""
    seg = segment.strip().rstrip(".")
    if not seg:
        return None
    if _ZIP_SHAPE.fullmatch(seg):
        return "ZIP"
    if _UNIT_LINE.fullmatch(seg):
        return "ADDRESS"
    words = _SEG_WORD.findall(seg)
    if not words or len(words) > 5:
        return None
    english = english_words()
    places = place_lexicon()
    low = seg.lower()
    if low in places.countries or low in places.regions or seg.upper() in places.region_codes or _is_country(seg):
        return "LOCATION"
    alpha = [w for w in words if not w[0].isdigit()]
    if alpha and _place_words(alpha) == len(alpha):
        return "ADDRESS" if len(alpha) < len(words) else "LOCATION"  # "austria 1010", "graz"
    inner = words[1:-1]
    joiner = {w for w in inner if w.islower() and len(w) <= 3}  # "Frankfurt am Main", "Nové Město na Moravě"
    if any(
        w[0].islower() and w.lower() in english and not re.fullmatch(_PARTICLE, w) and w not in joiner for w in words
    ):
        return None
    if all(w[0].isupper() or w[0].isdigit() or re.fullmatch(_PARTICLE, w) or w in joiner for w in words):
        if any(_ZIP_SHAPE.fullmatch(w) for w in words) or words[-1].isdigit():
            return "ADDRESS"
        return "LOCATION"
    if len(words) == 1 and words[0].islower() and len(words[0]) >= 4:
        return "LOCATION"  # a lower-case place name in an address block ("tartu")
    return None


def _cut_segment(seg: str) -> str:
    """``seg`` up to the end of its sentence (a full stop after an abbreviation such as "Apt." does not count);
    empty when it is a field label ("Mobile: ...")."""
    for m in re.finditer(r"[.;:!?](?=\s|$)", seg):
        if m.group() == ":":
            return ""
        if m.group() == ".":
            word = re.search(r"([^\W\d_]+)$", seg[: m.start()])
            if word is not None and word.group(1).lower() in _ABBREVIATIONS:
                continue
            if re.search(r"\d$", seg[: m.start()]) and m.end() == len(seg.rstrip()):
                continue  # "Kossuth u. 7." at the end of a line
        return seg[: m.start()]
    return seg


def _extend_block(text: str, end: int, patterns: _AddressPatterns) -> list[Hit]:
    """Following lines/comma parts of an address block (unit, city, state, ZIP, country), at most five."""
    hits: list[Hit] = []
    for _ in range(5):
        m = patterns.block_part.match(text, end)
        if m is None:
            break
        seg_start = m.start("seg")
        seg = _cut_segment(m.group("seg"))
        seg_end = seg_start + len(seg.rstrip(" \t."))
        if not seg.strip():
            break
        if re.search(r"\n[ \t]*\n", text[end:seg_start]) and not (
            _is_country(seg)
            or re.fullmatch(
                rf"[{_UPPER}][^\W\d_]+(?:[ \t]+\(?[{_UPPER}][^\W\d_]+\)?){{0,2}}[ \t]+{_ZIP_SHAPE.pattern}", seg
            )
        ):
            break  # a blank line ends the block unless a country or a "Country 12345" line follows
        kind = _segment_kind(seg)
        state_zip = re.fullmatch(
            r"(?P<state>[A-Z]{2,3}|[A-Z][a-z]+(?: [A-Z][a-z]+)?)[ \t]+(?P<zip>\d{5}(?:-\d{4})?)", seg
        )
        if state_zip is not None and _segment_kind(state_zip.group("state")) == "LOCATION":
            hits.append(Hit(seg_start, seg_start + state_zip.end("state"), "LOCATION", 0.7, "address-block"))
            hits.append(
                Hit(seg_start + state_zip.start("zip"), seg_start + state_zip.end("zip"), "ZIP", 0.7, "address-block")
            )
            end = seg_start + state_zip.end()
            continue
        if kind is None:
            # "Boston MA 02110": a city, a state code and a ZIP in one segment
            csz = re.fullmatch(r"(?P<city>.+?)[ \t]+(?P<state>[A-Z]{2,3})(?:[ \t]+(?P<zip>[\w\- ]{3,8}))?[ \t.]*", seg)
            if csz is None or _segment_kind(csz.group("city")) != "LOCATION":
                break
            hits.append(
                Hit(seg_start + csz.start("city"), seg_start + csz.end("city"), "LOCATION", 0.7, "address-block")
            )
            hits.append(
                Hit(seg_start + csz.start("state"), seg_start + csz.end("state"), "LOCATION", 0.6, "address-block")
            )
            if csz.group("zip"):
                hits.append(Hit(seg_start + csz.start("zip"), seg_start + csz.end("zip"), "ZIP", 0.7, "address-block"))
        else:
            hits.append(Hit(seg_start, seg_end, kind, 0.65, "address-block"))
        end = seg_end
    return hits


def _address_tail(text: str, end: int, patterns: _AddressPatterns) -> list[Hit]:
    """What follows a street on its line ("Apt. 892 GUÉRET LI", "Suite 8 Nelson New Zealand", ", cork,
    ireland") and the next lines of the address block."""
    hits: list[Hit] = []
    for _ in range(2):
        unit = patterns.unit.match(text, end + (len(text[end:]) - len(text[end:].lstrip(" \t,"))))
        if unit is None:
            break
        hits.append(Hit(unit.start(), unit.end(), "ADDRESS", 0.7, "unit"))
        end = unit.end()
    tail = patterns.trailing_place.match(text, end)
    if tail is not None:
        words = tail.group("place").split()
        english = common_words()
        place_end = any(
            _place_words(words[j:]) == len(words) - j and all(w.lower() not in english for w in words[:j])
            for j in range(len(words))
        )
        if place_end or all(w.isupper() or w.lower() not in english for w in words):
            hits.append(Hit(tail.start("place"), tail.end("place"), "LOCATION", 0.55, "address-tail"))
            end = tail.end("place")
    else:
        low = patterns.lower_tail.match(text, end)
        if low is not None:
            words = re.split(r",?[ \t]+", low.group("place"))
            n = _place_words(words)
            if n:
                stop = low.start("place")
                for w in words[:n]:
                    stop = text.index(w, stop) + len(w)
                hits.append(Hit(low.start("place"), stop, "LOCATION", 0.5, "address-tail"))
                end = stop
    return hits + _extend_block(text, end, patterns)


def _english_lead(match: str) -> int:
    """Length of the lower-case English words that open ``match`` ("to ", "of the "), which belong to no street."""
    english = english_words()
    pos = 0
    for word in re.finditer(r"([^\W\d_]+)[ \t]+", match):
        if word.start() != pos or not word.group(1).islower() or word.group(1) not in english:
            break
        pos = word.end()
    return pos


def _street_words(words: list[str]) -> bool:
    """Whether capitalised words before or after a house number look like a street name: a word outside the English
    vocabulary ("Lange Gracht") or only person names ("Pablo Neruda"); no lower-case English word,
    month or clinical term ("7 Songwriters Of The 80s", "on Day 3", "in Stage 2" are not streets)."""
    english = english_words()
    common = common_words()
    names = name_lexicon()
    low = [w.lower().rstrip(".") for w in words]
    if not low or any(w in MONTHS or _CLINICAL_SUFFIX.search(w) for w in low):
        return False
    if any(w[:1].islower() and w in english for w in words):
        return False
    foreign = any(w not in english for w in low if not w[:1].isdigit())
    return foreign or all(w in names and w not in common for w in low)


def find_addresses(text: str) -> list[Hit]:
    patterns = _address_patterns()
    hits: list[Hit] = []
    for pattern, name in (
        (patterns.street, "street"),
        (patterns.prefix_street, "street"),
        (patterns.ending_street, "street"),
        (patterns.short_prefix_street, "street"),
        (patterns.abbrev_suffix_street, "street"),
        (patterns.lower_street, "street"),
        (patterns.lower_prefix_street, "street"),
        (patterns.po_box, "po-box"),
        (patterns.military, "military-address"),
        (patterns.unit, "unit"),
    ):
        for m in pattern.finditer(text):
            if pattern is patterns.short_prefix_street and not any(ch.isdigit() for ch in m.group()):
                continue
            start, end = m.start(), m.end()
            if pattern is patterns.ending_street:
                start += _english_lead(m.group())  # "to 4410 Lindenweg 21": the street starts at the number
            hits.append(Hit(start, end, "ADDRESS", 0.8, name))
            if name != "unit":
                hits += _address_tail(text, end, patterns)
    for m in patterns.number_words_number.finditer(text):
        if not _street_words(m.group("words").split()):
            continue
        hits.append(Hit(m.start(), m.end(), "ADDRESS", 0.6, "street-numbers"))
        hits += _address_tail(text, m.end(), patterns)
    for m in patterns.numbers_words.finditer(text):
        if _street_words(m.group("words").split()):
            hits.append(Hit(m.start(), m.end(), "ADDRESS", 0.5, "street-numbers"))
            hits += _address_tail(text, m.end(), patterns)
    for m in patterns.words_number.finditer(text):
        if _street_words(m.group("street").split()[:-1]):
            hits.append(Hit(m.start("street"), m.end("street"), "ADDRESS", 0.5, "street-words-number"))
            hits += _address_tail(text, m.end("street"), patterns)
    for m in patterns.cued_street.finditer(text):
        hits.append(Hit(m.start("street"), m.end("street"), "ADDRESS", 0.6, "street-cue"))
        hits += _address_tail(text, m.end("street"), patterns)
    for m in patterns.corner.finditer(text):
        first = m.group("a")
        if first[0].isupper() or first[0].isdigit() or first.lower().startswith(("ul.", "al.", "pl.")):
            hits.append(Hit(m.start(), m.end(), "ADDRESS", 0.7, "street-corner"))
            hits += _address_tail(text, m.end(), patterns)
    for m in patterns.city_state_zip.finditer(text):
        places = place_lexicon()
        state = m.group("state")
        if state.upper() not in places.region_codes and state.lower() not in places.regions:
            continue
        hits.append(Hit(m.start("city"), m.end("city"), "LOCATION", 0.9, "city-state-zip"))
        hits.append(Hit(m.start("state"), m.end("state"), "LOCATION", 0.9, "city-state-zip"))
        hits.append(Hit(m.start("zip"), m.end("zip"), "ZIP", 0.9, "city-state-zip"))
    return hits


_PLACE_CUE = re.compile(
    r"(?:\b(?:in|from|to|at|near|of|visit|visiting|lives?|living|resides?|residing|born|moved|travel(?:l)?ing|trip|"
    r"city|town|village|hometown)\s+(?:the\s+)?)$",
    _I,
)
_PLACE_RUN = re.compile(
    r"(?<![\w'\u2019\-])[A-ZÀ-ÞĀ-Ž][\w'\u2019\-]*"
    r"(?:[ \t]+(?:[A-ZÀ-ÞĀ-Ž][\w'\u2019\-]*|del|de|la|le|sur|am|an|upon|on))*"
)


def find_places(text: str) -> list[Hit]:
    """Cities (faker's city lists of all locales) after a place cue ("in Sutri", "from Hirvli")."""
    places = place_lexicon()
    english = english_words()
    names = name_lexicon()
    hits: list[Hit] = []
    for m in _PLACE_RUN.finditer(text):
        words = m.group().split()
        if not _PLACE_CUE.search(text[max(0, m.start() - 30) : m.start()]):
            continue
        if any(ch.isdigit() for ch in words[0]) or words[0].isupper() or _CLINICAL_SUFFIX.search(words[0].lower()):
            continue
        for n in range(len(words), 0, -1):
            candidate = " ".join(words[:n])
            low = candidate.lower()
            if low in places.cities and (n > 1 or (low not in english and low not in names)):
                hits.append(Hit(m.start(), m.start() + len(candidate), "LOCATION", 0.6, "city"))
                break
            if (
                n == 1
                and low not in english
                and low not in names
                and len(low) >= 4
                and not _UNKNOWN_NOT_NAME.search(low)
                and "-" not in low
            ):
                # an unknown capitalised word after a place cue: a place name not in any list
                hits.append(Hit(m.start(), m.start() + len(candidate), "LOCATION", 0.4, "place-cue"))
    return hits
