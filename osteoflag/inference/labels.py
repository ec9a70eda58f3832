"""The finding per image, shared by the predictor, the reports and the command line.

Its own module so that the DICOM side (SR, summary image) can name a finding without
importing onnxruntime and LightGBM.
"""

from __future__ import annotations

from enum import StrEnum


class Label(StrEnum):
    """The finding per image (``label`` in the CLI contract). The predictor gives the first
    two; UNDETERMINED is what a report states for an image that could not be classified."""

    FRACTURE = "fracture"
    NO_FRACTURE = "no_fracture"
    UNDETERMINED = "undetermined"
