"""One film uploaded under two source stems is one radiograph; another film is not."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from osteoflag.training.radiographs import radiograph_groups
from testkit.boxes import film


def test_a_mirrored_turned_cropped_upload_is_the_same_radiograph(tmp_path: Path) -> None:
    original = film(1)
    # What a publisher's augmentation does to a second upload: mirror, turn, crop.
    second = original.transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(6, fillcolor=0)
    second = second.crop((12, 15, 290, 385))
    paths = []
    for name, image in (
        ("a1", original),
        ("a2", original.rotate(-4, fillcolor=0)),
        ("b1", second),
        ("c1", film(2)),
    ):
        paths.append(tmp_path / f"{name}.png")
        image.save(paths[-1])
    stems = ["a", "a", "b", "c"]

    assert radiograph_groups(paths, stems) == ["a", "a", "a", "c"]


def test_distinct_films_keep_their_own_stems(tmp_path: Path) -> None:
    paths = []
    for seed in range(4):
        paths.append(tmp_path / f"{seed}.png")
        film(10 + seed).save(paths[-1])

    assert radiograph_groups(paths, ["w", "x", "y", "z"]) == ["w", "x", "y", "z"]
