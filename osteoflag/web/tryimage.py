""" "Try an image": classify an uploaded PNG, JPEG or DICOM file exactly as ``infer`` would.

The upload goes through the very functions ``osteoflag infer`` uses (``load_display``,
``model_input``, ``Predictor.predict_inputs``), so the probability and region are the same,
and its banner through the summary image's ``banner_image``, so the picture is the one the
PACS would get: for a fracture, with the model's evidence over the image and the region's box.
Nothing enters the queue: the bytes live in memory and, for the decoder, in an
owner-only temporary file that is deleted before the response is sent.
"""

from __future__ import annotations

import base64
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from osteoflag.errors import PixelDataError
from osteoflag.inference.budget import DecodeBudget
from osteoflag.inference.pixels import load_display
from osteoflag.inference.predictor import Prediction, Predictor
from osteoflag.pacs.derived import Classification, ModelIdentity
from osteoflag.pacs.summary import banner_image

logger = logging.getLogger(__name__)


class UploadError(PixelDataError):
    """An upload that is not an image we can classify; the message is shown to the user."""


@dataclass(frozen=True)
class Trial:
    """The outcome of one upload: the prediction and the banner image as PNG bytes.

    The upload's file name is not kept: it may well be a patient's name.
    """

    size: int
    prediction: Prediction
    banner_png: bytes

    @property
    def banner_data_uri(self) -> str:
        """The banner inlined in the page, so it is never stored or served by URL."""
        return "data:image/png;base64," + base64.b64encode(self.banner_png).decode("ascii")


def png_bytes(pixels: NDArray[np.uint8]) -> bytes:
    """Encode an RGB or grey array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def classify_upload(
    data: bytes, predictor: Predictor, model: ModelIdentity, budget: DecodeBudget
) -> Trial:
    """Decode ``data`` like ``infer`` does, within ``budget`` (checked from the header, before
    decoding), classify it and draw the PACS banner.

    Raises :class:`UploadError` for empty, undecodable or too large uploads.
    """
    if not data:
        raise UploadError("the uploaded file is empty")
    with tempfile.TemporaryDirectory(prefix="osteoflag-try-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        try:
            display = load_display(path, budget)
        except PixelDataError as exc:
            reason = str(exc).replace(str(path), "upload")
            raise UploadError(f"not a PNG, JPEG or DICOM image we can read ({reason})") from exc
    [prediction] = predictor.predict([display])
    result = Classification(label=prediction.label, probability=prediction.probability)
    banner = png_bytes(banner_image(display, result, model, prediction.region))
    logger.info(
        "uploaded image classified",
        extra={
            "action": "try_image",
            "probability": round(prediction.probability, 6),
            "label": prediction.label.value,
            "model": prediction.model,
        },
    )
    return Trial(size=len(data), prediction=prediction, banner_png=banner)
