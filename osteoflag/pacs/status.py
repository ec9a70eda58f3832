"""DIMSE status codes osteoflag returns and reads (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

SUCCESS = 0x0000
# Refused: Out of Resources. The sender keeps the instance and retries later.
OUT_OF_RESOURCES = 0xA700
# Error: Cannot understand. Retrying the same object will not help.
CANNOT_UNDERSTAND = 0xC211
# Error: Data Set does not match SOP Class (also used when it names another instance).
DATASET_MISMATCH = 0xA900

# Failure statuses that resending the same object cannot fix (PS3.4 B.2.3, PS3.7 C).
_PERMANENT_STATUSES = {0x0122, 0x0124, 0x0211, 0x0212}


def is_permanent(status: int) -> bool:
    """A C-STORE failure status that retrying cannot cure (A9xx, Cxxx and refusals by class)."""
    return status in _PERMANENT_STATUSES or status >> 8 == 0xA9 or status >> 12 == 0xC


def is_success(status: int) -> bool:
    """Delivered: a Success or Warning status (0000; B000, B006, B007, 0001...), by
    pynetdicom's status categories (PS3.4 B.2.3), the one rule the sender and ``send`` use."""
    return code_to_category(status) in (STATUS_SUCCESS, STATUS_WARNING)
