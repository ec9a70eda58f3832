"""``--tls-*`` options of ``osteoflag echo`` and ``osteoflag send``: DICOM TLS to the peer.

Kept free of pynetdicom imports so that building the CLI parser stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import ValidationError

from osteoflag.destination_settings import DestinationTLS
from osteoflag.errors import ConfigError


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tls-ca`` turns TLS on; ``--tls-cert`` and ``--tls-key`` present our certificate."""
    group = parser.add_argument_group("DICOM TLS")
    group.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="CA certificates to verify the peer; enables TLS"
    )
    group.add_argument("--tls-cert", type=Path, metavar="PEM", help="our client certificate")
    group.add_argument("--tls-key", type=Path, metavar="PEM", help="the key of --tls-cert")


def peer_tls(args: argparse.Namespace) -> DestinationTLS | None:
    """The TLS settings the options ask for, or None for plain DICOM."""
    if args.tls_ca is None:
        if args.tls_cert is not None or args.tls_key is not None:
            raise ConfigError("--tls-cert and --tls-key need --tls-ca")
        return None
    try:
        return DestinationTLS(
            ca_certificates=args.tls_ca, certificate=args.tls_cert, private_key=args.tls_key
        )
    except ValidationError as exc:
        raise ConfigError("--tls-cert and --tls-key go together") from exc
