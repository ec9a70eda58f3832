"""``osteoflag infer PATH... --json`` (README, Command line): the CLI's two entry points.

Kept free of heavy imports so that building the parser stays fast; the work is in
:mod:`osteoflag.inference.infer`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from osteoflag.config import Settings


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the ``infer`` sub-command."""
    parser.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument(
        "--bundle", type=Path, metavar="DIR", help="model bundle (default: [model] bundle)"
    )


def run_infer(args: argparse.Namespace, settings: Settings) -> int:
    """The ``infer`` command: 0 when every file was classified, 1 otherwise."""
    from osteoflag.inference.infer import infer_paths

    return infer_paths(args.paths, settings, bundle_path=args.bundle, as_json=args.json)
