"""``python -m osteoflag.training train|evaluate|recipes|card``: training commands, no config.

``make model`` uses this entry point so that rebuilding the bundle needs no daemon configuration;
``osteoflag train`` and ``osteoflag evaluate`` run the same handlers.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from osteoflag.errors import ConfigError, OsteoflagError
from osteoflag.training.commands import (
    add_card_arguments,
    add_evaluate_arguments,
    add_recipes_arguments,
    add_train_arguments,
    run_card,
    run_evaluate,
    run_recipes,
    run_train,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, map errors to the CLI's exit codes (2 usage, 1 failure)."""
    parser = argparse.ArgumentParser(prog="python -m osteoflag.training")
    commands = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(commands.add_parser("train", help="build a model bundle"))
    evaluate = commands.add_parser("evaluate", help="score a bundle on a labelled folder")
    add_evaluate_arguments(evaluate)
    add_recipes_arguments(
        commands.add_parser("recipes", help="frozen-feature experiments (model card table)")
    )
    add_card_arguments(commands.add_parser("card", help="re-render a bundle's model card"))
    args = parser.parse_args(argv)
    if args.command == "evaluate" and args.bundle is None:
        parser.error("evaluate needs --bundle here (no config file is read)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    handler = {
        "train": run_train,
        "evaluate": run_evaluate,
        "recipes": run_recipes,
        "card": run_card,
    }[args.command]
    try:
        return handler(args, None)
    except ConfigError as exc:  # usage, a missing or bad bundle: as ``osteoflag`` does
        print(f"osteoflag: {exc}", file=sys.stderr)
        return 2
    except OsteoflagError as exc:
        print(f"osteoflag: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
