"""The rule-based recognizers: each is a function ``text -> list[Hit]`` (no state, no I/O).

``engine.py`` wraps each one as a presidio ``EntityRecognizer``. Patterns are general (formats, keywords, word
lists from :mod:`.lexicon`); none is fitted to an evaluation sentence.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Final

from sage_health.data.governance.deid.lexicon import (
    common_words,
    english_words,
    eponym_spans,
    name_lexicon,
    place_lexicon,
)
from sage_health.data.governance.deid.types import EntityLabel


@dataclass(frozen=True)
class Hit:
    start: int
    end: int
    label: EntityLabel
    score: float
    recognizer: str


_I = re.IGNORECASE

# ---------------------------------------------------------------------- dates and times

MONTHS: Final[dict[str, int]] = {
    name: number
    for number, names in enumerate(
        (
            ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",), ("june", "jun"),
            ("july", "jul"), ("august", "aug"), ("september", "sept", "sep"), ("october", "oct"),
            ("november", "nov"), ("december", "dec"),
        ),
        start=1,
    )
    for name in names
}  # fmt: skip
_MON = r"(?:" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")"
_MONTH = rf"(?P<mon>(?i:{_MON}))\.?"
_WEEKDAY = r"(?:(?i:mon|tues|wednes|thurs|fri|satur|sun)day,?\s+)?"
_ORD = r"(?:st|nd|rd|th)?"
_TIME = (
    r"(?:(?:T|\s+|,\s*|\s+at\s+)(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d(?:\.\d+)?)?"
    r"(?:\s*[AaPp]\.?[Mm]\.?)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)

DATE_PATTERNS: Final[tuple[re.Pattern[str], ...]] = (
    # 2019-03-03, 2019/03/03, 2019.03.03, 2019-03-03T10:00:00Z
    re.compile(
        rf"(?<![\w.\-/])(?P<y>(?:1[89]|20)\d{{2}})(?P<sep>[-/.])(?P<m>\d{{1,2}})(?P=sep)(?P<d>\d{{1,2}}){_TIME}(?![\w/])"
    ),
    # 3/3/19, 03-03-2019, 3.3.2019 (month first unless the first number cannot be a month)
    re.compile(
        rf"(?<![\w.\-/])(?P<m>\d{{1,2}})(?P<sep>[-/.])(?P<d>\d{{1,2}})(?P=sep)(?P<y>\d{{4}}|\d{{2}}){_TIME}(?![\w/]|\.\d)"
    ),
    # March 3, 2019 / Mar. 3rd 2019 / March 3 (no year)
    re.compile(rf"(?<!\w){_WEEKDAY}{_MONTH}\s+(?P<d>\d{{1,2}}){_ORD}(?:,?\s+(?P<y>\d{{4}}))?{_TIME}(?!\w)"),
    # 3 March 2019 / 03 Mar 2019 / 3rd of March, 2019 / 3-Mar-2019
    re.compile(
        rf"(?<!\w){_WEEKDAY}(?P<d>\d{{1,2}}){_ORD}(?:\s+of)?(?P<sep>[\s\-])\s*{_MONTH}(?:,?[\s\-](?P<y>\d{{4}}|\d{{2}}(?!\d)))?{_TIME}(?![\w\-])"
    ),
    # March 2019 / Mar-2019
    re.compile(rf"(?<!\w){_MONTH},?[\s\-](?P<y>\d{{4}})(?!\w)"),
)
_TIME_ONLY = re.compile(
    r"(?<![\w:.])(?:[01]?\d|2[0-3]):[0-5]\d(?::[0-5]\d)?(?:\s*[AaPp]\.?[Mm]\.?)?(?![\w:])"
    r"|(?<![\w.:])(?:1[0-2]|0?[1-9])\s*[AaPp]\.?[Mm]\.?(?!\w)"
)
_WEEKDAY_ALONE = re.compile(r"(?<!\w)(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day(?!\w)")
_YEAR = re.compile(
    r"(?<![\w.,/\-$#])(?P<y>(?:19|20)\d{2})(?![\w/%\-]|[.,]\d|\s*(?:mg|mcg|ml|cc|g|kg|units?|iu|cm|mm|ms|%|x|/))", _I
)


def find_dates(text: str) -> list[Hit]:
    hits: list[Hit] = []
    for pattern in DATE_PATTERNS:
        for m in pattern.finditer(text):
            groups = m.groupdict()
            mon = groups.get("mon")
            if mon is not None and mon[0].islower() and mon.lower() in {"may", "mar", "march", "dec", "jun"}:
                continue  # "may 3 times", "mar" as a verb
            if groups.get("m") and groups.get("d") and not _valid_md(int(groups["m"]), int(groups["d"])):
                continue
            hits.append(Hit(m.start(), m.end(), "DATE", 0.9, "date"))
    for m in _TIME_ONLY.finditer(text):
        hits.append(Hit(m.start(), m.end(), "DATE", 0.6, "time"))
    for m in _WEEKDAY_ALONE.finditer(text):
        hits.append(Hit(m.start(), m.end(), "DATE", 0.4, "weekday"))
    for m in _YEAR.finditer(text):
        hits.append(Hit(m.start(), m.end(), "DATE", 0.5, "year"))
    return hits


def _valid_md(month: int, day: int) -> bool:
    return (1 <= month <= 12 and 1 <= day <= 31) or (1 <= day <= 12 and 1 <= month <= 31)


# ---------------------------------------------------------------------- ages

_AGE_PATTERNS: Final[tuple[re.Pattern[str], ...]] = (
    re.compile(r"(?<![\w.])(?P<n>\d{1,3})\s*(?:-|\s)?\s*(?:years?|yrs?|y)\.?\s*(?:-|\s)?\s*(?:old|of\s+age)\b", _I),
    re.compile(r"(?<![\w.])(?P<n>\d{1,3})\s*(?:-\s*)?(?:y/o|y\.o\.?|yo|yoa|yrs?\s+old)(?!\w)", _I),
    re.compile(r"\b(?:aged?|age\s*:|age\s+of|turned|turn|turning|turns)\s*(?P<n>\d{1,3})(?!\w|\.\d)", _I),
    re.compile(r"\b(?P<n>\d{1,3})\s*-?\s*(?:year|yr)\s*-?\s*old\b", _I),
)


def find_ages(text: str) -> list[Hit]:
    hits: list[Hit] = []
    for pattern in _AGE_PATTERNS:
        for m in pattern.finditer(text):
            if 0 < int(m.group("n")) <= 125:
                hits.append(Hit(m.start("n"), m.end("n"), "AGE", 0.85, "age"))
    return hits


# ---------------------------------------------------------------------- contact details and numbers

_EMAIL = re.compile(r"(?<![\w.%+\-])[A-Za-z0-9][A-Za-z0-9._%+\-]*@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
_TLDS = (
    "com|org|net|edu|gov|mil|int|info|biz|io|ai|app|dev|health|med|us|uk|ca|au|de|fr|nl|be|ch|at|it|es|pt|se|no|"
    "dk|fi|pl|cz|sk|hu|ro|bg|gr|cy|ee|lv|lt|si|hr|ie|is|br|mx|jp|cn|in|ru|za|nz"
)
_URL = re.compile(
    r"(?<![\w@])(?:(?:https?|ftp)://|www\.)[^\s<>\"'()\[\]{}]+"
    rf"|(?<![\w@.\-])[A-Za-z0-9][A-Za-z0-9\-]*(?:\.[A-Za-z0-9\-]+)*\.(?:{_TLDS})(?:\.(?:{_TLDS}))?(?:/[^\s<>\"']*)?(?![\w@\-])",
    _I,
)
_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]|\.\d)"
)
_IPV6 = re.compile(
    r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])"
    r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])"
)
_SSN = re.compile(r"(?<![\w\-])(?!000|666|9\d\d-?00)\d{3}([\-\s])\d{2}\1\d{4}(?![\w\-])")
_SSN_CUE = re.compile(
    r"\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\s*[:#]?\s*(?P<v>\d{3}-?\d{2}-?\d{4})\b", _I
)
_PHONE = re.compile(
    r"(?<![\w+\-./])(?:\+|00)?(?:\d{1,3}[\s.\-]?)?(?:\(\s*0?\d{1,4}\s*\)[\s.\-]?)?\d{1,8}(?:[\s.\-]\d{1,8}){0,5}"
    r"(?:\s*(?:x|ext\.?|extension)\s*\d{1,6})?(?![\w/]|-\d|\.\d)",
    _I,
)
_PHONE_CUE = re.compile(
    r"(?:phone|tel|telephone|fax|mobile|cell|call(?:ed)?|desk|office|contact|registered|pager|beeper|ph|mob|"
    r"whatsapp|sms|text|dial|number|no\.?|#)\b[^\n\w]{0,6}(?:\w+[^\n\w]{1,3}){0,3}$",
    _I,
)
_PHONE_AFTER = re.compile(r"^\s*[-(]?\s*(?:office|fax|mobile|cell|home|work|phone|tel)\b", _I)
_UUID = re.compile(r"(?<![\w\-])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![\w\-])")
_IBAN = re.compile(r"(?<![\w])[A-Za-z]{2}\d{2}(?:\s?[A-Za-z0-9]{4}){2,7}(?:\s?[A-Za-z0-9]{1,4})?(?![\w])")
_CARD = re.compile(r"(?<![\w\-])\d{4}([ \-])\d{4}\1\d{4}\1\d{1,7}(?![\w\-])")
_DIGITS = re.compile(r"(?<![\w.,\-/])\d{6,}(?![\w\-/]|[.,]\d)")
_KEYWORD_ID = re.compile(
    r"\b(?:mrn|medical\s+record(?:\s+(?:number|no\.?|#))?|record\s+(?:number|no\.?|#)|account(?:\s+(?:number|no\.?|#))?"
    r"|acct\.?|(?:patient|member|subscriber|policy|group|plan|claim|case|encounter|visit|accession|order|device|serial"
    r"|licen[cs]e|driver'?s\s+licen[cs]e|passport|insurance|health\s+plan|beneficiary|certificate|vehicle|vin|iban"
    r"|card|badge|employee|student|tax|npi|dea|ein|tin)\s*(?:id|number|no\.?|#|code)?|id|identifier|npi|dea|s/?n|dl)"
    r"\s*(?:is|was|:|#|=|-)?\s*#?\s*(?P<v>[A-Za-z0-9][A-Za-z0-9\-_/.]*[A-Za-z0-9])",
    _I,
)
_ALNUM_CODE = re.compile(
    r"(?<![\w\-.])(?=[A-Za-z0-9\-]*\d)(?=[A-Za-z0-9\-]*[A-Za-z])[A-Za-z0-9][A-Za-z0-9\-]{5,}(?![\w\-])"
)
_UNIT_TAIL = re.compile(
    r"^[\d.\-]+(?:mg|mcg|ug|ml|cc|kg|g|mmhg|units?|iu|cm|mm|hrs?|h|mins?|s|x|k|mb|gb|kb|hz|khz|mhz|mm3|ml/min|"
    r"st|nd|rd|th|s)$",
    _I,
)


def _digits(text: str) -> int:
    return sum(ch.isdigit() for ch in text)


def find_contacts(text: str) -> list[Hit]:
    """E-mails, URLs, IPs, SSNs, phone numbers and identifiers (record numbers, UUIDs, IBANs, cards, codes)."""
    hits: list[Hit] = []
    emails = [(m.start(), m.end()) for m in _EMAIL.finditer(text)]
    hits += [Hit(s, e, "EMAIL", 0.95, "email") for s, e in emails]
    for m in _URL.finditer(text):
        if any(s <= m.start() < e for s, e in emails):
            continue
        end = m.end()
        while end > m.start() and text[end - 1] in ".,;:!?)":
            end -= 1
        if "." in text[m.start() : end]:
            hits.append(Hit(m.start(), end, "URL", 0.85, "url"))
    hits += [Hit(m.start(), m.end(), "IP", 0.9, "ip") for p in (_IPV4, _IPV6) for m in p.finditer(text)]
    hits += [Hit(m.start(), m.end(), "SSN", 0.9, "ssn") for m in _SSN.finditer(text)]
    hits += [Hit(m.start("v"), m.end("v"), "SSN", 0.95, "ssn") for m in _SSN_CUE.finditer(text)]
    hits += [Hit(m.start(), m.end(), "ID", 0.95, "uuid") for m in _UUID.finditer(text)]
    for m in _IBAN.finditer(text):
        alnum = re.sub(r"\s", "", m.group())
        if 15 <= len(alnum) <= 34 and _digits(alnum) >= 8:
            hits.append(Hit(m.start(), m.end(), "ID", 0.9, "iban"))
    hits += [Hit(m.start(), m.end(), "ID", 0.85, "card") for m in _CARD.finditer(text)]
    for m in _KEYWORD_ID.finditer(text):
        value = m.group("v")
        if len(value) >= 4 and _digits(value) >= 2 and not _UNIT_TAIL.match(value):
            hits.append(Hit(m.start("v"), m.end("v"), "ID", 0.85, "keyword-id"))
    for m in _ALNUM_CODE.finditer(text):
        value = m.group()
        if _digits(value) >= 4 and not _UNIT_TAIL.match(value) and not re.fullmatch(r"[\d\-]+", value):
            hits.append(Hit(m.start(), m.end(), "ID", 0.6, "code"))
    hits += _phones(text)
    return hits


def _phones(text: str) -> list[Hit]:
    hits: list[Hit] = []
    for m in _PHONE.finditer(text):
        value = m.group().strip()
        start = m.start() + (len(m.group()) - len(m.group().lstrip()))
        end = start + len(value)
        n = _digits(value)
        if not 7 <= n <= 16:
            continue
        separated = bool(re.search(r"[\s.\-()]", value)) or value.startswith("+")
        before = text[max(0, start - 40) : start]
        cue = bool(_PHONE_CUE.search(before)) or bool(_PHONE_AFTER.match(text[end : end + 12]))
        us_layout = bool(
            re.fullmatch(r"(?:\+?1[\s.\-]?)?\(?\d{3}\)?[\s.\-]?\d{3}[\s.\-]\d{4}(?:\s*(?:x|ext\.?)\s*\d+)?", value, _I)
        )
        if not separated:
            if cue or (n in (10, 11) and us_layout):
                hits.append(Hit(start, end, "PHONE", 0.7, "phone"))
            continue
        if value.startswith(("+", "00", "(")) or us_layout or cue or n >= 10:
            hits.append(Hit(start, end, "PHONE", 0.8 if (us_layout or cue) else 0.6, "phone"))
    for m in _DIGITS.finditer(text):
        hits.append(Hit(m.start(), m.end(), "ID", 0.55, "digits"))
    return hits


# ---------------------------------------------------------------------- addresses and places


@dataclass(frozen=True)
class _AddressPatterns:
    street: re.Pattern[str]
    prefix_street: re.Pattern[str]
    ending_street: re.Pattern[str]
    unit: re.Pattern[str]
    po_box: re.Pattern[str]
    military: re.Pattern[str]
    block_part: re.Pattern[str]
    city_state_zip: re.Pattern[str]
    number_words_number: re.Pattern[str]
    cued_street: re.Pattern[str]
    trailing_place: re.Pattern[str]


_CAP_WORD = r"(?:[A-ZÀ-ÞĀ-Ž][\w'\u2019.\-]*|\d{1,3}(?:st|nd|rd|th)|[A-Z])"
_PARTICLE = r"(?:de|del|della|delle|dei|degli|di|da|do|dos|das|du|des|la|le|les|van|von|der|den|het|of|the|y|e|i)"


@cache
def _address_patterns() -> _AddressPatterns:
    places = place_lexicon()
    suffix = "|".join(re.escape(s) for s in sorted(places.street_suffixes, key=len, reverse=True))
    prefix = "|".join(
        re.escape(p) for p in sorted(places.street_prefixes, key=len, reverse=True) if len(p.rstrip(".")) >= 3
    )
    endings = "|".join(re.escape(e) for e in sorted(set(places.street_word_endings), key=len, reverse=True))
    number = r"\d{1,6}[A-Za-z]?(?:[\-/]\d{1,4}[A-Za-z]?)?"
    unit = (
        r"(?:(?i:apt|apartment|suite|ste|unit|room|rm|floor|fl|bldg|building|flat|no)\.?\s*#?\s*[A-Za-z]?\d{1,5}"
        r"[A-Za-z]?|#\s*\d{1,5}[A-Za-z]?)"
    )
    direction = r"(?:(?:[NSEW]|NE|NW|SE|SW|North|South|East|West)\.?\s+)?"
    street = re.compile(
        rf"(?<![\w\-/.])(?:\d{{1,6}}[ \t]+){{0,2}}{number}[ \t]+{direction}(?:{_CAP_WORD}[ \t]+){{0,4}}"
        rf"(?P<suffix>(?i:{suffix}))\b\.?(?:[ \t]+(?:[NSEW]|NE|NW|SE|SW)\b\.?)?(?:,?[ \t]*{unit})?"
    )
    prefix_street = re.compile(
        rf"(?<![\w\-])(?:\d{{1,6}}[ \t]+)?(?P<prefix>(?i:{prefix}))\.?[ \t]+"
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
        unit=re.compile(
            r"(?<![\w\-])(?:(?:Apt|Apartment|Suite|Ste|Unit|APT|SUITE|UNIT)\.?\s*#?\s*[A-Za-z]?\d{1,5}[A-Za-z]?)(?!\w)"
        ),
        po_box=re.compile(
            r"(?<!\w)(?:p\.?\s?o\.?\s*box|post\s+office\s+box|postbox|postfach|box)\s*#?\s*\d{1,6}(?!\w)", _I
        ),
        military=re.compile(
            r"(?<!\w)(?:PSC|Unit|USNS|USS|USNV|USCGC)[ \t]+[\w ]{1,30}?,?[ \t]+Box[ \t]+\d{1,5}"
            r"(?:\s*\n?\s*[AFD]PO[ \t]+A[AEP][ \t]+\d{5})?"
            r"|(?<!\w)[AFD]PO[ \t]+A[AEP][ \t]+\d{5}(?!\w)"
        ),
        block_part=re.compile(r"[ \t]*(?:,[ \t]*\n?|\n)[ \t]*,?[ \t]*(?P<seg>[^\n,]{1,60})"),
        # "07960 Aqqusinersuaq 111", "4923 Parmova 109": a building number, street words, a house number
        number_words_number=re.compile(
            rf"(?<![\w\-/.])\d{{1,6}}(?:[ \t]+\d{{1,6}})?[ \t]+(?:{_CAP_WORD}[ \t]+){{1,3}}\d{{1,5}}[A-Za-z]?\b\.?"
            rf"(?:,?[ \t]*{unit})?"
        ),
        # "lives on Grössgstötten 50", "located at Via Roma 131", "corner of Kuusiku 7"
        cued_street=re.compile(
            r"(?i:\b(?:lives?\s+(?:on|at|in)|living\s+(?:on|at)|located\s+at|address(?:\s+is)?\s*:?|sent\s+to|send\s+"
            r"(?:it|them|a\s+new\s+one)\s+to|corner\s+of|is\s+at|and|moved\s+to|resides?\s+(?:on|at)))[ \t]+"
            rf"(?P<street>(?:{_CAP_WORD}[ \t]+){{1,3}}\d{{1,5}}[A-Za-z]?\b\.?"
            rf"|(?:{_CAP_WORD}[ \t]+){{0,2}}{_CAP_WORD}[ \t]+(?i:{suffix})\b\.?)"
        ),
        trailing_place=re.compile(r"[ \t]+(?P<place>(?:[A-ZÀ-ÞĀ-Ž][\w'\u2019\-]*[ \t]*){1,4})(?=[.,;?!]?(?:\s|$))"),
        city_state_zip=re.compile(
            r"(?<![\w])(?P<city>[A-Z][A-Za-z'\u2019.\-]+(?:[ \t]+[A-Z][A-Za-z'\u2019.\-]+){0,3}),?[ \t]+"
            r"(?P<state>[A-Z]{2}|[A-Z][a-z]+(?:[ \t]+[A-Z][a-z]+)?),?[ \t]+(?P<zip>\d{5}(?:-\d{4})?)(?!\w)"
        ),
    )


_ZIP_SHAPE = re.compile(
    r"(?:\d{3,5}(?:[\- ]\d{3,4})?|[A-Z]\d[A-Z][ ]?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2}|\d{2}-\d{3})"
)
_SEG_WORD = re.compile(r"[^\W\d_][\w'\u2019.\-]*|\d[\w\-]*")


def _segment_kind(segment: str) -> EntityLabel | None:
    """What one line or comma part of an address block is: ZIP, LOCATION (city/state/country), ADDRESS or None."""
    seg = segment.strip().rstrip(".")
    if not seg:
        return None
    if _ZIP_SHAPE.fullmatch(seg):
        return "ZIP"
    words = _SEG_WORD.findall(seg)
    if not words or len(words) > 5:
        return None
    english = english_words()
    places = place_lexicon()
    if any(w[0].islower() and w.lower() in english and not re.fullmatch(_PARTICLE, w) for w in words):
        return None
    if seg.lower() in places.countries or seg.lower() in places.regions or seg.upper() in places.region_codes:
        return "LOCATION"
    if all(w[0].isupper() or w[0].isdigit() or re.fullmatch(_PARTICLE, w) for w in words):
        if any(_ZIP_SHAPE.fullmatch(w) for w in words) or words[-1].isdigit():
            return "ADDRESS"
        return "LOCATION"
    return None


def _extend_block(text: str, end: int, patterns: _AddressPatterns) -> list[Hit]:
    """Following lines/comma parts of an address block (city, state, ZIP, country), at most four."""
    hits: list[Hit] = []
    for _ in range(4):
        m = patterns.block_part.match(text, end)
        if m is None or "\n\n" in text[end : m.start("seg")]:
            break
        seg_start = m.start("seg")
        seg = re.split(r"[.;:!?](?=\s|$)", m.group("seg"), maxsplit=1)[0]
        seg_end = seg_start + len(seg.rstrip(" \t."))
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


_LOWER_SUFFIXES: Final = frozenset({"st", "str", "ave", "rd", "blvd", "ln", "dr"})


def _address_tail(text: str, end: int, patterns: _AddressPatterns) -> list[Hit]:
    """What follows a street on its line ("Apt. 892 GUÉRET LI", "Suite 833 Milford New Zealand") and the next
    lines of the address block."""
    hits: list[Hit] = []
    unit = patterns.unit.match(text, end + (len(text[end:]) - len(text[end:].lstrip(" \t,"))))
    if unit is not None:
        hits.append(Hit(unit.start(), unit.end(), "ADDRESS", 0.7, "unit"))
        end = unit.end()
    tail = patterns.trailing_place.match(text, end)
    if tail is not None:
        words = tail.group("place").split()
        english = common_words()
        if all(w.isupper() or w.lower() not in english for w in words):
            hits.append(Hit(tail.start("place"), tail.end("place"), "LOCATION", 0.55, "address-tail"))
            end = tail.end("place")
    return hits + _extend_block(text, end, patterns)


def find_addresses(text: str) -> list[Hit]:
    patterns = _address_patterns()
    hits: list[Hit] = []
    for pattern, name in (
        (patterns.street, "street"),
        (patterns.prefix_street, "street"),
        (patterns.ending_street, "street"),
        (patterns.po_box, "po-box"),
        (patterns.military, "military-address"),
        (patterns.unit, "unit"),
    ):
        for m in pattern.finditer(text):
            suffix = m.groupdict().get("suffix")
            if name == "street" and suffix and suffix[0].islower() and suffix.lower() not in _LOWER_SUFFIXES:
                continue
            end = m.end()
            hits.append(Hit(m.start(), end, "ADDRESS", 0.8, name))
            if name != "unit":
                hits += _address_tail(text, end, patterns)
    for m in patterns.number_words_number.finditer(text):
        hits.append(Hit(m.start(), m.end(), "ADDRESS", 0.6, "street-numbers"))
        hits += _address_tail(text, m.end(), patterns)
    for m in patterns.cued_street.finditer(text):
        hits.append(Hit(m.start("street"), m.end("street"), "ADDRESS", 0.6, "street-cue"))
        hits += _address_tail(text, m.end("street"), patterns)
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

    # runs of name-shaped tokens; a run with one name token is a name (unknown capitalised neighbours included)
    i = 0
    n = len(toks)
    while i < n:
        if strength[i] <= 0.0:
            i += 1
            continue
        lo = hi = i
        lower_run = toks[i].lower

        def member(tok: _Tok, k: int, lower_run: bool = lower_run) -> bool:
            if allowed(tok) or tok.clinical:
                return False
            if strength[k] > 0:
                return True
            if lower_run:
                return tok.lower and tok.lex
            if tok.initial or tok.particle:
                return True
            if not (tok.cap or tok.upper):
                return False
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
        while hi > lo and toks[hi].particle:
            hi -= 1
        best = max(strength[lo : hi + 1])
        if best > 0:
            hits.append(Hit(toks[lo].start, toks[hi].end, "NAME", best, "name"))
        i = max(i, hi) + 1
    return hits


RECOGNIZERS: Final[tuple[tuple[str, tuple[EntityLabel, ...], Callable[[str], list[Hit]]], ...]] = (
    ("SageNameRecognizer", ("NAME",), find_names),
    ("SageDateRecognizer", ("DATE",), find_dates),
    ("SageAgeRecognizer", ("AGE",), find_ages),
    ("SageAddressRecognizer", ("ADDRESS", "LOCATION", "ZIP"), find_addresses),
    ("SagePlaceRecognizer", ("LOCATION",), find_places),
    ("SageContactRecognizer", ("PHONE", "EMAIL", "SSN", "ID", "URL", "IP"), find_contacts),
)
"""(presidio recognizer name, labels it emits, function): every built-in recognizer, in one place."""


def all_hits(text: str) -> Iterable[Hit]:
    for _, _, fn in RECOGNIZERS:
        yield from fn(text)
