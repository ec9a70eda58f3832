"""Peer pinning rule and the ``[listener]`` access settings (allowed_peers, tls) validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from osteoflag.config import AllowedPeer, parse_settings
from osteoflag.errors import ConfigError
from osteoflag.pacs.access import peer_allowed

PINS = (
    AllowedPeer(ae_title="PACS", address="10.0.0.5"),
    AllowedPeer(ae_title="PACS", address="192.168.7.0/24"),
    AllowedPeer(ae_title="V6", address="fd00::/8"),
)


@pytest.mark.parametrize(
    ("calling_ae", "address", "allowed"),
    [
        ("PACS", "10.0.0.5", True),
        ("PACS", "192.168.7.200", True),
        ("PACS", "::ffff:10.0.0.5", True),  # IPv4-mapped, as a dual-stack socket reports it
        ("PACS", "10.0.0.6", False),
        ("PACS", "not-an-address", False),
        ("V6", "fd12::1", True),
        ("V6", "10.0.0.5", False),
        ("OTHER", "203.0.113.9", True),  # not pinned: only the AE allowlist applies
    ],
)
def test_peer_allowed(calling_ae: str, address: str, allowed: bool) -> None:
    assert peer_allowed(PINS, calling_ae, address) is allowed


def test_access_settings_resolve_paths(tmp_path: Path) -> None:
    settings = parse_settings(
        {
            "listener": {
                "allowed_calling_aets": ["PACS"],
                "allowed_peers": [{"ae_title": "PACS", "address": "10.0.0.0/8"}],
                "tls": {"certificate": "pki/server.pem", "private_key": "pki/server.key"},
            }
        },
        tmp_path,
    )
    assert settings.listener.allowed_peers == (AllowedPeer(ae_title="PACS", address="10.0.0.0/8"),)
    tls = settings.listener.tls
    assert tls is not None and tls.required and tls.ca_certificates is None
    assert tls.certificate == tmp_path / "pki" / "server.pem"


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        ({"allowed_peers": [{"ae_title": "PACS", "address": "pacs.local"}]}, "allowed_peers"),
        ({"allowed_peers": [{"ae_title": "PACS"}]}, "address"),
        (
            {
                "allowed_calling_aets": ["RIS"],
                "allowed_peers": [{"ae_title": "PACS", "address": "::1"}],
            },
            "not in allowed_calling_aets",
        ),
        ({"tls": {"certificate": "c", "private_key": "k", "required": False}}, "port is required"),
        ({"tls": {"certificate": "c", "private_key": "k", "port": 2762}}, "only used when"),
        ({"tls": {"certificate": "c", "private_key": "k", "verify": True}}, "listener.tls.verify"),
    ],
)
def test_bad_access_settings_name_the_key(listener: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_settings({"listener": listener}, Path("/"))


def test_destination_tls_resolves_paths_and_needs_key_with_certificate(tmp_path: Path) -> None:
    destination = {"ae_title": "PACS", "host": "pacs.example", "port": 2762}
    tls = {"ca_certificates": "pki/ca.pem", "certificate": "pki/me.pem", "private_key": "k.pem"}
    settings = parse_settings({"destinations": [{**destination, "tls": tls}]}, tmp_path)
    resolved = settings.destinations[0].tls
    assert resolved is not None and resolved.ca_certificates == tmp_path / "pki" / "ca.pem"
    assert resolved.private_key == tmp_path / "k.pem"
    lone = {"ca_certificates": "ca.pem", "certificate": "me.pem"}
    with pytest.raises(ConfigError, match="certificate and private_key go together"):
        parse_settings({"destinations": [{**destination, "tls": lone}]}, tmp_path)


def test_maximum_pdu_size_is_finite(tmp_path: Path) -> None:
    assert parse_settings({}, tmp_path).listener.maximum_pdu_size == 1024 * 1024
    with pytest.raises(ConfigError, match=r"listener\.maximum_pdu_size"):
        parse_settings({"listener": {"maximum_pdu_size": 0}}, tmp_path)
