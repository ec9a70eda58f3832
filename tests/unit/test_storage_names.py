"""Names that reach the filesystem or a bundle's version: whole-string checks only."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteoflag.errors import PermanentError, UsageError
from osteoflag.pacs.storage import check_uid, instance_path
from osteoflag.validation.adapted_bundle import adapted_version


@pytest.mark.parametrize("uid", ["1.2.3\n", "1.2.3\n4", "01.2", "1..2", "1.2.", " 1.2", "1" * 65])
def test_a_uid_is_checked_whole(uid: str) -> None:
    with pytest.raises(PermanentError, match=r"AffectedSOPInstanceUID .* is not a valid UID"):
        check_uid(uid, "AffectedSOPInstanceUID")


def test_a_valid_uid_becomes_a_file_name_in_its_fan_folder() -> None:
    assert check_uid("1.2.840.10008.1", "SOPInstanceUID") == "1.2.840.10008.1"
    path = instance_path(Path("/in"), "1.2.840.10008.1", "ab" * 32)
    assert path.name == "1.2.840.10008.1.abababababababab.dcm" and path.parent.parent == Path("/in")


@pytest.mark.parametrize("site", ["north\n", "North", "-north", "a" * 25, ""])
def test_a_site_name_is_checked_whole(site: str) -> None:
    with pytest.raises(UsageError, match="--site"):
        adapted_version("7.0.0", site)
