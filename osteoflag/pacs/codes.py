"""Every coded concept osteoflag writes into a DICOM object, in one place.

Codes follow PS3.16 (DCM), SNOMED CT (SCT) and UCUM, as used by the IHE AI Results
profile for TID 1500 / TID 1501 measurement reports. Nothing else in the package
spells out a code value.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

from pydicom.sr.coding import Code

# Document title, language and procedure (PS3.16 CID 7021, TID 1204, CID 100).
LANGUAGE_OF_CONTENT: Final = Code("121049", "DCM", "Language of Content Item and Descendants")
ENGLISH_US: Final = Code("en-US", "RFC5646", "English (United States)")
PROCEDURE_REPORTED: Final = Code("121058", "DCM", "Procedure reported")
IMAGING_MEASUREMENT_REPORT: Final = Code("126000", "DCM", "Imaging Measurement Report")
PLAIN_RADIOGRAPHY: Final = Code("168537006", "SCT", "Plain radiography")

# Finding and its qualitative evaluation (TID 1501 rows "Finding" and "Qualitative Evaluation").
FRACTURE_OF_BONE: Final = Code("125605004", "SCT", "Fracture of bone")
PRESENT: Final = Code("52101004", "SCT", "Present")
ABSENT: Final = Code("272519000", "SCT", "Absent")
UNDETERMINED: Final = Code("373068000", "SCT", "Undetermined")

# The score: TID 300 measurement in UCUM percent (PS3.16 CID 6048 "Certainty of Finding").
CERTAINTY_OF_FINDING: Final = Code("111012", "DCM", "Certainty of Finding")
PERCENT: Final = Code("%", "UCUM", "Percent")

# Where the finding is (TID 1410 "Image Region", PS3.3 C.18.6 SCOORD) and, for a result with
# no region, the document-level TID 1500 "Qualitative Evaluations" container and the image
# the evaluation was inferred from.
IMAGE_REGION: Final = Code("111030", "DCM", "Image Region")
QUALITATIVE_EVALUATIONS: Final = Code("C0034375", "UMLS", "Qualitative Evaluations")
SOURCE: Final = Code("260753009", "SCT", "Source")
IMAGING_MEASUREMENTS: Final = Code("126010", "DCM", "Imaging Measurements")

# Free text: research-only statement and the reason a result is undetermined.
COMMENT: Final = Code("121106", "DCM", "Comment")

# TID 4019 Algorithm Identification rows (read back by ``read_result``).
ALGORITHM_NAME: Final = Code("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION: Final = Code("111003", "DCM", "Algorithm Version")
ALGORITHM_PARAMETERS: Final = Code("111002", "DCM", "Algorithm Parameters")

# Observer type (PS3.16 CID 270) and equipment purpose (CID 7005).
DEVICE: Final = Code("121007", "DCM", "Device")
PROCESSING_EQUIPMENT: Final = Code("109102", "DCM", "Processing Equipment")

# BodyPartExamined (PS3.16 Annex L, CID 4031) -> finding site.
_BODY_PARTS: Final[dict[str, Code]] = {
    "ANKLE": Code("70258002", "SCT", "Ankle joint"),
    "ARM": Code("40983000", "SCT", "Upper arm"),
    "CALCANEUS": Code("80144004", "SCT", "Calcaneus"),
    "CHEST": Code("816094009", "SCT", "Chest"),
    "CLAVICLE": Code("51299004", "SCT", "Clavicle"),
    "COCCYX": Code("64688005", "SCT", "Coccyx"),
    "CSPINE": Code("122494005", "SCT", "Cervical spine"),
    "ELBOW": Code("16953009", "SCT", "Elbow joint"),
    "EXTREMITY": Code("66019005", "SCT", "Extremity"),
    "FEMUR": Code("71341001", "SCT", "Femur"),
    "FINGER": Code("7569003", "SCT", "Finger"),
    "FOOT": Code("56459004", "SCT", "Foot"),
    "FOREARM": Code("14975008", "SCT", "Forearm"),
    "HAND": Code("85562004", "SCT", "Hand"),
    "HIP": Code("24136001", "SCT", "Hip joint"),
    "HUMERUS": Code("85050009", "SCT", "Humerus"),
    "JAW": Code("91609006", "SCT", "Mandible"),
    "KNEE": Code("49076000", "SCT", "Knee joint"),
    "LEG": Code("30021000", "SCT", "Lower leg"),
    "LSPINE": Code("122496007", "SCT", "Lumbar spine"),
    "PATELLA": Code("64234005", "SCT", "Patella"),
    "PELVIS": Code("816092008", "SCT", "Pelvis"),
    "RIB": Code("113197003", "SCT", "Rib"),
    "SACRUM": Code("54735007", "SCT", "Sacrum"),
    "SCAPULA": Code("79601000", "SCT", "Scapula"),
    "SHOULDER": Code("16982005", "SCT", "Shoulder"),
    "SKULL": Code("89546000", "SCT", "Skull"),
    "SPINE": Code("421060004", "SCT", "Spine"),
    "STERNUM": Code("56873002", "SCT", "Sternum"),
    "THIGH": Code("68367000", "SCT", "Thigh"),
    "THUMB": Code("76505004", "SCT", "Thumb"),
    "TIBIA": Code("12611008", "SCT", "Tibia"),
    "TOE": Code("29707007", "SCT", "Toe"),
    "TSPINE": Code("122495006", "SCT", "Thoracic spine"),
    "WRIST": Code("74670003", "SCT", "Wrist joint"),
}
BODY_PART_SITES: Final = MappingProxyType(_BODY_PARTS)


def finding_site(body_part_examined: str | None) -> Code | None:
    """The SCT anatomic site for a BodyPartExamined (0018,0015) value, or None if unmapped."""
    if not body_part_examined:
        return None
    return BODY_PART_SITES.get(body_part_examined.strip().upper())
