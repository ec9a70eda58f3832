"""The decode budget: sizes are checked from headers, before anything is decoded."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteoflag.errors import PixelDataError
from osteoflag.inference.budget import BYTES_PER_PIXEL, DEFAULT_BUDGET, DecodeBudget
from osteoflag.inference.pixels import display_from_dataset, load_display
from testkit.inference_data import dataset, radiograph, save
from tests.helpers.bombs import png_bomb


def test_budget_sizes() -> None:
    budget = DecodeBudget(512)
    assert budget.max_dataset_bytes == 512 * 2**20
    assert budget.max_pixels == 512 * 2**20 // BYTES_PER_PIXEL
    assert DEFAULT_BUDGET.max_pixels > 4300 * 4300  # a 43 x 43 cm detector at 100 um
    with pytest.raises(ValueError, match="at least 1 MB"):
        DecodeBudget(0)


def test_a_png_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb(12000, 14000))
    assert path.stat().st_size < 400_000
    with pytest.raises(PixelDataError, match=r"image too large \(12000x14000\)"):
        load_display(path)  # the memory it would take is measured in the acceptance ring


def test_a_dicom_over_the_budget_is_refused_naming_it(tmp_path: Path) -> None:
    ds = dataset(radiograph(rows=1024, columns=1024), bits_stored=12)
    small = DecodeBudget(16)  # 16 MB: 699050 pixels
    with pytest.raises(PixelDataError, match=r"1024x1024x1 .* decode budget of 16 MB"):
        display_from_dataset(ds, small)
    with pytest.raises(PixelDataError, match="decode budget of 16 MB"):
        load_display(save(ds, tmp_path / "big.dcm"), small)
    assert display_from_dataset(ds).pixels.shape == (1024, 1024)
