"""``make bench``: what each object osteoflag sends back costs per image, in time and bytes.

For a 2048x1664 12-bit DX: the SR of a flagged image with its region (TID 1410), the SR of a
not-flagged image (whole-image group), the presentation state of the flagged image and the
summary image, each built and encoded as a DICOM file (as ``write_objects`` does, less the
disk write). Median and maximum of ``--repeat`` builds after one warm-up; the summary is
given the decoded 8-bit display image, as the worker gives it.
Run with ``python -m bench.objects`` from the repository root.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from pydicom import Dataset

from osteoflag.inference.labels import Label
from osteoflag.inference.pixels import display_from_dataset
from osteoflag.inference.region import Region
from osteoflag.pacs.derived import Classification, ModelIdentity, device_uid
from osteoflag.pacs.gsps import build_gsps
from osteoflag.pacs.outbound import encode
from osteoflag.pacs.sr import build_sr
from osteoflag.pacs.summary import build_summary
from testkit.inference_data import dataset, radiograph

MODEL = ModelIdentity("bench", "0.0.0", "0" * 64, 0.5)
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
#: A region with an evidence map (a blob at the peak, at the model grid's resolution) so the
#: summary's cost includes drawing it, as for a flagged image.
_ROWS, _COLUMNS = np.mgrid[0:224, 0:182]
REGION = Region(
    peak=(900, 700),
    box=(760, 560, 1080, 880),
    heat=np.exp(-((_COLUMNS - 98) ** 2 + (_ROWS - 77) ** 2) / 200.0).astype(np.float32),
)
FLAGGED = Classification(Label.FRACTURE, 0.87)
NEGATIVE = Classification(Label.NO_FRACTURE, 0.12)


def _timed(build: Callable[[], Dataset], repeat: int) -> tuple[list[float], int]:
    size = len(encode(build()))  # warm-up, and the encoded size
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        encode(build())
        times.append(time.perf_counter() - started)
    return times, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.objects", description=__doc__)
    parser.add_argument("--repeat", type=int, default=20, help="builds per object (20)")
    args = parser.parse_args(argv)
    source = dataset(
        radiograph(rows=2048, columns=1664, seed=3),
        bits_stored=12,
        WindowCenter=2048,
        WindowWidth=4096,
        InstanceNumber=1,
    )
    grey = display_from_dataset(source).grey8()
    device = device_uid("OSTEOFLAG")
    objects: dict[str, Callable[[], Dataset]] = {
        "SR, flagged, region (TID 1410)": lambda: build_sr(
            source, FLAGGED, model=MODEL, device_uid=device, created=CREATED, region=REGION
        ),
        "SR, not flagged (whole image)": lambda: build_sr(
            source, NEGATIVE, model=MODEL, device_uid=device, created=CREATED
        ),
        "GSPS, flagged": lambda: build_gsps(source, 0.87, REGION, model=MODEL, created=CREATED),
        "summary image, not flagged": lambda: build_summary(
            source, NEGATIVE, model=MODEL, created=CREATED, grey=grey
        ),
        "summary image, flagged, region": lambda: build_summary(
            source, FLAGGED, model=MODEL, created=CREATED, grey=grey, region=REGION
        ),
    }
    print(f"objects per 2048x1664 DX, built and encoded, {args.repeat} runs each:")
    print(f"  {'object':34} {'median ms':>10} {'max ms':>8} {'bytes':>10}")
    for name, build in objects.items():
        times, size = _timed(build, args.repeat)
        median, worst = statistics.median(times) * 1000, max(times) * 1000
        print(f"  {name:34} {median:10.1f} {worst:8.1f} {size:10,d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
