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

from bench.region import BUNDLES
from osteoflag.inference.bundle import MANIFEST, load_bundle
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
    shipped = {path.relative_to(ROOT) for path in (ROOT / "models").glob(f"*/{MANIFEST}")}
    assert {bundle / MANIFEST for bundle in BUNDLES} == shipped
    assert out.count("classification (forward pass + classifier)") == len(BUNDLES)
    assert out.count("localiser region (") == len(BUNDLES)
    for bundle in BUNDLES:
        predictor = Predictor(load_bundle(ROOT / bundle), threads=1)
        assert f"region of a flagged image ({predictor.model_id}, " in out
        assert predictor.localiser is not None
        passes = predictor.localiser.passes
        assert f"localiser region ({passes} tiled passes, cells)" in out
