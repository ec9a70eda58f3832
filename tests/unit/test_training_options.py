"""The ``train`` command line spells out enum values so that parsing never imports torch;
these must stay the enums' values."""

from __future__ import annotations

from osteoflag.training.backbones import FeatureLayout
from osteoflag.training.commands import BACKBONES, DEFAULT_LAYOUT, LAYOUTS
from osteoflag.training.networks import Architecture


def test_command_line_choices_are_the_enums() -> None:
    assert set(BACKBONES) == {a.value for a in Architecture}
    assert set(LAYOUTS) == {layout.value for layout in FeatureLayout}
    assert set(DEFAULT_LAYOUT) == set(BACKBONES)
    assert set(DEFAULT_LAYOUT.values()) <= set(LAYOUTS)
