"""DIMSE status codes osteoflag returns (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

SUCCESS = 0x0000
# Refused: Out of Resources. The sender keeps the instance and retries later.
OUT_OF_RESOURCES = 0xA700
# Error: Cannot understand. Retrying the same object will not help.
CANNOT_UNDERSTAND = 0xC211
