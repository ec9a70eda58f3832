"""The presentation contexts osteoflag accepts and proposes (PS3.4 Annex B, PS3.5 Section 10).

Only radiograph storage SOP classes are accepted; everything else is refused at
presentation-context negotiation, which is how DICOM says "not for me". Every
transfer syntax here is one the inference stage can decode (pydicom + pylibjpeg).
"""

from __future__ import annotations

from pydicom import uid

RADIOGRAPH_STORAGE: tuple[str, ...] = (
    uid.DigitalXRayImageStorageForPresentation,
    uid.DigitalXRayImageStorageForProcessing,
    uid.ComputedRadiographyImageStorage,
    uid.SecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    uid.MultiFrameTrueColorSecondaryCaptureImageStorage,
)

ACCEPTED_TRANSFER_SYNTAXES: tuple[str, ...] = (
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)

# Verification SOP Class (PS3.4 Annex A).
VERIFICATION = uid.UID("1.2.840.10008.1.1")
