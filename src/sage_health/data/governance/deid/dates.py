"""Dates, times and ages: :func:`find_dates` (DATE) and :func:`find_ages` (AGE), and :func:`calendar_date`."""

from __future__ import annotations

import re
from datetime import date
from typing import Final

from sage_health.data.governance.deid.hit import Hit

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


def calendar_date(text: str) -> str | None:
    """The ISO date (``YYYY-MM-DD``) that ``text``, one DATE span, names when it is written with a year, a month and
    a day in one of :data:`DATE_PATTERNS` ("2015-03-04T09:30", "3/4/2015", "March 4, 2015", "4 March 2015"), so
    that differently written dates compare equal; None for a partial date (no year or no day), a time, a weekday,
    a year or a text that is not one date.

    Numeric dates read month first unless the first number cannot be a month (as :func:`find_dates`); two-digit
    years are 19xx from 50 up, else 20xx. Numbers that make no calendar day give the lower-cased text instead.
    """
    stripped = text.strip()
    for pattern in DATE_PATTERNS:
        m = pattern.fullmatch(stripped)
        if m is None:
            continue
        groups = m.groupdict()
        if not groups.get("y") or not groups.get("d"):
            return None
        year = int(groups["y"])
        if len(groups["y"]) == 2:
            year += 2000 if year < 50 else 1900
        day = int(groups["d"])
        if groups.get("mon"):
            month = MONTHS[groups["mon"].lower()]
        else:
            month = int(groups["m"])
            if month > 12 >= day:
                month, day = day, month
        try:
            return date(year, month, day).isoformat()
        except ValueError:
            return stripped.lower()
    return None


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
