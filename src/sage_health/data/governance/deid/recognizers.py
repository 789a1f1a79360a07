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
    MEDICAL_EPONYMS,
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
