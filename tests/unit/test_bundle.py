"""Model bundle: manifest validation and SHA-256 pinning of every file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from osteoflag.errors import BundleError
from osteoflag.inference.bundle import MANIFEST, load_bundle, read_manifest
from osteoflag.inference.pixels import ResizeMode
from testkit.tiny_bundle import build_bundle


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def bundle_dir(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "copy"))


def test_pristine_bundle_loads(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.model_id == "tiny-test@0.0.1"
    assert bundle.input_spec.size == (32, 32)
    assert bundle.input_spec.resize_mode is ResizeMode.LETTERBOX
    assert set(bundle.manifest.files) == {"backbone.onnx", "classifier.txt", "MODEL_CARD.md"}


@pytest.mark.parametrize("name", ["backbone.onnx", "classifier.txt", "MODEL_CARD.md"])
def test_one_changed_byte_is_refused_naming_the_file(bundle_dir: Path, name: str) -> None:
    path = bundle_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{name}: SHA-256"):
        load_bundle(bundle_dir)


def test_missing_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "classifier.txt").unlink()
    with pytest.raises(BundleError, match=r"classifier\.txt: listed in the manifest but missing"):
        load_bundle(bundle_dir)


def test_unlisted_file_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"extra\.bin: file not listed"):
        load_bundle(bundle_dir)


def test_missing_manifest_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST).unlink()
    with pytest.raises(BundleError, match=r"manifest\.json: bundle manifest is missing"):
        load_bundle(bundle_dir)


def test_bad_manifest_field_is_named(bundle_dir: Path) -> None:
    document = json.loads((bundle_dir / MANIFEST).read_text())
    document["threshold"]["value"] = 1.5
    (bundle_dir / MANIFEST).write_text(json.dumps(document))
    with pytest.raises(BundleError, match=r"threshold\.value"):
        read_manifest(bundle_dir)


def test_path_escaping_file_name_is_refused(bundle_dir: Path) -> None:
    document = json.loads((bundle_dir / MANIFEST).read_text())
    document["files"]["../outside"] = "0" * 64
    (bundle_dir / MANIFEST).write_text(json.dumps(document))
    with pytest.raises(BundleError, match="relative path inside the bundle"):
        read_manifest(bundle_dir)


@pytest.mark.parametrize("views", [[4, 8], [0, 8, 8], [0, 10_000]])
def test_feature_views_outside_the_features_are_named(bundle_dir: Path, views: list[int]) -> None:
    document = json.loads((bundle_dir / MANIFEST).read_text())
    document["features"]["views"] = views
    (bundle_dir / MANIFEST).write_text(json.dumps(document))
    with pytest.raises(BundleError, match=r"features.*views"):
        read_manifest(bundle_dir)
