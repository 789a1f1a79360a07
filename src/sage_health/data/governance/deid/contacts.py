"""Contact details and numbers: :func:`find_contacts` (PHONE, EMAIL, SSN, ID, URL, IP)."""

from __future__ import annotations

import re

from sage_health.data.governance.deid.hit import Hit

_I = re.IGNORECASE

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
