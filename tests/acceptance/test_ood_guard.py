"""The out-of-distribution guard end to end: ``osteoflag ood-reference`` on a bundle, then a
real daemon fed over DICOM skips an image unlike the training ones, with the reason, and
classifies one like them."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from osteoflag.inference.bundle import load_bundle
from osteoflag.pacs.scu import Peer, send_c_store
from testkit.daemon import DaemonProcess, base_sections, osteoflag, write_config
from testkit.inference_data import dataset, save
from testkit.wait import wait_for
from tests.helpers.site_data import site_image, write_site


def _states(folder: Path) -> dict[str, tuple[str, str | None]]:
    with sqlite3.connect(folder / "var" / "osteoflag.db") as db:
        rows = db.execute("SELECT sop_instance_uid, state, error FROM instances").fetchall()
    return {uid: (state, error) for uid, state, error in rows}


def test_image_unlike_the_training_ones_is_skipped_with_the_reason(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    write_site(tmp_path / "training", per_class=130, size=96, seed=7)
    sections = base_sections(tmp_path, bundle)
    config = write_config(tmp_path, sections)
    made = osteoflag(
        "ood-reference",
        "--bundle",
        str(bundle),
        "--data",
        str(tmp_path / "training" / "images"),
        "--labels",
        str(tmp_path / "training" / "labels.csv"),
        config=config,
    )
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    assert summary["held_out_skipped"] <= 0.02
    assert "ood_reference.npz" in load_bundle(bundle).manifest.files

    rng = np.random.default_rng(11)
    text = np.where(rng.random((96, 96)) < 0.05, 0, 4095)  # a page of dark specks
    like = dataset(site_image(0, np.random.default_rng(12), 96), bits_stored=12)
    unlike = dataset(text.astype(np.int64), bits_stored=12)
    files = [save(like, tmp_path / "like.dcm"), save(unlike, tmp_path / "unlike.dcm")]
    with DaemonProcess(config, sections["listener"]["port"]) as daemon:
        outcomes = send_c_store(files, Peer("127.0.0.1", daemon.port, "OSTEOFLAG"), "MOD")
        assert all(outcome.ok for outcome in outcomes)
        states = wait_for(
            lambda: (
                (s := _states(tmp_path))
                and all(state in ("done", "skipped") for state, _ in s.values())
                and len(s) == 2
                and s
            ),
            timeout=120,
        )
    assert states[str(like.SOPInstanceUID)] == ("done", None)
    state, reason = states[str(unlike.SOPInstanceUID)]
    assert state == "skipped"
    assert reason is not None and reason.startswith("outside the model's training images")
