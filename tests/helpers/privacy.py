"""Privacy checks: patient identifiers of the test fixtures in text, loose file modes.

Both fixture families (``tests.helpers.dicom`` and ``tests.sr_fixtures``) carry fixed,
recognisable patient values, so any log line or message naming them is a leak.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

from tests.helpers.dicom import ACCESSION_NUMBER, PATIENT_BIRTH_DATE, PATIENT_ID, PATIENT_NAME
from tests.sr_fixtures import FAKE_PATIENT_ID, FAKE_PATIENT_NAME

_VALUES = (PATIENT_NAME, PATIENT_ID, PATIENT_BIRTH_DATE, ACCESSION_NUMBER)
_SR_VALUES = (FAKE_PATIENT_NAME, FAKE_PATIENT_ID, "ACC0815")
# Name components alone too, as a formatter might print "Jane Doe" (none occurs in our words).
_NAME_PARTS = ("Doe^", "Jane", "Testpatient")
# Bounded so a digit run inside a UID (2.25.<random>) never counts as a birth date.
IDENTIFIERS = [
    re.compile(r"(?<![0-9.])" + re.escape(value) + r"(?![0-9])")
    for value in (*_VALUES, *_SR_VALUES)
] + [re.compile(re.escape(part)) for part in _NAME_PARTS]


def private_identifier_lines(text: str) -> list[str]:
    """Lines of ``text`` naming a fixture patient's name, ID, birth date or accession."""
    return [line for line in text.splitlines() if any(p.search(line) for p in IDENTIFIERS)]


def loose_modes(root: Path) -> list[str]:
    """``root`` and everything under it that group or others may access."""
    return [
        f"{path} {stat.filemode(path.stat().st_mode)}"
        for path in [root, *root.rglob("*")]
        if path.stat().st_mode & 0o077
    ]
