"""DICOM/PNG to display and model input: each case against an independently computed reference."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels.processing import convert_color_space
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
)

from osteoflag.errors import PixelDataError
from osteoflag.inference.dicomfile import read_instance
from osteoflag.inference.pixels import (
    DisplayImage,
    InputSpec,
    ResizeMode,
    display_from_dataset,
    load_display,
    model_input,
)
from testkit.inference_data import (
    dataset,
    dcmtk,
    dicom_from_png,
    png_of,
    radiograph,
    reference_display,
    save,
)

GREY12 = radiograph(maximum=4095)


def _voi_lut_item() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    curve = np.linspace(0.0, 1.0, 4096) ** 0.8 * 65535
    item.add_new(0x00283006, "US", [int(v) for v in curve])
    return item


def _modality_lut_item() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.add_new(0x00283006, "US", [int(v) for v in (np.arange(4096) * 3) % 65536])
    item.ModalityLUTType = "US"
    return item


GREY_CASES: dict[str, Callable[[], Dataset]] = {
    "mono2_8bit": lambda: dataset(radiograph(maximum=255), bits_allocated=8),
    "mono2_12in16": lambda: dataset(GREY12, bits_stored=12),
    "mono2_16bit_full": lambda: dataset(radiograph(maximum=65535)),
    "mono1_12in16": lambda: dataset(GREY12, bits_stored=12, photometric="MONOCHROME1"),
    "signed_rescale_window": lambda: dataset(
        GREY12 - 2048,
        bits_stored=12,
        signed=True,
        RescaleSlope=2,
        RescaleIntercept=-1024,
        WindowCenter=-500,
        WindowWidth=3000,
    ),
    "several_windows_first": lambda: dataset(
        GREY12, bits_stored=12, WindowCenter=[1500, 3000], WindowWidth=[1000, 200]
    ),
    "mono1_window": lambda: dataset(
        GREY12, bits_stored=12, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=2500
    ),
    "linear_exact": lambda: dataset(
        GREY12, bits_stored=12, WindowCenter=1800, WindowWidth=2000, VOILUTFunction="LINEAR_EXACT"
    ),
    "sigmoid": lambda: dataset(
        GREY12, bits_stored=12, WindowCenter=1800, WindowWidth=2000, VOILUTFunction="SIGMOID"
    ),
    "voi_lut_sequence": lambda: dataset(
        GREY12, bits_stored=12, VOILUTSequence=Sequence([_voi_lut_item()])
    ),
    "modality_lut_sequence": lambda: dataset(
        GREY12, bits_stored=12, ModalityLUTSequence=Sequence([_modality_lut_item()])
    ),
    "padding_value": lambda: _padded(),
    "padding_range": lambda: _padded(limit=5),
    "padding_signed_implicit": lambda: dataset(
        np.where(np.arange(80) < 10, -2048, GREY12 - 2048),
        bits_stored=12,
        signed=True,
        PixelPaddingValue=-2048,
        syntax=ImplicitVRLittleEndian,
    ),
    "multiframe": lambda: dataset(
        np.stack([GREY12, 4095 - GREY12, GREY12 // 2]), bits_stored=12, NumberOfFrames=3
    ),
    "rgb_interleaved": lambda: dataset(_rgb(), photometric="RGB", bits_allocated=8),
    "rgb_planar": lambda: dataset(_rgb(), photometric="RGB", bits_allocated=8, planar=1),
}


def _padded(limit: int | None = None) -> Dataset:
    pixels = GREY12.copy()
    pixels[:, :10] = 0
    pixels[:, 10:12] = 3
    extra: dict[str, Any] = {"PixelPaddingValue": 0}
    if limit is not None:
        extra["PixelPaddingRangeLimit"] = limit
    return dataset(pixels, bits_stored=12, **extra)


def _rgb() -> Any:
    base = radiograph(maximum=255)
    return np.stack([base, np.clip(base + 20, 0, 255), base // 2], axis=-1)


@pytest.mark.parametrize("case", sorted(GREY_CASES))
def test_display_matches_pydicom_reference(case: str, tmp_path: Path) -> None:
    path = save(GREY_CASES[case](), tmp_path / f"{case}.dcm")
    display = load_display(path)
    expected = reference_display(path)
    assert display.pixels.shape == expected.shape
    np.testing.assert_allclose(display.pixels, expected, atol=1e-5)
    assert display.pixels.min() >= 0.0 and display.pixels.max() <= 1.0


def test_multiframe_records_frame_count(tmp_path: Path) -> None:
    path = save(GREY_CASES["multiframe"](), tmp_path / "mf.dcm")
    display = load_display(path)
    assert display.frames == 3
    assert any("frame 1 of 3" in note for note in display.notes)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_multiframe_uses_first_frame(syntax: str, tmp_path: Path) -> None:
    source = save(GREY_CASES["multiframe"](), tmp_path / "mf.dcm")
    ds = dcmread(source)
    ds.compress(syntax)
    display = load_display(save(ds, tmp_path / "mf-compressed.dcm"))
    assert display.frames == 3
    np.testing.assert_allclose(display.pixels, reference_display(source), atol=1e-5)


def test_large_multiframe_is_read_one_frame_at_a_time(tmp_path: Path) -> None:
    frames = np.stack([radiograph(600, 500, seed=seed) for seed in range(4)])
    source = save(dataset(frames, bits_stored=12, NumberOfFrames=4), tmp_path / "big.dcm")
    expected = reference_display(source)
    rle = dcmread(source)
    rle.compress(RLELossless)
    variants = {"native": source, "rle": save(rle, tmp_path / "big-rle.dcm")}
    dcmtk("dcmconv", "+td", source, tmp_path / "big-deflated.dcm")
    variants["deflated"] = tmp_path / "big-deflated.dcm"
    variants["no-preamble"] = tmp_path / "big-raw.dcm"
    variants["no-preamble"].write_bytes(source.read_bytes()[132:])
    for name, path in variants.items():
        display = load_display(path)
        assert display.frames == 4, name
        np.testing.assert_allclose(display.pixels, expected, atol=1e-5, err_msg=name)
    deferred = read_instance(source).get_item(0x7FE00010, keep_deferred=True)
    assert deferred is not None and deferred.value is None  # frames 2-4 are never read


def test_monochrome1_is_inverted_monochrome2(tmp_path: Path) -> None:
    mono2 = load_display(save(dataset(GREY12, bits_stored=12), tmp_path / "m2.dcm"))
    inverted = dataset(4095 - GREY12, bits_stored=12, photometric="MONOCHROME1")
    mono1 = load_display(save(inverted, tmp_path / "m1.dcm"))
    np.testing.assert_allclose(mono1.pixels, mono2.pixels, atol=1e-6)


LOSSLESS_PYDICOM = {"rle": RLELossless, "j2k": JPEG2000Lossless}
LOSSLESS_DCMTK = {
    "jpeg_lossless_sv1": ("dcmcjpeg", "+e1"),
    "jpeg_lossless": ("dcmcjpeg", "+el"),
    "jpegls_dcmtk": ("dcmcjpls", "+el"),
    "deflated": ("dcmconv", "+td"),
    "implicit": ("dcmconv", "+ti"),
}


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("syntaxes")
    ds = dataset(GREY12, bits_stored=12, WindowCenter=2000, WindowWidth=3000)
    return save(ds, folder / "source.dcm")


@pytest.mark.parametrize("name", sorted(LOSSLESS_PYDICOM))
def test_lossless_pydicom_encoded(name: str, source: Path, tmp_path: Path) -> None:
    ds = dcmread(source)
    ds.compress(LOSSLESS_PYDICOM[name])
    path = save(ds, tmp_path / f"{name}.dcm")
    assert dcmread(path).file_meta.TransferSyntaxUID == LOSSLESS_PYDICOM[name]
    np.testing.assert_allclose(load_display(path).pixels, reference_display(source), atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSLESS_PYDICOM))
def test_signed_lossless_pydicom_encoded(name: str, tmp_path: Path) -> None:
    signed = dataset(GREY12 - 2048, bits_stored=12, signed=True, RescaleIntercept=0, RescaleSlope=1)
    source = save(signed, tmp_path / "signed.dcm")
    ds = dcmread(source)
    ds.compress(LOSSLESS_PYDICOM[name])
    path = save(ds, tmp_path / f"{name}.dcm")
    np.testing.assert_allclose(load_display(path).pixels, reference_display(source), atol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSLESS_DCMTK))
def test_lossless_dcmtk_encoded(name: str, source: Path, tmp_path: Path) -> None:
    tool, option = LOSSLESS_DCMTK[name]
    path = tmp_path / f"{name}.dcm"
    dcmtk(tool, option, source, path)
    syntax = dcmread(path).file_meta.TransferSyntaxUID
    assert syntax != ExplicitVRLittleEndian
    if name == "deflated":
        assert syntax == DeflatedExplicitVRLittleEndian
    if name == "implicit":
        assert syntax == ImplicitVRLittleEndian
    np.testing.assert_allclose(load_display(path).pixels, reference_display(source), atol=1e-5)


def _mean_error(path: Path, reference: Path) -> float:
    return float(np.abs(load_display(path).pixels - reference_display(reference)).mean())


def test_lossy_syntaxes_stay_close(tmp_path: Path) -> None:
    grey8 = save(dataset(radiograph(maximum=255), bits_allocated=8), tmp_path / "g8.dcm")
    baseline = tmp_path / "baseline.dcm"
    dcmtk("dcmcjpeg", "+eb", "+q", "95", grey8, baseline)
    assert _mean_error(baseline, grey8) < 0.02
    grey12 = save(dataset(GREY12, bits_stored=12), tmp_path / "g12.dcm")
    extended = tmp_path / "extended.dcm"
    dcmtk("dcmcjpeg", "+ee", "+q", "95", grey12, extended)
    assert _mean_error(extended, grey12) < 0.02
    near = tmp_path / "near.dcm"
    dcmtk("dcmcjpls", "+en", "+md", "2", grey12, near)
    assert _mean_error(near, grey12) < 0.01
    j2k = dcmread(grey12)
    j2k.compress(JPEG2000, j2k_cr=[4])
    lossy = save(j2k, tmp_path / "j2k.dcm")
    assert _mean_error(lossy, grey12) < 0.02


def test_ybr_full_422_baseline_jpeg(tmp_path: Path) -> None:
    rgb = save(dataset(_rgb(), photometric="RGB", bits_allocated=8), tmp_path / "rgb.dcm")
    jpeg = tmp_path / "ybr.dcm"
    dcmtk("dcmcjpeg", "+eb", "+q", "98", rgb, jpeg)
    assert dcmread(jpeg).PhotometricInterpretation == "YBR_FULL_422"
    assert _mean_error(jpeg, rgb) < 0.02


def test_ybr_full_native_matches_rgb(tmp_path: Path) -> None:
    rgb = _rgb().astype(np.uint8)
    rgb_path = save(dataset(rgb, photometric="RGB", bits_allocated=8), tmp_path / "rgb.dcm")
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    ybr_path = save(dataset(ybr, photometric="YBR_FULL", bits_allocated=8), tmp_path / "ybr.dcm")
    assert _mean_error(ybr_path, rgb_path) < 0.01


def test_palette_colour_becomes_luminance(tmp_path: Path) -> None:
    indices = radiograph(maximum=255)
    ramp = np.arange(256, dtype=np.uint16) * 257
    ds = dataset(indices, photometric="PALETTE COLOR", bits_allocated=8)
    for colour, values in (("Red", ramp), ("Green", ramp[::-1]), ("Blue", ramp // 2)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(ds, f"{colour}PaletteColorLookupTableData", values.astype("<u2").tobytes())
    display = load_display(save(ds, tmp_path / "palette.dcm"))
    rgb = np.stack([ramp[indices], ramp[::-1][indices], (ramp // 2)[indices]], axis=-1)
    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    expected = (grey - grey.min()) / (grey.max() - grey.min())
    np.testing.assert_allclose(display.pixels, expected, atol=1e-5)


def test_png_and_dicom_from_it_match(tmp_path: Path) -> None:
    for name, pixels in (("grey", radiograph(maximum=255)), ("rgb", _rgb())):
        png = png_of(pixels, tmp_path / f"{name}.png")
        dicom = dicom_from_png(png, tmp_path / f"{name}.dcm")
        np.testing.assert_allclose(load_display(png).pixels, load_display(dicom).pixels, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda ds: delattr(ds, "PixelData"), "(7FE0,0010)"),
        (lambda ds: setattr(ds, "Rows", 0), "(0028,0010)"),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[:-100]), "fewer than"),
        (lambda ds: setattr(ds, "Rows", 60000) or setattr(ds, "Columns", 60000), "too large"),
        (lambda ds: setattr(ds, "PhotometricInterpretation", "HSV"), "(0028,0004)"),
    ],
)
def test_refusals_name_the_tag(change: Callable[[Dataset], Any], message: str) -> None:
    ds = dataset(GREY12, bits_stored=12)
    change(ds)
    with pytest.raises(PixelDataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        display_from_dataset(ds)


def _short_lut(keyword: str) -> Dataset:
    """A LUT whose descriptor claims 65536 entries (0) while LUT Data holds 10 (as bytes)."""
    item = Dataset()
    item.LUTDescriptor = [0, 0, 16]
    item.add_new(0x00283006, "OW", np.arange(10, dtype=np.uint16).tobytes())  # LUT Data
    if keyword == "ModalityLUTSequence":
        item.ModalityLUTType = "US"
    return dataset(GREY12, bits_stored=12, **{keyword: Sequence([item])})


def _palette(descriptor: list[int], data: bytes) -> Dataset:
    ds = dataset(radiograph(maximum=255), photometric="PALETTE COLOR", bits_allocated=8)
    for colour in ("Red", "Green", "Blue"):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", descriptor)
        setattr(ds, f"{colour}PaletteColorLookupTableData", data)
    return ds


def _odd_padding() -> Dataset:
    ds = dataset(GREY12, bits_stored=12)
    ds[0x00280120] = RawDataElement(Tag(0x00280120), "US", 3, b"\x01\x02\x03", 0, False, True)
    return ds


@pytest.mark.parametrize(
    ("make", "tag"),
    [
        (lambda: _short_lut("VOILUTSequence"), "(0028,3010)"),
        (lambda: _short_lut("ModalityLUTSequence"), "(0028,3000)"),
        (lambda: _palette([256, 0, 16], bytes(21)), "(0028,1201)"),
        (lambda: _palette([0, 0, 16], bytes(20)), "(0028,1201)"),
        (lambda: dataset(GREY12, bits_stored=12, PixelPaddingValue=[1, 2]), "(0028,0120)"),
        (_odd_padding, "(0028,0120)"),
    ],
)
def test_malformed_lookup_tables_are_pixel_data_errors_naming_the_tag(
    make: Callable[[], Dataset], tag: str
) -> None:
    with pytest.raises(PixelDataError, match=re.escape(tag)):
        display_from_dataset(make())


def test_any_library_error_becomes_a_pixel_data_error() -> None:
    ds = dataset(GREY12, bits_stored=12)
    ds[0x00280010] = RawDataElement(Tag(0x00280010), "US", 3, b"\x01\x02\x03", 0, False, True)
    with pytest.raises(PixelDataError, match="unexpected BytesLengthException"):
        display_from_dataset(ds)


def test_undecodable_compressed_data_names_file(tmp_path: Path) -> None:
    ds = dcmread(save(dataset(GREY12, bits_stored=12), tmp_path / "a.dcm"))
    ds.compress(RLELossless)
    ds.PixelData = encapsulate([bytes(64) + b"\x01\x02"])
    path = save(ds, tmp_path / "broken.dcm")
    with pytest.raises(PixelDataError, match=r"broken\.dcm"):
        load_display(path)


def test_not_an_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(PixelDataError, match=r"notes\.txt"):
        load_display(path)


def test_model_input_letterbox_and_normalisation() -> None:
    display = DisplayImage(np.ones((50, 100), dtype=np.float32))
    spec = InputSpec(size=(32, 32), mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0))
    batch = model_input(display, spec)
    assert batch.shape == (3, 32, 32) and batch.dtype == np.float32
    assert batch[0, 16, 16] == pytest.approx((255 - 10) / 2)
    assert batch[2, 0, 16] == pytest.approx(-30 / 5)  # black bar at the top
    stretched = model_input(display, InputSpec(size=(32, 32), resize_mode=ResizeMode.STRETCH))
    assert stretched.min() == pytest.approx(255.0)


def test_input_spec_validates() -> None:
    with pytest.raises(ValueError, match="std"):
        InputSpec(size=(8, 8), std=(1.0, 0.0, 1.0))
