"""One rule for a delivered object, shared by the sender and ``osteoflag send``."""

from __future__ import annotations

from pathlib import Path

import pytest

from osteoflag.pacs.scu import StoreOutcome
from osteoflag.pacs.status import is_permanent, is_success


@pytest.mark.parametrize(
    ("status", "delivered"),
    [
        (0x0000, True),
        (0x0001, True),  # Warning: requested optional attributes not supported
        (0xB000, True),
        (0xB007, True),
        (0xA700, False),
        (0xA900, False),
        (0xC211, False),
        (0x0122, False),
    ],
)
def test_sender_and_send_agree_on_what_was_delivered(status: int, delivered: bool) -> None:
    assert is_success(status) is delivered
    assert StoreOutcome(Path("x.dcm"), status).ok is delivered
    if not delivered:
        assert is_permanent(status) is (status != 0xA700)
