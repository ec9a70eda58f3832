"""Counts in the settings end in SQL (a claim's LIMIT, a window's size): past 64 bits they
overflowed at every run; now they are refused by key, and the largest accepted runs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from osteoflag.config import parse_settings
from osteoflag.db import outbound, queue
from osteoflag.errors import ConfigError
from osteoflag.settings_fields import MAX_COUNT

COUNTS = [
    ("model", "batch_size"),
    ("worker", "max_attempts"),
    ("sender", "batch_size"),
    ("drift", "window"),
    ("drift", "min_results"),
    ("retention", "batch_size"),
]


@pytest.mark.parametrize(("section", "key"), COUNTS)
def test_a_count_past_the_limit_is_a_config_error_naming_its_key(
    tmp_path: Path, section: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"{section}\.{key}"):
        parse_settings({section: {key: 10**20}}, tmp_path)
    largest = {key: MAX_COUNT, **({"window": MAX_COUNT} if section == "drift" else {})}
    assert getattr(getattr(parse_settings({section: largest}, tmp_path), section), key)


def test_claims_of_the_largest_count_run(sessions: sessionmaker[Session]) -> None:
    lease = timedelta(minutes=5)
    assert queue.claim_instances(sessions, "worker", MAX_COUNT, lease) == []
    assert outbound.claim_due(sessions, "sender", "pacs", MAX_COUNT, lease) == []
