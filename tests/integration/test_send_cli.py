"""``osteoflag send`` as a subprocess against a real Storage SCP: an export folder with a stray
non-DICOM file still sends every DICOM file in it."""

from __future__ import annotations

from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian

from testkit.daemon import base_sections, osteoflag, write_config
from tests.helpers.dicom import radiograph, write_in_syntax
from tests.helpers.load import ResultsPACS


def test_a_stray_file_is_reported_and_the_dicom_files_are_sent(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    export = tmp_path / "export"
    export.mkdir()
    images = [radiograph() for _ in range(3)]
    for index, ds in enumerate(images):
        write_in_syntax(ds, ExplicitVRLittleEndian, export / f"{index}.dcm")
    (export / "README.TXT").write_text("PACS export\n")
    config = write_config(tmp_path, base_sections(tmp_path, tiny_bundle))
    pacs = ResultsPACS()
    try:
        done = osteoflag(
            "send", str(export), "--host", "127.0.0.1", "--port", str(pacs.port),
            "--called-aet", "PACS", config=config,
        )  # fmt: skip
        received = list(pacs.received)
    finally:
        pacs.stop()
    assert done.returncode == 1
    assert sorted(received) == sorted(str(ds.SOPInstanceUID) for ds in images)
    assert done.stdout.splitlines() == [
        f"{export / f'{index}.dcm'}: status 0x0000" for index in range(3)
    ]
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"osteoflag: {export / 'README.TXT'}: not a readable DICOM file (")


def _one_image(tmp_path: Path, tiny_bundle: Path) -> tuple[Path, Path]:
    """A radiograph to send and a config to send it with."""
    image = tmp_path / "image.dcm"
    write_in_syntax(radiograph(), ExplicitVRLittleEndian, image)
    return image, write_config(tmp_path, base_sections(tmp_path, tiny_bundle))


def test_a_host_that_does_not_resolve_is_one_line_not_a_traceback(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    """``.invalid`` never resolves (RFC 6761): pynetdicom's resolver error was a traceback."""
    image, config = _one_image(tmp_path, tiny_bundle)
    done = osteoflag("send", str(image), "--host", "pacs.invalid", "--port", "104", config=config)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("osteoflag: association with ANY-SCP@pacs.invalid:104: 'pacs.invalid'")
    assert "cannot be resolved" in line


def test_a_called_ae_title_no_peer_could_have_is_bad_usage_naming_the_option(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    image, config = _one_image(tmp_path, tiny_bundle)
    done = osteoflag(
        "send", str(image), "--host", "127.0.0.1", "--port", "104",
        "--called-aet", "SEVENTEEN-LETTERS", config=config,
    )  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "argument --called-aet: 'SEVENTEEN-LETTERS' is not an AE title" in last
    assert "Traceback" not in done.stderr


def test_a_folder_with_nothing_to_send_is_named(tmp_path: Path, tiny_bundle: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / ".hidden.dcm").write_bytes(b"\0")
    config = write_config(tmp_path, base_sections(tmp_path, tiny_bundle))
    done = osteoflag("send", str(folder), "--host", "127.0.0.1", "--port", "104", config=config)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        f"osteoflag: send: no files found under {folder} (hidden ones are left out)"
    )
