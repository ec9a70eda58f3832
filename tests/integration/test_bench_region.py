"""``make bench``'s region benchmark runs on the shipped bundles as `make bench` runs it.

Benchmarks print figures and are not timed by the suite, but they run the serving code on the
shipped bundles: a change there (such as the cell term needing each row's map) must not leave
`make bench` broken until someone next runs it. Only whether it completes and what it names is
checked here, never its times.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.predictor import Predictor

ROOT = Path(__file__).resolve().parents[2]


def test_region_bench_measures_every_shipped_bundle_and_its_localiser() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.region"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for model in ("osteoflag-effnetlite0-imagenet@", "osteoflag-vgg16-imagenet@"):
        assert f"region of a flagged image ({model}" in out
    assert out.count("classification (forward pass + classifier)") == 2
    assert out.count("localiser region (") == 2
    for name in ("default", "vgg16"):
        localiser = Predictor(load_bundle(ROOT / "models" / name), threads=1).localiser
        assert localiser is not None
        assert f"localiser region ({localiser.tiling.tiles**2} tiled passes, cells)" in out
