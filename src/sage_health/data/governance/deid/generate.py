"""Training text for the learned de-identification component (:mod:`.learned`), written for it.

Nothing here is read from an evaluation file: the templates below were written for this module (clinical notes,
referral and discharge letters, intake forms, patient messages, general-domain sentences, address blocks in many
national layouts) and their slots are filled with ``faker`` identities of ~40 locales (names, streets, cities,
regions, postal codes, phone numbers in national and international layouts). Sentences without any identifier —
clinical sentences full of eponyms ("Graves disease", "Murphy sign"), headings, capitalised clinical words — teach
the model what not to redact.

Each template has an id (``family:index``); :func:`generate` can hold families or ids out, so that the model can be
validated on templates it was not trained on (the same discipline as ``eval deid --cv-by template``).

Labels the model learns (:data:`MODEL_LABELS`): NAME, ADDRESS (a whole address: street, unit, city, state, postal
code and country as one span), LOCATION (a city, region or country on its own), PHONE and ZIP (a postal code on its
own). Dates, e-mails, ids and URLs appear in the text unlabelled: the rule-based recognizers own them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from faker import Faker

MODEL_LABELS: Final[tuple[str, ...]] = ("NAME", "ADDRESS", "LOCATION", "PHONE", "ZIP")

#: faker locales and their weights (Latin-script Europe and the Americas most, some Greek and Cyrillic script).
LOCALES: Final[dict[str, float]] = {
    "en_US": 6.0, "en_GB": 2.0, "en_CA": 1.5, "en_AU": 1.5, "en_NZ": 1.0, "en_IE": 1.0, "en_IN": 0.7,
    "de_DE": 1.5, "de_AT": 1.0, "de_CH": 0.7, "fr_FR": 1.5, "fr_CA": 0.7, "fr_CH": 0.5, "it_IT": 1.5,
    "es_ES": 1.5, "es_MX": 1.0, "es_AR": 0.5, "pt_BR": 1.5, "pt_PT": 1.0, "nl_NL": 1.2, "nl_BE": 0.8,
    "da_DK": 1.2, "sv_SE": 1.2, "no_NO": 1.2, "fi_FI": 1.2, "is_IS": 0.8, "pl_PL": 1.2, "cs_CZ": 1.0,
    "sk_SK": 0.8, "hu_HU": 1.0, "ro_RO": 0.8, "hr_HR": 0.8, "sl_SI": 0.8, "et_EE": 0.8, "lv_LV": 0.8,
    "lt_LT": 0.8, "el_GR": 0.6, "el_CY": 0.5, "tr_TR": 0.6, "ru_RU": 0.4, "bg_BG": 0.4, "uk_UA": 0.3,
    "ga_IE": 0.4, "id_ID": 0.3, "vi_VN": 0.3,
}  # fmt: skip
_COUNTRY_OF: Final[dict[str, str]] = {
    "en_US": "United States", "en_GB": "United Kingdom", "en_CA": "Canada", "en_AU": "Australia",
    "en_NZ": "New Zealand", "en_IE": "Ireland", "en_IN": "India", "de_DE": "Germany", "de_AT": "Austria",
    "de_CH": "Switzerland", "fr_FR": "France", "fr_CA": "Canada", "fr_CH": "Switzerland", "it_IT": "Italy",
    "es_ES": "Spain", "es_MX": "Mexico", "es_AR": "Argentina", "pt_BR": "Brazil", "pt_PT": "Portugal",
    "nl_NL": "Netherlands", "nl_BE": "Belgium", "da_DK": "Denmark", "sv_SE": "Sweden", "no_NO": "Norway",
    "fi_FI": "Finland", "is_IS": "Iceland", "pl_PL": "Poland", "cs_CZ": "Czech Republic", "sk_SK": "Slovakia",
    "hu_HU": "Hungary", "ro_RO": "Romania", "hr_HR": "Croatia", "sl_SI": "Slovenia", "et_EE": "Estonia",
    "lv_LV": "Latvia", "lt_LT": "Lithuania", "el_GR": "Greece", "el_CY": "Cyprus", "tr_TR": "Turkey",
    "ru_RU": "Russia", "bg_BG": "Bulgaria", "uk_UA": "Ukraine", "ga_IE": "Ireland", "en_PH": "Philippines",
    "id_ID": "Indonesia", "vi_VN": "Vietnam",
}  # fmt: skip
_COUNTRY_CODE: Final[dict[str, str]] = {
    "en_US": "1", "en_GB": "44", "en_CA": "1", "en_AU": "61", "en_NZ": "64", "en_IE": "353", "en_IN": "91",
    "de_DE": "49", "de_AT": "43", "de_CH": "41", "fr_FR": "33", "fr_CA": "1", "fr_CH": "41", "it_IT": "39",
    "es_ES": "34", "es_MX": "52", "es_AR": "54", "pt_BR": "55", "pt_PT": "351", "nl_NL": "31", "nl_BE": "32",
    "da_DK": "45", "sv_SE": "46", "no_NO": "47", "fi_FI": "358", "is_IS": "354", "pl_PL": "48", "cs_CZ": "420",
    "sk_SK": "421", "hu_HU": "36", "ro_RO": "40", "hr_HR": "385", "sl_SI": "386", "et_EE": "372", "lv_LV": "371",
    "lt_LT": "370", "el_GR": "30", "el_CY": "357", "tr_TR": "90", "ru_RU": "7", "bg_BG": "359", "uk_UA": "380",
    "ga_IE": "353", "en_PH": "63", "id_ID": "62", "vi_VN": "84",
}  # fmt: skip
_TITLES: Final = ("Dr.", "Dr", "Mr.", "Mrs.", "Ms.", "Miss", "Prof.", "Mr", "Mrs", "Ms", "Doctor", "Nurse", "Sr.")
_SLOT: Final = re.compile(r"\{([A-Z_]+)\}")

#: slot -> label of the span it becomes (None: filled, not labelled)
SLOT_LABELS: Final[dict[str, str | None]] = {
    "NAME": "NAME", "FIRST": "NAME", "LAST": "NAME", "NAME2": "NAME", "FIRST2": "NAME", "LAST2": "NAME",
    "DOCTOR": "NAME", "ADDRESS": "ADDRESS", "STREET": "ADDRESS", "ADDRESS_LINE": "ADDRESS", "CITY": "LOCATION",
    "CITY2": "LOCATION", "COUNTRY": "LOCATION", "REGION": "LOCATION", "PLACE": "LOCATION", "PHONE": "PHONE",
    "PHONE2": "PHONE", "ZIP": "ZIP", "TITLE": None, "DATE": None, "TIME": None, "EMAIL": None, "ORG": None,
    "AGE": None, "ID": None, "URL": None, "JOB": None, "NRP": None, "DRUG": None, "NUM": None, "WEEKDAY": None,
    "MONTH": None,
}  # fmt: skip


@dataclass(frozen=True)
class Example:
    """One generated text and its labelled spans (character offsets, end exclusive)."""

    text: str
    spans: tuple[tuple[int, int, str], ...]
    template: str
    """``family:index`` of the template it was made from."""


# ---------------------------------------------------------------------- templates (written for this module)

TEMPLATES: Final[dict[str, tuple[str, ...]]] = {
    "chat": (
        "My name is {NAME} and I need to reschedule my appointment.",
        "Hi, this is {FIRST}. Can you call me back at {PHONE}?",
        "I'm {NAME}, I moved to {CITY} last year and need a new family doctor.",
        "Could you send the forms to {ADDRESS}?",
        "Please update my address to {ADDRESS}.",
        "My new phone number is {PHONE}, the old one no longer works.",
        "hey it's {FIRST}, running late, be there in 10",
        "Is {FIRST} {LAST} still working at the front desk?",
        "I grew up in {CITY}, {COUNTRY} but now live in {CITY2}.",
        "We spent the summer in {PLACE} with my aunt {FIRST}.",
        "Text me on {PHONE} when the results are ready.",
        "You can reach my husband {NAME} on {PHONE}.",
        "Send the invoice to {NAME}, {ADDRESS}.",
        "{FIRST} said the pharmacy on {STREET} closes at six.",
        "The package for {NAME} was delivered to {ADDRESS} yesterday.",
        "Did {FIRST} get the letter we mailed to {CITY}?",
        "I am writing on behalf of my mother, {NAME}, who lives in {CITY}.",
        "Ask for {FIRST} at reception, extension {NUM}.",
        "We are flying from {CITY} to {COUNTRY} on {DATE}.",
        "Our office moved to {ADDRESS}; the phone stays {PHONE}.",
        "{NAME} ({EMAIL}) asked to be removed from the list.",
        "Thanks {FIRST}! See you {WEEKDAY}.",
        "Can {FIRST2} pick up the prescription for {FIRST}?",
        "My daughter {FIRST} and her partner {NAME2} will bring me.",
        "Where in {REGION} is the new clinic?",
        "I'd like to speak to {TITLE} {LAST} about my results.",
        "This is {NAME} from {ORG}, returning your call.",
        "Please don't call {PHONE} before 9 am, that's my work line.",
        "Happy birthday {FIRST}!! Greetings from {CITY}",
        "we live near {CITY}, about an hour from the coast",
        "my zip code is {ZIP}",
        "The postcode is {ZIP}, not the one on file.",
        "He was born in {CITY} and moved to {COUNTRY} as a child.",
        "I'm visiting {FIRST} in {CITY} next week.",
        "Meet me at the corner of {STREET} and {STREET}.",
        "Is this the right number for {NAME}? {PHONE}",
        "Call {FIRST} on {PHONE} or {PHONE2}.",
        "{NAME} is my emergency contact; she lives at {ADDRESS}.",
        "Hello, my name is {FIRST} and I'm calling about my father.",
        "{FIRST}, can you confirm the address is {ADDRESS}?",
        "I was told to ask for {TITLE} {NAME}.",
        "Sorry {FIRST}, I won't make it on {DATE}.",
        "what's the fax number for the clinic in {CITY}? is it {PHONE}?",
        "my name's {FIRST} {LAST}, I booked online",
        "Mail it to {ADDRESS_LINE}",
        "The new address is {ADDRESS}. Thanks, {FIRST}",
        "She has lived in {PLACE} since {NUM}.",
        "Our family is originally from {REGION}, {COUNTRY}.",
        "We'll drive down from {CITY} on {WEEKDAY} morning.",
        "{FIRST} {LAST} left a voicemail from {PHONE}.",
    ),
    "narrative": (
        "{NAME} has worked as a {JOB} in {CITY} for twelve years.",
        "{FIRST} and {FIRST2} opened a bakery on {STREET}.",
        "After the storm, {NAME} stayed with relatives in {CITY}.",
        "The {NRP} writer {NAME} was born in {CITY}.",
        "{LAST} returned to {COUNTRY} after finishing her degree.",
        "Residents of {CITY} complained about the noise on {STREET}.",
        "{NAME}, {AGE}, of {CITY}, was named volunteer of the year.",
        "The contract was signed by {NAME} on behalf of {ORG}.",
        "{FIRST} won the regional chess tournament in {CITY}.",
        "The letter was addressed to {NAME} at {ADDRESS}.",
        "Police asked anyone who saw {NAME} near {STREET} to call {PHONE}.",
        "{NAME} and {NAME2} were married in {CITY} on {DATE}.",
        "Born in {CITY}, {LAST} studied medicine in {CITY2}.",
        "The firm of {LAST} and {LAST2} has offices in {CITY} and {COUNTRY}.",
        "{FIRST} spent three years teaching in {PLACE}.",
        "The house at {ADDRESS} was sold for a record price.",
        "{NAME} is the new head of the {CITY} branch of {ORG}.",
        "A spokesperson, {NAME}, said the road to {CITY} would reopen soon.",
        "{TITLE} {LAST} has been appointed to the board.",
        "The award went to {NAME} of {REGION}.",
        "{FIRST} was last seen leaving {ADDRESS}.",
        "Travellers from {COUNTRY} must register at {ADDRESS}.",
        "{NAME} lives on a farm outside {CITY}, {REGION}.",
        "Everyone in {CITY} knows {FIRST}, who runs the corner shop.",
        "The {NRP} team arrived in {CITY} on {WEEKDAY}.",
    ),
    "clinical": (
        "Patient {NAME} was seen today for follow-up of hypertension.",
        "{NAME} is a {AGE}-year-old woman with a history of Crohn disease.",
        "Pt {LAST} reports chest pain radiating to the left arm since {DATE}.",
        "Mr. {LAST} lives at {ADDRESS} with his wife {FIRST}.",
        "The patient was referred by {TITLE} {NAME} of {ORG}.",
        "Seen with her daughter {NAME}, who is the primary caregiver.",
        "Discussed with Dr. {LAST}, who agrees with the plan.",
        "{FIRST} {LAST} presented to the emergency department in {CITY} after a fall.",
        "Contact number on file: {PHONE}.",
        "Next of kin: {NAME} ({NRP}), phone {PHONE}.",
        "Patient lives alone in {CITY}; son {FIRST} visits weekly.",
        "Transferred from {ORG} in {CITY} for further management.",
        "Mrs. {LAST} denies fever, chills or night sweats.",
        "Follow-up with {TITLE} {LAST} in cardiology clinic in two weeks.",
        "Dictated by {DOCTOR}, MD. Transcribed {DATE}.",
        "Electronically signed by {DOCTOR} on {DATE} at {TIME}.",
        "Attending physician: {DOCTOR}.",
        "{NAME} was started on {DRUG} 10 mg daily.",
        "Home address: {ADDRESS}.",
        "Patient recently travelled to {COUNTRY} and {COUNTRY}.",
        "Per her husband {FIRST}, she has been more confused since {WEEKDAY}.",
        "{LAST} underwent laparoscopic cholecystectomy without complication.",
        "Called {NAME} at {PHONE} to discuss the biopsy results.",
        "Pharmacy: {ORG}, {ADDRESS}, tel. {PHONE}.",
        "Mr {LAST} has a positive Murphy sign and right upper quadrant tenderness.",
        "Ms. {LAST} was diagnosed with Hashimoto thyroiditis in {NUM}.",
        "{FIRST} is accompanied by her mother, {NAME}.",
        "Results faxed to {TITLE} {LAST} at {PHONE}.",
        "Patient is a retired {JOB} from {CITY}.",
        "Spoke with the patient's brother {NAME} by phone.",
        "{NAME} (MRN {ID}) admitted on {DATE} with community-acquired pneumonia.",
        "Primary care: {DOCTOR}, {ORG}, {CITY}.",
        "Mr. {LAST} was counselled on smoking cessation.",
        "Wife {FIRST} reports he snores loudly and stops breathing at night.",
        "Case discussed with {DOCTOR} (radiology).",
        "The patient, {NAME}, consents to the procedure.",
        "Lives with partner {FIRST2} in a second-floor flat in {CITY}.",
        "Discharged home to {ADDRESS} in stable condition.",
        "Interpreter ({NRP}) present for the visit with {NAME}.",
        "Will return to {CITY} after discharge; local GP is {DOCTOR}.",
        "Seen by {TITLE} {FIRST} {LAST} on the ward round.",
        "{LAST}, {FIRST} - DOB {DATE} - room 12B.",
        "Patient {FIRST} {LAST} tolerated the infusion well.",
        "Reviewed by {DOCTOR}; no change to medication.",
        "Emergency contact {NAME}, {PHONE}, lives in {CITY}.",
    ),
    "letter": (
        "Dear {TITLE} {LAST},\nThank you for referring {NAME}, whom I saw in clinic on {DATE}.",
        "Dear {FIRST},\nYour test results are normal. Kind regards,\n{DOCTOR}",
        "Re: {NAME}, DOB {DATE}\n{ADDRESS}\n\nDear Colleague,",
        "Yours sincerely,\n\n{DOCTOR}\nConsultant Physician",
        "To: {NAME}\n{ADDRESS}",
        "{NAME}\n{ADDRESS}\n{PHONE}",
        "Dear Mr {LAST}, we have moved to {ADDRESS}.",
        "Best wishes,\n{FIRST}",
        "Dear {TITLE} {NAME},\nI am writing to confirm your appointment on {DATE}.",
        "Copy to: {DOCTOR}, {ORG}, {ADDRESS}",
        "Sincerely, {NAME}",
        "With kind regards,\n{NAME}\n{JOB}, {ORG}\nTel: {PHONE}",
        "Dear {FIRST} and {FIRST2},\nThank you for your letter.",
        "Please reply to {ADDRESS} or call {PHONE}.",
        "{ORG}\n{ADDRESS}\nTelephone {PHONE}\n\n{DATE}",
        "Thank you, {TITLE} {LAST}, for seeing this patient.",
        "I reviewed {NAME} today in the {CITY} outpatient clinic.",
        "Regards,\n{FIRST} {LAST}\n{PHONE}",
    ),
    "form": (
        "Name: {NAME}\nAddress: {ADDRESS}\nPhone: {PHONE}",
        "Patient name: {NAME}  DOB: {DATE}  MRN: {ID}",
        "NAME: {NAME}\nCITY: {CITY}\nPOSTCODE: {ZIP}",
        "Emergency contact: {NAME} - {PHONE}",
        "First name: {FIRST}\nLast name: {LAST}\nTelephone: {PHONE}",
        "Address line 1: {STREET}\nTown: {CITY}\nPostal code: {ZIP}\nCountry: {COUNTRY}",
        "Surname: {LAST}; given name: {FIRST}; place of birth: {CITY}",
        "Referring physician: {DOCTOR}   Fax: {PHONE}",
        "Guardian: {NAME}, {ADDRESS}, {PHONE}",
        "Insured: {NAME} | Member ID: {ID} | Phone: {PHONE}",
        "Mobile: {PHONE}\nHome: {PHONE2}",
        "Ship to: {NAME}, {ADDRESS}",
        "Billing address\n{NAME}\n{ADDRESS}",
        "Country of residence: {COUNTRY}",
        "City: {CITY}   State/Province: {REGION}   ZIP: {ZIP}",
        "Signature: {NAME}   Date: {DATE}",
        "Tel. {PHONE} / Fax {PHONE2}",
        "Contact person: {FIRST} {LAST}",
        "Pharmacy phone: {PHONE}",
        "Street: {STREET}, {ZIP} {CITY}",
        "Place of birth: {CITY}, {COUNTRY}",
        "Witness: {NAME}",
        "Name of spouse: {NAME}\nEmployer: {ORG}",
        "Full name {NAME}, born {DATE} in {CITY}",
        "Zip: {ZIP}",
    ),
    "negative": (
        "Findings consistent with Graves disease.",
        "No evidence of Hodgkin lymphoma on the staging scan.",
        "Positive Murphy sign; gallbladder wall thickening on ultrasound.",
        "Kerley B lines are present, suggesting interstitial edema.",
        "The heart size is normal. The lungs are clear.",
        "Foley catheter in place, draining clear urine.",
        "History of Parkinson's disease and Alzheimer dementia.",
        "Barrett esophagus without dysplasia on the last endoscopy.",
        "No pneumothorax or pleural effusion.",
        "Cushing syndrome was excluded by a normal dexamethasone suppression test.",
        "Stable appearance of the right hilum compared with the prior study.",
        "IMPRESSION: No acute cardiopulmonary abnormality.",
        "Findings: XXXX opacity in the left lower lobe, likely atelectasis.",
        "Comparison: XXXX, XXXX.",
        "Indication: XXXX-year-old male with cough.",
        "Continue metformin 500 mg twice daily and lisinopril 10 mg daily.",
        "Down syndrome with an atrioventricular septal defect repaired in infancy.",
        "Wilson disease is an inherited disorder of copper metabolism.",
        "Apgar scores were 8 and 9 at one and five minutes.",
        "Gleason score 3+4 adenocarcinoma of the prostate.",
        "Glasgow Coma Scale 15 on arrival.",
        "Homans sign negative bilaterally.",
        "The Valsalva maneuver terminated the tachycardia.",
        "Bell palsy of the left face, improving on prednisolone.",
        "Addison disease is treated with hydrocortisone and fludrocortisone.",
        "Paget disease of bone may cause bone pain and fractures.",
        "Turner syndrome affects females and is caused by a missing X chromosome.",
        "Huntington disease is a progressive brain disorder.",
        "Guillain-Barre syndrome often follows an infection.",
        "What are the symptoms of Marfan syndrome?",
        "How is Crohn's disease diagnosed?",
        "Raynaud phenomenon worsens in cold weather.",
        "The Whipple procedure was performed without complication.",
        "Nissen fundoplication for refractory reflux.",
        "Doppler ultrasound shows no deep vein thrombosis.",
        "Holter monitor showed sinus rhythm with rare ectopics.",
        "Swan-Ganz catheter tip in the right pulmonary artery.",
        "Chest X-ray PA and lateral views.",
        "Degenerative changes of the thoracic spine.",
        "Blood pressure 142/88, heart rate 76, temperature 37.1.",
        "The patient was advised to return if symptoms worsen.",
        "Please take this medicine with food.",
        "Ask your doctor about the side effects of this treatment.",
        "The National Institutes of Health funds research on rare diseases.",
        "Monday clinic is cancelled because of the holiday.",
        "Christmas opening hours apply until January.",
        "Type 2 Diabetes Mellitus, Chronic Kidney Disease Stage 3.",
        "Hemoglobin A1c was 7.2 percent in March.",
        "Cardiomegaly With Pulmonary Vascular Congestion.",
        "Right Upper Lobe Pneumonia.",
        "Ehlers-Danlos syndrome and joint hypermobility.",
        "Babinski sign is absent.",
        "Stevens-Johnson syndrome after starting lamotrigine.",
        "Epstein-Barr virus serology is positive.",
        "Sjogren syndrome with dry eyes and dry mouth.",
        "Tetralogy of Fallot repaired at age two.",
        "Romberg test positive; Lachman test negative.",
        "The Chiari malformation was seen on MRI.",
        "Meckel diverticulum found at laparotomy.",
        "Colles fracture of the right wrist.",
        "The Internet and Social Media can spread health information quickly.",
        "Genetic Testing may help diagnose the condition.",
        "Who should get the flu vaccine this year?",
        "Key Points: eat well, sleep well, keep moving.",
        "Is the condition inherited?",
        "These resources address the diagnosis or management of the condition.",
        "The Food and Drug Administration approved a new treatment.",
        "Centers for Disease Control and Prevention guidelines recommend screening.",
        "Hirschsprung disease affects the large intestine.",
        "Kaposi sarcoma lesions on the lower legs.",
        "Tourette syndrome begins in childhood.",
        "Lewy body dementia with visual hallucinations.",
        "Reye syndrome is rare but serious.",
        "Still disease presents with fever, rash and arthritis.",
        "Ewing sarcoma of the femur.",
        "Burkitt lymphoma is a fast-growing cancer.",
        "Wernicke encephalopathy responds to thiamine.",
        "Hashimoto's thyroiditis with hypothyroidism.",
        "Meniere disease causes vertigo and tinnitus.",
        "Pancoast tumor in the right apex.",
        "Volunteers Needed For A New Study.",
        "Medicare and Medicaid cover some of the costs.",
        "Aspirin, Warfarin and Heparin are anticoagulant or antiplatelet drugs.",
        "Lung Cancer Screening Program.",
        "Dr. appointment at 10:30.",
        "Unremarkable bony thorax. Normal mediastinal contour.",
        "There is no focal airspace consolidation.",
        "Left Ventricular Hypertrophy.",
        "No change since last exam.",
        "Sarcoidosis with bilateral hilar adenopathy.",
        "There is a 6 mm nodule in the right upper lobe.",
        "Mild compression deformity of T8, unchanged.",
        "Calcified granuloma in the left midlung zone.",
        "Two views of the chest: PA and lateral.",
        "Stable 2.3 cm mass in the anterior mediastinum.",
        "Sternotomy wires and mediastinal clips are intact.",
        "Right PICC line with tip at the cavoatrial junction.",
        "Endotracheal tube 4 cm above the carina.",
        "Levels 3 and 4 of the cervical lymph nodes are enlarged.",
        "Take 2 tablets every 6 hours as needed for pain.",
        "Chronic Obstructive Pulmonary Disease (COPD) is a lung disease.",
        "Acute Myeloid Leukemia (AML) Treatment Options",
        "The NCI and the NIH fund clinical trials of new therapies.",
        "Treatment may include Surgery, Radiation Therapy and Chemotherapy.",
        "Symptoms: Fever, Cough, Shortness of Breath.",
        "Interstitial markings are mildly prominent bilaterally.",
        "Osteopenia and degenerative disc disease of the lumbar spine.",
        "Hyperinflated lungs consistent with emphysema.",
        "Kaposi Sarcoma and Non-Hodgkin Lymphoma in people with HIV.",
        "Wilson and Menkes diseases are disorders of copper transport.",
        "Parkinson, Alzheimer and Huntington are neurodegenerative diseases.",
        "Borderline cardiomegaly. Tortuous aorta.",
        "General appearance: well, alert and oriented.",
        "Liposomal doxorubicin and arsenic trioxide are used in some leukemias.",
    ),
}

#: Left and right contexts around one identifier: their combinations (family ``frame``) teach where a span ends
#: when ordinary words follow it, and that capitalised words around it are not part of it.
_FRAMES: Final[dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "NAME": (
        ("Yesterday", "According to", "I met", "Thanks to", "Electronically signed by", "Nursing Note: seen with",
         "Per", "My colleague", "Our neighbour", "When", "Later that day", "The chaplain asked", "Ask",
         "Notes from", "Surgeon:", "Her GP", "Visitor today:", "Consent obtained from", "Report sent to",
         "Nobody except", "Phone call with", "Case Manager", "Then", "Only", "Discussed with"),
        ("said the wound looks better.", "will call back after lunch.", "agreed with the plan", "and I went home early",
         "brought the medication list.", "was not available, so we left a message", ", who is her daughter, agreed.",
         "asked about the MRI results.", "before the operation.", "confirmed the allergy to penicillin.",
         "on Tuesday morning.", "is the contact for the family.", "- see attached note", "(brother) visited.",
         "to review in 6 weeks.", "noted no new symptoms", "again next week?", "here.", "twice this week.",
         "as requested by the team", "with regards to the discharge plan."),
    ),
    "LOCATION": (
        ("She flew back from", "Currently living near", "The conference in", "We drove through", "Born and raised in",
         "The transfer from", "Holiday in", "Family lives in", "Moved here from", "Relatives in", "Travel to",
         "Referral from the hospital in", "A cousin in"),
        ("last spring.", "with her husband.", "and has not been ill since.", "for the wedding", "in 2019.",
         "before the pandemic.", "where she works as a nurse.", "- no travel since", "two weeks ago",
         "and back again.", "was cancelled.", "for three months.", ", then to the coast."),
    ),
    "ADDRESS": (
        ("The ambulance went to", "Forward all mail to", "Visit at", "Her flat at", "Registered address",
         "The shop at", "Lives at", "Collect the parcel from", "The new clinic is at", "Deliver to"),
        ("before noon.", "every second Tuesday.", "and nobody answered the door", "since May.",
         "- second floor, no lift.", "as soon as possible.", "which is close to the station.", "by Friday",
         ", please.", "until further notice."),
    ),
    "PHONE": (
        ("Ring", "Call back on", "Daughter's mobile", "Dial", "Fax results to", "Out of hours:", "Reach me at",
         "Number given:", "Her landline", "WhatsApp"),
        ("before 9 am.", "after six.", "and ask for the ward.", "if no answer, leave a message", "(mobile).",
         "- home", "or e-mail me.", "anytime.", "tomorrow morning", "extension unknown."),
    ),
    "ZIP": (
        ("Postal code", "Post code:", "Zip", "The postcode", "Postleitzahl", "ZIP code"),
        ("is outside our area.", "was wrong on the form.", "(home).", "- please check", "belongs to a rural district."),
    ),
}  # fmt: skip


def _frame_templates() -> tuple[str, ...]:
    """Every left context with a sample of right contexts, per label (deterministic)."""
    out: list[str] = []
    slot = {"NAME": "{NAME}", "LOCATION": "{PLACE}", "ADDRESS": "{ADDRESS_LINE}", "PHONE": "{PHONE}", "ZIP": "{ZIP}"}
    for label, (lefts, rights) in _FRAMES.items():
        for i, left in enumerate(lefts):
            for j in range(3):
                right = rights[(i * 7 + j * 5) % len(rights)]
                sep = "" if right[:1] in ",.(?" else " "
                out.append(f"{left} {slot[label]}{sep}{right}")
    return tuple(out)


TEMPLATES["frame"] = _frame_templates()

#: Opening and closing fragments that wrap a template now and then (so that spans appear mid-text too).
_PREFIXES: Final = (
    "", "", "", "", "", "", "Note: ", "Update - ", "FYI ", "Hello, ", "Subject: follow-up\n", "Message: ",
    "Summary: ", "Nursing note. ", "Telephone encounter. ", "Addendum: ", "Re: appointment\n", "ok so ",
)  # fmt: skip
_SUFFIXES: Final = (
    "", "", "", "", "", "", " Thanks.", " Thank you!", " Please advise.", " Plan discussed.", "\nRegards",
    " See you soon.", " No further questions.", " (updated today)", " Many thanks in advance.",
)  # fmt: skip
_JOBS: Final = ("teacher", "nurse", "plumber", "accountant", "farmer", "engineer", "chef", "driver", "librarian")
_DRUGS: Final = ("atorvastatin", "amlodipine", "metformin", "apixaban", "sertraline", "levothyroxine", "Ramipril")
_NRPS: Final = ("Polish", "Greek", "Swedish", "Portuguese", "Danish", "Hungarian", "Spanish", "Finnish", "Irish")
_WEEKDAYS: Final = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


# ---------------------------------------------------------------------- values


@cache
def _faker(locale: str) -> Faker:
    from faker import Faker

    return Faker(locale)


class _Values:
    """Identity values of one locale, drawn from a seeded faker."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        locales = list(LOCALES)
        self.locale = rng.choices(locales, weights=[LOCALES[x] for x in locales])[0]
        self.fake = _faker(self.locale)
        self.fake.seed_instance(rng.getrandbits(32))

    def _case(self, value: str, *, upper: float = 0.06, lower: float = 0.04) -> str:
        r = self.rng.random()
        if r < upper:
            return value.upper()
        if r < upper + lower:
            return value.lower()
        return value

    def first(self) -> str:
        return self._case(self.fake.first_name())

    def last(self) -> str:
        value = self.fake.last_name()
        if self.rng.random() < 0.04:
            value = f"{value}-{self.fake.last_name()}"
        return self._case(value)

    def name(self) -> str:
        r = self.rng.random()
        first, last = self.fake.first_name(), self.fake.last_name()
        if r < 0.55:
            value = f"{first} {last}"
        elif r < 0.65:
            value = f"{first} {self.rng.choice('ABCDEFGHJKLMNOPRSTVW')}. {last}"
        elif r < 0.72:
            value = f"{first} {self.rng.choice('ABCDEFGHJKLMNOPRSTVW')} {last}"
        elif r < 0.78:
            value = f"{first} {self.fake.first_name()} {last}"
        elif r < 0.83:
            value = f"{first[0]}. {last}"
        elif r < 0.88:
            value = f"{first} {last}-{self.fake.last_name()}"
        elif r < 0.94:
            value = first
        else:
            value = last
        return self._case(value)

    def doctor(self) -> str:
        r = self.rng.random()
        first, last = self.fake.first_name(), self.fake.last_name()
        if r < 0.6:
            return f"{first} {last}"
        if r < 0.8:
            return f"{first[0]}. {last}"
        return self._case(f"{first} {last}", upper=0.5, lower=0.0)

    def street(self) -> str:
        fake = self.fake
        r = self.rng.random()
        try:
            if r < 0.55:
                value = fake.street_address()
            elif r < 0.75:
                value = f"{fake.building_number()} {fake.street_name()}"
            elif r < 0.9:
                value = f"{fake.street_name()} {fake.building_number()}"
            else:
                value = f"{fake.street_name()} {self.rng.randint(1, 250)}{self.rng.choice(['', '', 'a', 'B', '/3'])}"
        except AttributeError:
            value = fake.street_address()
        return value.replace("\n", " ")

    def city(self) -> str:
        return self._case(self.fake.city(), upper=0.15, lower=0.03)

    def region(self) -> str:
        for attr in ("state", "province", "region", "administrative_unit", "county"):
            fn: Callable[[], str] | None = getattr(self.fake, attr, None)
            if fn is not None:
                try:
                    return fn()
                except (AttributeError, TypeError, ValueError):
                    continue
        return self.city()

    def country(self) -> str:
        own = self.rng.random() < 0.6
        value = (_COUNTRY_OF.get(self.locale) or self.fake.country()) if own else self.fake.country()
        return self._case(value, upper=0.1, lower=0.02)

    def place(self) -> str:
        r = self.rng.random()
        return self.city() if r < 0.6 else self.country() if r < 0.85 else self.region()

    def postcode(self) -> str:
        try:
            return self.fake.postcode()
        except AttributeError:
            return str(self.rng.randint(10000, 99999))

    def address(self) -> str:
        """A whole address in one of many layouts (faker's own national layout most of the time)."""
        fake, rng = self.fake, self.rng
        r = rng.random()
        if r < 0.35:
            value = fake.address()
        elif r < 0.47:
            value = f"{self.street()}, {self.city()}"
        elif r < 0.57:
            us = _faker("en_US")
            us.seed_instance(rng.getrandbits(32))
            return rng.choice(
                (
                    f"{us.street_address()}, {us.city()}, {us.state_abbr()} {us.zipcode()}",
                    f"{us.street_address()}\n{us.city()}, {us.state_abbr()} {us.zipcode()}",
                    f"{us.street_address()} {us.city()} {us.state_abbr()} {us.zipcode()}",
                    f"{us.military_apo()}\nAPO {us.military_state()} {us.zipcode()}",
                    f"{us.military_ship()} {us.last_name()}\nFPO {us.military_state()} {us.zipcode()}",
                    f"{us.street_address()}, {us.city()}, {us.state()} {us.zipcode()}",
                )
            )
        elif r < 0.7:
            sep = rng.choice((", ", "\n", "\n ", ", "))
            parts = [self.street()]
            if rng.random() < 0.3:
                parts.append(rng.choice(("Suite", "Apt.", "Apt", "Unit", "Flat", "Floor")) + f" {rng.randint(1, 900)}")
            city = self.city()
            parts.append(f"{self.postcode()} {city}" if rng.random() < 0.5 else city)
            if rng.random() < 0.6:
                parts.append(self.country())
            value = sep.join(parts)
        elif r < 0.8:
            value = f"{self.street()}, {self.postcode()} {self.city()}"
        elif r < 0.9:
            value = f"{self.street()}, {self.city()}, {self.country()}"
        else:
            value = self.street()
        if rng.random() < 0.4:
            value = value.replace("\n", rng.choice((", ", " ", ", ")))
        return value.strip()

    def address_line(self) -> str:
        return self.address().replace("\n", ", ")

    def phone(self) -> str:
        fake, rng = self.fake, self.rng
        value = fake.phone_number()
        r = rng.random()
        digits = re.sub(r"\D", "", value)
        code = _COUNTRY_CODE.get(self.locale, "1")
        if r < 0.12 and not value.startswith("+"):
            national = re.sub(r"^\(?0", "", value)
            value = f"+{code} {national}"
        elif r < 0.2 and len(digits) >= 9:
            value = digits
        elif r < 0.26 and len(digits) >= 9:
            sep = rng.choice((" ", "-", "."))
            value = sep.join(re.findall(r"\d{2,3}", digits[-10:]))
        elif r < 0.3:
            value = f"{value} ext. {rng.randint(10, 9999)}" if rng.random() < 0.5 else f"{value}x{rng.randint(1, 999)}"
        return value

    def fill(self, slot: str) -> str:
        fake, rng = self.fake, self.rng
        fillers: dict[str, Callable[[], str]] = {
            "NAME": self.name, "NAME2": self.name, "FIRST": self.first, "FIRST2": self.first, "LAST": self.last,
            "LAST2": self.last, "DOCTOR": self.doctor, "ADDRESS": self.address, "STREET": self.street,
            "ADDRESS_LINE": self.address_line, "CITY": self.city, "CITY2": self.city, "COUNTRY": self.country,
            "REGION": self.region, "PLACE": self.place, "PHONE": self.phone, "PHONE2": self.phone,
            "ZIP": self.postcode, "TITLE": lambda: rng.choice(_TITLES),
            "DATE": lambda: fake.date(rng.choice(("%Y-%m-%d", "%d/%m/%Y", "%B %d, %Y", "%d %b %Y", "%m/%d/%y"))),
            "TIME": lambda: fake.time("%H:%M"), "EMAIL": fake.email, "ORG": fake.company,
            "AGE": lambda: str(rng.randint(18, 97)), "ID": lambda: str(rng.randint(10**6, 10**9)),
            "URL": fake.url, "JOB": lambda: rng.choice(_JOBS), "NRP": lambda: rng.choice(_NRPS),
            "DRUG": lambda: rng.choice(_DRUGS), "NUM": lambda: str(rng.randint(1990, 2023)),
            "WEEKDAY": lambda: rng.choice(_WEEKDAYS), "MONTH": fake.month_name,
        }  # fmt: skip
        return fillers[slot]().strip()


# ---------------------------------------------------------------------- generation


def template_ids(families: Sequence[str] | None = None) -> list[str]:
    """Every template id (``family:index``), optionally of some families only."""
    return [
        f"{family}:{i}"
        for family, items in TEMPLATES.items()
        if families is None or family in families
        for i in range(len(items))
    ]


def _render(template: str, values: _Values) -> tuple[str, list[tuple[int, int, str]]]:
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    pos = length = 0
    for m in _SLOT.finditer(template):
        literal = template[pos : m.start()]
        out.append(literal)
        length += len(literal)
        slot = m.group(1)
        value = values.fill(slot)
        label = SLOT_LABELS[slot]
        if label is not None and value:
            spans.append((length, length + len(value), label))
        out.append(value)
        length += len(value)
        pos = m.end()
    out.append(template[pos:])
    return "".join(out), spans


#: How often each family is drawn (then a template of it, uniformly).
FAMILY_WEIGHTS: Final[dict[str, float]] = {
    "chat": 1.0, "narrative": 0.6, "clinical": 1.0, "letter": 0.5, "form": 0.7, "negative": 1.2, "frame": 1.3,
}  # fmt: skip


def _examples(ids: Sequence[str], rng: random.Random) -> Iterator[Example]:
    by_family: dict[str, list[str]] = {}
    for tid in ids:
        by_family.setdefault(tid.split(":")[0], []).append(tid)
    families = sorted(by_family)
    weights = [FAMILY_WEIGHTS.get(f, 1.0) for f in families]
    while True:
        tid = rng.choice(by_family[rng.choices(families, weights=weights)[0]])
        family, index = tid.split(":")
        template = TEMPLATES[family][int(index)]
        values = _Values(rng)
        text, spans = _render(template, values)
        if family != "form" and rng.random() < 0.3:
            prefix, suffix = rng.choice(_PREFIXES), rng.choice(_SUFFIXES)
            text = prefix + text + suffix
            spans = [(s + len(prefix), e + len(prefix), label) for s, e, label in spans]
        if rng.random() < 0.15:
            # two texts in one: identifiers in the middle of longer text and after other sentences
            other = TEMPLATES["negative"][rng.randrange(len(TEMPLATES["negative"]))]
            if rng.random() < 0.5:
                text = f"{other} {text}"
                spans = [(s + len(other) + 1, e + len(other) + 1, label) for s, e, label in spans]
            else:
                text = f"{text} {other}"
        yield Example(text=text, spans=tuple(spans), template=tid)


def generate(
    n: int, *, seed: int = 0, include: Sequence[str] | None = None, exclude: Sequence[str] = ()
) -> list[Example]:
    """``n`` examples from the templates whose ids are in ``include`` (default: all) and not in ``exclude``,
    deterministic in ``seed``."""
    ids = [t for t in (include if include is not None else template_ids()) if t not in set(exclude)]
    if not ids:
        raise ValueError("no template left to generate from")
    rng = random.Random(seed)  # noqa: S311 - reproducible synthetic data, not a secret
    out: list[Example] = []
    for example in _examples(ids, rng):
        out.append(example)
        if len(out) >= n:
            break
    return out
