"""Every bundle writer refuses an ``--out`` inside the bundle it reads (or around it): a file
the base's manifest does not list would leave the base unloadable, and the daemon down. A
command that changes a bundle changes it whole or not at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from osteoflag.inference.bundle import load_bundle
from osteoflag.training.backbones import TrainingError
from osteoflag.training.recard import recard
from testkit.daemon import osteoflag, write_config

#: Each writer's options besides ``--bundle`` and ``--out`` (never read: the refusal comes first).
WRITERS = {
    "adapt": ("--data", "{tmp}", "--site", "north"),
    "add-maps": (),
    "add-localiser": ("--boxes", "{tmp}"),
    "quantize": ("--calibration", "{tmp}", "--data", "{tmp}"),
}


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_out_inside_the_base_is_refused_and_the_base_still_loads(
    tmp_path: Path, tiny_bundle: Path, command: str
) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_bundle, base)
    before = sorted(path.name for path in base.rglob("*"))
    config = write_config(tmp_path, {"model": {"bundle": str(base)}})
    out = base / "site-a"
    extra = [arg.format(tmp=tmp_path) for arg in WRITERS[command]]
    done = osteoflag(command, "--bundle", str(base), "--out", str(out), *extra, config=config)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1:] == [
        f"osteoflag: --out {out}: is inside --bundle {base}; choose a folder outside it"
    ]
    assert sorted(path.name for path in base.rglob("*")) == before
    load_bundle(base)


def test_adapt_refuses_an_out_that_holds_the_base(tmp_path: Path, tiny_bundle: Path) -> None:
    base = tmp_path / "models" / "base"
    shutil.copytree(tiny_bundle, base)
    config = write_config(tmp_path, {"model": {"bundle": str(base)}})
    out = tmp_path / "models"
    done = osteoflag(
        "adapt", "--bundle", str(base), "--out", str(out), "--data", str(tmp_path),
        "--site", "north", config=config,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1:] == [
        f"osteoflag: --out {out}: holds --bundle {base}; choose a folder outside it"
    ]


def test_a_card_rewrite_that_fails_leaves_the_bundle_as_it_was(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    before = {path.name: path.read_bytes() for path in bundle.iterdir()}
    manifest = load_bundle(bundle).manifest
    results = tmp_path / "results.json"  # its run, cut short: no figures for the card
    results.write_text(json.dumps({"run": {"name": manifest.name, "version": manifest.version}}))
    with pytest.raises(TrainingError, match=r"results.json: run results incomplete \(KeyError"):
        recard(bundle, results, ["a note"])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["bundle", "results.json"]
    assert {path.name: path.read_bytes() for path in bundle.iterdir()} == before
    load_bundle(bundle)
