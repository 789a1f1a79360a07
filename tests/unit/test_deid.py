"""De-identification: modes, surrogate consistency, date shifting, ages, the medical allow-list, structured FHIR
rules, the key file and bad input. Real components only (presidio-analyzer on a blank spaCy pipeline, faker)."""

from __future__ import annotations

import itertools
import re
import stat
from datetime import date, datetime
from pathlib import Path

import pytest

from sage_health.core.config import Settings
from sage_health.core.errors import ConfigError, DataError
from sage_health.data.governance.deid import (
    DeidentificationError,
    Deidentifier,
    PresidioDeidentifier,
    deid_key,
    deidentify_fhir,
    deidentify_record,
    shift_date_text,
)
from sage_health.data.schema import Coding as SchemaCoding
from sage_health.data.schema import DiagnosticReport, Observation, Patient, ReportSections

KEY = b"unit-test-deid-key-0123456789abcdef"
NOTE = (
    "Patient John Smith (MRN 48213377) was seen by Dr. Maria Gonzalez on March 3, 2019 and again on 2019-04-02. "
    "He lives at 12 Main Street, Boston, MA 02110; phone (617) 555-0199; e-mail john.smith@example.com; "
    "SSN 123-45-6789. A 93-year-old brother has Parkinson's disease."
)


@pytest.fixture(scope="module")
def deid() -> PresidioDeidentifier:
    return PresidioDeidentifier(KEY)


def _labels(deid: PresidioDeidentifier, text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for span in deid.detect(text):
        out.setdefault(span.label, []).append(text[span.start : span.end])
    return out


def test_is_a_deidentifier(deid: PresidioDeidentifier) -> None:
    assert isinstance(deid, Deidentifier)


def test_detects_every_kind_in_a_note(deid: PresidioDeidentifier) -> None:
    found = _labels(deid, NOTE)
    assert "John Smith" in found["NAME"]
    assert "Maria Gonzalez" in found["NAME"]
    assert {"March 3, 2019", "2019-04-02"} <= set(found["DATE"])
    # issue 14: an address block is one ADDRESS span (street, city, state and ZIP), as one identifier
    assert "12 Main Street, Boston, MA 02110" in found["ADDRESS"]
    assert "ZIP" not in found
    assert "(617) 555-0199" in found["PHONE"]
    assert found["EMAIL"] == ["john.smith@example.com"]
    assert found["SSN"] == ["123-45-6789"]
    assert "48213377" in found["ID"]
    assert found["AGE"] == ["93"]
    spans = deid.detect(NOTE)
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans)), "spans must not overlap"
    assert "John Smith" not in repr(spans[0]), "a span's repr carries no PHI"


def test_tag_mode(deid: PresidioDeidentifier) -> None:
    result = deid.deidentify(NOTE, patient_key="p1", mode="tag")
    text = result.text
    for value in ("John", "Smith", "Gonzalez", "March 3", "2019-04-02", "Main Street", "555-0199", "123-45-6789"):
        assert value not in text
    assert "[NAME]" in text
    assert "[DATE]" in text
    assert "[PHONE]" in text
    assert "[AGE]-year-old" in text
    assert "Parkinson's disease" in text
    assert result.counts()["NAME"] >= 2
    rep = result.replacements[0]
    assert text[rep.out_start : rep.out_end] == f"[{rep.label}]"


def test_surrogates_are_consistent_per_patient_and_differ_between_patients(deid: PresidioDeidentifier) -> None:
    a1 = deid.deidentify(NOTE, patient_key="patient-a", mode="surrogate").text
    a2 = deid.deidentify(NOTE, patient_key="patient-a", mode="surrogate").text
    b = deid.deidentify(NOTE, patient_key="patient-b", mode="surrogate").text
    assert a1 == a2
    assert a1 != b
    for value in ("John", "Smith", "Gonzalez", "555-0199", "123-45-6789", "48213377", "example.com"):
        assert value not in a1
    assert "90+-year-old" in a1
    # the same name in another text of the same patient gets the same surrogate, token by token
    first = deid.deidentify("Seen by Dr. Gonzalez today.", patient_key="patient-a", mode="surrogate").text
    surname = first.removeprefix("Seen by Dr. ").removesuffix(" today.")
    assert surname in a1
    other_key = PresidioDeidentifier(b"another-key-0123456789abcdefghij")
    assert other_key.deidentify(NOTE, patient_key="patient-a", mode="surrogate").text != a1


def test_date_shift_preserves_intervals_and_format(deid: PresidioDeidentifier) -> None:
    text = "Admitted 2019-03-03, discharged 03/10/2019, seen again on 17 March 2019 and on April 1, 2019."
    out = deid.deidentify(text, patient_key="p-dates", mode="shift").text
    shift = deid.date_shift("p-dates")
    assert -365 <= shift <= -1
    iso = re.search(r"Admitted (\d{4}-\d{2}-\d{2})", out)
    us = re.search(r"discharged (\d{2}/\d{2}/\d{4})", out)
    dmy = re.search(r"on (\d{1,2} [A-Z][a-z]+ \d{4})", out)
    mdy = re.search(r"on ([A-Z][a-z]+ \d{1,2}, \d{4})\.", out)
    assert iso, out
    assert us, out
    assert dmy, out
    assert mdy, out
    d1 = date.fromisoformat(iso.group(1))
    d2 = datetime.strptime(us.group(1), "%m/%d/%Y").date()
    d3 = datetime.strptime(dmy.group(1), "%d %B %Y").date()
    d4 = datetime.strptime(mdy.group(1), "%B %d, %Y").date()
    assert (d2 - d1).days == 7
    assert (d3 - d1).days == 14
    assert (d4 - d1).days == 29
    assert (d1 - date(2019, 3, 3)).days == shift
    assert deid.date_shift("another patient") != shift or deid.date_shift("third") != shift


@pytest.mark.parametrize(
    ("text", "days", "expected"),
    [
        ("2019-03-03", -10, "2019-02-21"),
        ("2019-03-03T10:15:00Z", -1, "2019-03-02T10:15:00Z"),
        ("3/3/19", -3, "2/28/19"),
        ("03 Mar 2019", -3, "28 Feb 2019"),
        ("March 3rd, 2019", -2, "March 1st, 2019"),
        ("MARCH 2019", -40, "FEBRUARY 2019"),
        ("2019", -200, "2018"),
        ("not a date", -1, None),
    ],
)
def test_shift_date_text_keeps_the_format(text: str, days: int, expected: str | None) -> None:
    assert shift_date_text(text, days) == expected


def test_ages(deid: PresidioDeidentifier) -> None:
    text = "A 45-year-old woman and her 92 year old father; grandmother aged 101."
    tagged = deid.deidentify(text, patient_key="p", mode="tag").text
    assert "45-year-old" in tagged, "ages up to 89 are not PHI under Safe Harbor"
    assert "[AGE] year old father" in tagged
    assert "aged [AGE]" in tagged
    shifted = deid.deidentify(text, patient_key="p", mode="surrogate").text
    assert "90+ year old father" in shifted
    assert "aged 90+" in shifted


@pytest.mark.parametrize(
    "sentence",
    [
        "Findings are consistent with Lewy body dementia.",
        "History of Parkinson's disease and Graves disease.",
        "Kerley B lines at the bases; Foley catheter in place.",
        "Known Hodgkin lymphoma, Down syndrome and Barrett esophagus.",
        "Creutzfeldt-Jakob disease was excluded; Guillain-Barre syndrome suspected.",
        "Swan-Ganz catheter tip in the right pulmonary artery; Valsalva maneuver performed.",
        "Wilson disease, Cushing syndrome and Addison disease were considered.",
        "Bell's palsy resolved. Crohn disease in remission.",
    ],
)
def test_medical_eponyms_are_not_redacted(deid: PresidioDeidentifier, sentence: str) -> None:
    assert deid.detect(sentence) == []


def test_titled_eponym_surname_is_a_name(deid: PresidioDeidentifier) -> None:
    found = _labels(deid, "Dr. Wilson reviewed the films with Mr. Parkinson.")
    assert found["NAME"] == ["Wilson", "Parkinson"]


def test_synthea_style_and_uppercase_names(deid: PresidioDeidentifier) -> None:
    found = _labels(deid, "Patient Abe604 Bode78 arrived. Signed: JOHN SMITH")
    assert "Abe604 Bode78" in found["NAME"]
    assert "JOHN SMITH" in found["NAME"]


def _covered(deid: PresidioDeidentifier, text: str, value: str) -> bool:
    """Every alphanumeric character of ``value`` (its first occurrence in ``text``) lies in a detected span."""
    start = text.index(value)
    spans = deid.detect(text)
    return all(any(s.start <= i < s.end for s in spans) for i in range(start, start + len(value)) if text[i].isalnum())


@pytest.mark.parametrize(
    ("text", "values"),
    [
        # an address block: street, unit line, city line, a blank line, then "Country ZIP"
        (
            "Please ship it to 4410 Lindenweg 21\n Suite 8\n Arnhem\n\n Netherlands 6811",
            ["4410 Lindenweg 21", "Suite 8", "Arnhem", "Netherlands 6811"],
        ),
        ("??? 12 calle mayor 5\n??? apt. 3\n??? spain 28013", ["calle mayor 5", "apt. 3", "spain 28013"]),
        ("Our office is at ul. Kwiatowa 8, Kraków, Poland.", ["ul. Kwiatowa 8", "Kraków", "Poland"]),
        ("Meet me at 12 Petőfi Sándor u. 3. tomorrow", ["12 Petőfi Sándor u. 3"]),
        ("We met at the corner of Rue Cler and Avenue Rapp.", ["the corner of Rue Cler and Avenue Rapp"]),
        ("psc 1234, box 5678\napo ae 09012", ["psc 1234, box 5678\napo ae 09012"]),
        ("He lives on the east side of Ravnikar Ulica 17.", ["Ravnikar Ulica 17"]),
        ("The depot is at 5120 88 Kallio Rinne", ["5120 88 Kallio Rinne"]),
        ("Send it to 40 Harbour Road Unit 2 Nelson New Zealand", ["40 Harbour Road Unit 2 Nelson New Zealand"]),
    ],
)
def test_international_addresses(deid: PresidioDeidentifier, text: str, values: list[str]) -> None:
    for value in values:
        assert _covered(deid, text, value), value


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("Our founders: Zorvan, Miller and Jansen.", ["Zorvan", "Miller", "Jansen"]),  # an enumeration of names
        ("residents: sven, ingrid, maren and joachim.", ["sven", "ingrid", "maren", "joachim"]),
        ("Tavrin spent two years in Oslo.", ["Tavrin"]),  # a sentence-initial name before a person verb
        ("Ingrid, can you call me back?", ["Ingrid"]),  # addressed by name
        ("signed: maria k nowak", ["maria k nowak"]),  # a lower-case middle initial
        ("my name is zofija", ["zofija"]),
        ("Laura Hides\n\n12 Main Street", ["Laura Hides"]),  # a line that is only a name
        ("please change it to Ines Pagan", ["Ines Pagan"]),  # a given name, then the surname
    ],
)
def test_names_without_titles(deid: PresidioDeidentifier, text: str, values: list[str]) -> None:
    for value in values:
        assert _covered(deid, text, value), value


@pytest.mark.parametrize(
    "sentence",
    [
        "A condition called claudication is characterized by cramping.",
        "Admitted on Day 3 in Stage 2 of Grade 4 at Level 5.",
        "Parkinson, Huntington and Wilson disease were discussed.",
        "Heart Size\nNormal Chest",
        "7 Songwriters Of The 80s You Should Know",
    ],
)
def test_new_rules_leave_clinical_and_plain_text_alone(deid: PresidioDeidentifier, sentence: str) -> None:
    assert [s.text for s in deid.detect(sentence) if s.label in ("NAME", "ADDRESS", "LOCATION")] == []


def test_structured_fhir_patient_by_rule(deid: PresidioDeidentifier) -> None:
    patient = {
        "resourceType": "Patient",
        "id": "cb5696d9-a0de-4f49-94f9-433f96a28eb0",
        "name": [{"use": "official", "family": "Fonseca", "given": ["Agustin"], "prefix": ["Mr."]}],
        "telecom": [{"system": "phone", "value": "555-929-9025"}],
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-88-8619"}],
        "address": [
            {
                "line": ["586 Hilll Ranch Unit 68"],
                "city": "Fall River",
                "state": "Massachusetts",
                "postalCode": "02720",
                "country": "US",
                "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/geolocation"}],
            }
        ],
        "birthDate": "1994-02-01",
    }
    out = deidentify_fhir(patient, deid, patient_key="p1", mode="tag")
    assert out["address"] == [{"state": "Massachusetts", "country": "US", "postalCode": "027"}]
    assert "telecom" not in out
    assert "identifier" not in out
    assert out["name"] == [{"use": "official", "given": ["[NAME]"], "family": "[NAME]"}]
    shifted = date.fromisoformat(out["birthDate"])
    assert (shifted - date(1994, 2, 1)).days == deid.date_shift("p1")
    assert out["id"] != patient["id"]
    assert re.fullmatch(r"[0-9a-f\-]{36}", out["id"])
    assert patient["name"][0]["family"] == "Fonseca", "the input is not modified"
    surrogate = deidentify_fhir(patient, deid, patient_key="p1", mode="surrogate")
    assert surrogate["telecom"][0]["value"] != "555-929-9025"
    assert re.fullmatch(r"\d{3}-\d{3}-\d{4}", surrogate["telecom"][0]["value"])
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "subject": {"reference": "urn:uuid:cb5696d9-a0de-4f49-94f9-433f96a28eb0"},
        "period": {"start": "2019-03-03T10:00:00+00:00", "end": "2019-03-04T10:00:00+00:00"},
    }
    enc = deidentify_fhir(encounter, deid, patient_key="p1", mode="tag")
    assert enc["subject"]["reference"] == f"urn:uuid:{out['id']}", "references resolve to the pseudonymised id"
    start = datetime.fromisoformat(enc["period"]["start"]).date()
    assert (start - date(2019, 3, 3)).days == deid.date_shift("p1")


def test_deidentify_record(deid: PresidioDeidentifier) -> None:
    patient = Patient(
        id="synthea/Patient/cb5696d9",
        source="synthea",
        patient_id="synthea/Patient/cb5696d9",
        given_names=["Agustin"],
        family_name="Fonseca",
        prefix="Mr.",
        birth_date=date(1994, 2, 1),
        address=["586 Hilll Ranch Unit 68, Fall River, Massachusetts, 02720, US"],
        telecom=["phone: 555-929-9025"],
        identifiers=[SchemaCoding(system="http://hl7.org/fhir/sid/us-ssn", code="999-88-8619")],
    )
    clean = deidentify_record(patient, deid, mode="tag")
    assert isinstance(clean, Patient)
    dumped = clean.model_dump_json()
    for value in ("Agustin", "Fonseca", "Hilll", "Fall River", "02720", "555-929-9025", "999-88-8619", "cb5696d9"):
        assert value not in dumped
    assert clean.address == ["Massachusetts, 027, US"]
    assert clean.birth_date is not None
    assert (clean.birth_date - date(1994, 2, 1)).days == deid.date_shift(patient.id)
    assert clean.provenance.transforms[-1].name == "deid.tag"
    report = DiagnosticReport(
        id="iu-xray/DiagnosticReport/7",
        source="iu-xray",
        patient_id="synthea/Patient/cb5696d9",
        effective=datetime(2019, 3, 3, 10, 0),
        report_sections=ReportSections(findings="Compared with the study of 2019-01-02 read by Dr. Gonzalez."),
    )
    clean_report = deidentify_record(report, deid, mode="shift")
    assert isinstance(clean_report, DiagnosticReport)
    findings = clean_report.report_sections.findings or ""
    assert "Gonzalez" not in findings
    assert "2019-01-02" not in findings
    assert clean_report.patient_id == clean.id, "records of one patient keep pointing at the same pseudonym"
    obs = Observation(id="synthea/Observation/1", source="synthea", code=SchemaCoding(display="Heart rate"))
    assert deidentify_record(obs, deid).id != obs.id


def test_old_patients_lose_their_birth_date(deid: PresidioDeidentifier) -> None:
    old = Patient(id="fhir/Patient/x", source="fhir", birth_date=date(1920, 5, 5))
    assert deidentify_record(old, deid).birth_date is None


def test_key_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    settings = Settings(store=tmp_path / "store", deid_key=None)
    key = deid_key(settings)
    path = tmp_path / "store" / "deid.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64
    assert deid_key(settings) == key
    explicit = Settings(store=tmp_path / "other", deid_key="an-explicit-secret-of-some-length")
    assert deid_key(explicit) == b"an-explicit-secret-of-some-length"
    assert not (tmp_path / "other" / "deid.key").exists()
    with pytest.raises(ConfigError, match="shorter than 16"):
        deid_key(Settings(store=tmp_path, deid_key="short"))


def test_bad_input_gives_clear_errors(deid: PresidioDeidentifier) -> None:
    with pytest.raises(DeidentificationError, match="needs a str, got int") as info:
        deid.detect(42)  # type: ignore[arg-type]
    assert isinstance(info.value, DataError)
    with pytest.raises(DeidentificationError, match="unknown de-identification mode 'blur'"):
        deid.deidentify("John Smith", patient_key="p", mode="blur")  # type: ignore[arg-type]
    with pytest.raises(DeidentificationError, match="at least 16 bytes"):
        PresidioDeidentifier(b"short")
    with pytest.raises(DeidentificationError, match="resourceType"):
        deidentify_fhir({"name": "x"}, deid, patient_key="p")
    assert deid.detect("") == []
    assert deid.deidentify("   ", patient_key=None).text == "   "
