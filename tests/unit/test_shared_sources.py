"""How many published-split test files repeat a training radiograph (the card's caveat)."""

from __future__ import annotations

from pathlib import Path

from osteoflag.training.dataset import Sample
from osteoflag.training.hygiene import shared_sources


def _sample(name: str, split: str) -> Sample:
    return Sample(Path(f"/set/{split}/fracture/{name}"), 1, "osteoai", split, None, True)


def test_test_files_sharing_a_roboflow_stem_with_training_are_counted() -> None:
    seen = [_sample("wrist1_jpg.rf.0123456789ab.jpg", "train"), _sample("hand2.png", "val")]
    scored = [
        _sample("wrist1_jpg.rf.ba9876543210.jpg", "test"),  # another copy of a train radiograph
        _sample("hand2.png", "test"),  # the same file name: the same source
        _sample("wrist3_jpg.rf.0123456789ab.jpg", "test"),  # a radiograph training never saw
    ]
    assert shared_sources(seen, scored) == 2
    assert shared_sources([], scored) == 0
