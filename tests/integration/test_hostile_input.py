"""Hostile and broken files through ``infer`` (in-process ``classify_files``).

Each gives a result (odd but usable files) or an error line naming the file and the reason,
never a crash. The same cases go through a running daemon in
``tests/acceptance/test_hostile_daemon.py``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from osteoflag.inference.bundle import load_bundle
from osteoflag.inference.infer import classify_files
from osteoflag.inference.predictor import Predictor
from tests.fuzz.cases import EXPECTED, write_cases


@pytest.mark.timeout(120)
def test_infer_gives_a_result_or_a_reason_for_each(tmp_path: Path, tiny_bundle: Path) -> None:
    cases = write_cases(tmp_path / "hostile")
    predictor = Predictor(load_bundle(tiny_bundle), threads=1, batch_size=4)
    out = io.StringIO()
    failures = classify_files(predictor, list(cases.values()), out)
    lines = {Path(line["file"]).stem: line for line in map(json.loads, out.getvalue().splitlines())}
    assert set(lines) == set(cases)
    usable = {name for name, (state, _) in EXPECTED.items() if state == "done"}
    for name, line in lines.items():
        if name in usable:
            assert 0.0 <= line["probability"] <= 1.0, line
        else:
            assert line["error"].startswith(str(cases[name])), line
            assert EXPECTED.get(name, ("", ""))[1] in line["error"], line
    assert failures == len(cases) - len(usable)
