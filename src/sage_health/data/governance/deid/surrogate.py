"""Secrets, per-patient date shifts and consistent surrogate values.

Everything here is a deterministic function of the secret key and the patient key: the same original value in
the same patient always maps to the same surrogate (no mapping table is stored), different patients get different
surrogates, and every date of one patient moves by the same number of days (intervals between the patient's dates
are preserved). Without the key the shift and the surrogates cannot be recomputed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any, Final

from sage_health.core.config import Settings
from sage_health.core.errors import ConfigError
from sage_health.data.governance.deid.lexicon import name_lexicon
from sage_health.data.governance.deid.recognizers import MONTHS
from sage_health.data.governance.deid.types import EntityLabel
from sage_health.data.governance.keys import key_from_file as _key_file

MAX_SHIFT_DAYS: Final = 365
KEY_FILE_NAME: Final = "deid.key"


def deid_key(settings: Settings) -> bytes:
    """The de-identification key: ``SAGE_DEID_KEY`` when set, else ``<store>/deid.key`` (created 0600 if absent).

    Keep the key outside the store in a real deployment: whoever holds it can undo the date shift.
    """
    if settings.deid_key is not None:
        value = settings.deid_key.get_secret_value()
        if len(value) < 16:
            raise ConfigError("SAGE_DEID_KEY is shorter than 16 characters; use a long random secret")
        return value.encode("utf-8")
    return key_from_file(settings.store / KEY_FILE_NAME)


def key_from_file(path: Path) -> bytes:
    """Read the de-identification key file, creating it (mode 0600) when it does not exist."""
    return _key_file(path, what="de-identification")


def _digest(key: bytes, *parts: str) -> bytes:
    return hmac.new(key, "\x1f".join(parts).encode("utf-8"), hashlib.sha256).digest()


def shift_days(key: bytes, patient_key: str | None) -> int:
    """The patient's date offset in days, in ``-MAX_SHIFT_DAYS .. -1`` (never 0)."""
    value = int.from_bytes(_digest(key, "date-shift", patient_key or "")[:8], "big")
    return -(value % MAX_SHIFT_DAYS + 1)


# ---------------------------------------------------------------------- dates

_MONTH_NAMES: Final = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
    "December",
)  # fmt: skip
_ISO = re.compile(r"(?P<y>\d{4})(?P<s>[-/.])(?P<m>\d{1,2})(?P=s)(?P<d>\d{1,2})(?P<rest>.*)", re.S)
_NUMERIC = re.compile(r"(?P<a>\d{1,2})(?P<s>[-/.])(?P<b>\d{1,2})(?P=s)(?P<y>\d{4}|\d{2})(?P<rest>.*)", re.S)
_MON = "|".join(sorted(MONTHS, key=len, reverse=True))
_MDY = re.compile(
    rf"(?P<pre>(?:[A-Za-z]+day,?\s+)?)(?P<mon>(?i:{_MON}))(?P<dot>\.?)(?P<sp>\s+)(?P<d>\d{{1,2}})(?!\d)(?P<ord>st|nd|rd|th)?"
    rf"(?:(?P<sep2>,?\s+)(?P<y>\d{{4}}))?(?P<rest>.*)",
    re.S,
)
_DMY = re.compile(
    rf"(?P<pre>(?:[A-Za-z]+day,?\s+)?)(?P<d>\d{{1,2}})(?!\d)(?P<ord>st|nd|rd|th)?(?P<of>\s+of)?(?P<sp>[\s\-]\s*)"
    rf"(?P<mon>(?i:{_MON}))(?P<dot>\.?)(?:(?P<sep2>,?[\s\-])(?P<y>\d{{4}}|\d{{2}}))?(?P<rest>.*)",
    re.S,
)
_MY = re.compile(rf"(?P<mon>(?i:{_MON}))(?P<dot>\.?)(?P<sep2>,?[\s\-])(?P<y>\d{{4}})", re.S)
_YEAR_ONLY = re.compile(r"(?:19|20)\d{2}")


def _year4(text: str) -> int:
    value = int(text)
    if len(text) == 2:
        value += 2000 if value < 50 else 1900
    return value


def _pad(value: int, like: str) -> str:
    """``value`` zero-padded to two digits when the original was written with two."""
    return f"{value:02d}" if len(like) == 2 else str(value)


def _year_text(value: int, like: str) -> str:
    return f"{value % 100:02d}" if len(like) == 2 else str(value)


def _month_text(month: int, like: str) -> str:
    full = _MONTH_NAMES[month - 1]
    word = like.rstrip(".")
    if len(word) <= 4 and word.lower() != full.lower():
        out = "Sept" if word.lower() == "sept" and month == 9 else full[:3]
    else:
        out = full
    if word.isupper():
        return out.upper()
    if word.islower():
        return out.lower()
    return out


def _ordinal(day: int) -> str:
    return "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")


def _safe_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def shift_date_text(text: str, days: int) -> str | None:
    """``text`` (one date in a common format) moved by ``days``, in the same format; None when not a date.

    Formats kept: ISO (with any time suffix), ``m/d/y`` and ``d.m.y`` numerics (zero padding and 2/4-digit years
    kept), ``March 3, 2019``, ``Mar 3rd``, ``03 Mar 2019``, ``3rd of March, 2019``, ``March 2019`` and a bare year
    (month and year precision move by the shift of their first day). Clock times are not moved.
    """
    delta = timedelta(days=days)
    if m := _ISO.fullmatch(text):
        d = _safe_date(int(m["y"]), int(m["m"]), int(m["d"]))
        if d is None:
            return None
        n = d + delta
        return f"{n.year:04d}{m['s']}{_pad(n.month, m['m'])}{m['s']}{_pad(n.day, m['d'])}{m['rest']}"
    if m := _NUMERIC.fullmatch(text):
        a, b, y = int(m["a"]), int(m["b"]), _year4(m["y"])
        month_first = a <= 12
        d = _safe_date(y, a, b) if month_first else _safe_date(y, b, a)
        if d is None:
            return None
        n = d + delta
        first, second = (n.month, n.day) if month_first else (n.day, n.month)
        s = m["s"]
        return f"{_pad(first, m['a'])}{s}{_pad(second, m['b'])}{s}{_year_text(n.year, m['y'])}{m['rest']}"
    if m := _MDY.fullmatch(text):
        month = MONTHS[m["mon"].lower()]
        year = int(m["y"]) if m["y"] else 2000
        d = _safe_date(year, month, int(m["d"]))
        if d is None:
            return None
        n = d + delta
        out = f"{_month_text(n.month, m['mon'])}{m['dot']}{m['sp']}{_pad(n.day, m['d'])}"
        if m["ord"]:
            out += _ordinal(n.day)
        if m["y"]:
            out += f"{m['sep2']}{n.year}"
        return out + m["rest"]  # a weekday name would be wrong after the shift: dropped
    if m := _DMY.fullmatch(text):
        month = MONTHS[m["mon"].lower()]
        year = _year4(m["y"]) if m["y"] else 2000
        d = _safe_date(year, month, int(m["d"]))
        if d is None:
            return None
        n = d + delta
        out = _pad(n.day, m["d"]) + (_ordinal(n.day) if m["ord"] else "") + (m["of"] or "")
        out += f"{m['sp']}{_month_text(n.month, m['mon'])}{m['dot']}"
        if m["y"]:
            out += f"{m['sep2']}{_year_text(n.year, m['y'])}"
        return out + m["rest"]
    if m := _MY.fullmatch(text):
        n = date(int(m["y"]), MONTHS[m["mon"].lower()], 15) + delta
        return f"{_month_text(n.month, m['mon'])}{m['dot']}{m['sep2']}{n.year}"
    if _YEAR_ONLY.fullmatch(text):
        return str((date(int(text), 7, 1) + delta).year)
    return None


# ---------------------------------------------------------------------- surrogates


@cache
def _surrogate_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    from faker.providers.person.en_US import Provider as PersonProvider

    def names(value: Any) -> tuple[str, ...]:
        items = list(value.keys()) if isinstance(value, dict) else list(value)
        return tuple(sorted({str(v) for v in items if str(v).isalpha()}))

    return names(PersonProvider.first_names), names(PersonProvider.last_names)


def _shape(like: str, value: str) -> str:
    if like.isupper() and len(like) > 1:
        return value.upper()
    if like.islower():
        return value.lower()
    return value


def _format_preserving(digest: bytes, original: str) -> str:
    """Every digit and letter of ``original`` replaced by a pseudo-random one; layout and case kept."""
    stream = hashlib.shake_256(digest).digest(max(16, len(original)))
    out: list[str] = []
    for i, ch in enumerate(original):
        r = stream[i]
        if ch.isdigit():
            out.append(str(r % 10))
        elif ch.isalpha() and ch.isascii():
            letter = chr(ord("a") + r % 26)
            out.append(letter.upper() if ch.isupper() else letter)
        else:
            out.append(ch)
    return "".join(out)


class SurrogateFactory:
    """Consistent fake values: ``value(label, original, patient_key)`` is a pure function of the key."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._faker: Any = None

    def _fake(self, seed: bytes) -> Any:
        if self._faker is None:
            from faker import Faker

            self._faker = Faker("en_US")
        self._faker.seed_instance(int.from_bytes(seed[:8], "big"))
        return self._faker

    def value(self, label: EntityLabel, original: str, patient_key: str | None) -> str:
        norm = re.sub(r"\s+", " ", original.strip().lower())
        seed = _digest(self._key, "surrogate", patient_key or "", label, norm)
        if label == "NAME":
            return self._name(original, patient_key)
        if label in {"PHONE", "SSN", "ID", "ZIP"}:
            return _format_preserving(seed, original)
        fake = self._fake(seed)
        if label == "EMAIL":
            return f"{fake.user_name()}@example.org"
        if label == "URL":
            return f"https://example.org/{seed.hex()[:10]}"
        if label == "IP":
            return f"192.0.2.{seed[0] % 254 + 1}"
        if label == "ADDRESS":
            return _shape(original, str(fake.street_address()))
        if label == "LOCATION":
            return _shape(original, str(fake.city()))
        return f"[{label}]"

    def _name(self, original: str, patient_key: str | None) -> str:
        """Token by token, so "John Smith" and a later "Smith" get the same surname."""
        firsts, lasts = _surrogate_names()
        lexicon = name_lexicon()
        tokens = re.split(r"(\s+|-)", original)
        out: list[str] = []
        for token in tokens:
            word = token.rstrip(".0123456789'\u2019s")
            if not word or not any(c.isalpha() for c in word) or token.isspace() or token == "-":  # noqa: S105
                out.append(token)
                continue
            if len(word) == 1:  # an initial
                digest = _digest(self._key, "initial", patient_key or "", word.lower())
                tail = token[len(word) :].lstrip("0123456789")
                out.append(_shape(word, chr(ord("A") + digest[0] % 26)) + tail)
                continue
            core = word.lower()
            pool = firsts if core in lexicon.first and core not in lexicon.last else lasts
            digest = _digest(self._key, "name", patient_key or "", core)
            out.append(_shape(word, pool[int.from_bytes(digest[:4], "big") % len(pool)]))
        return "".join(out)


def pseudonym(key: bytes, value: str) -> str:
    """A stable pseudonym for a record or resource id (the same id -> the same pseudonym, across patients, so
    references between de-identified resources still resolve). UUID-shaped."""
    h = _digest(key, "pseudonym", value).hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
