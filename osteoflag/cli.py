"""The ``osteoflag`` command line (README, Command line): a thin layer over library code.

Exit status: 0 success, 2 bad usage or bad config (one line on stderr), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from osteoflag import __version__
from osteoflag.cli_environment import apply_environment, name_variables
from osteoflag.config import CONFIG_ENV, DEFAULT_CONFIG, Settings, config_path, load_settings
from osteoflag.drift.commands import add_reference_arguments, run_reference
from osteoflag.errors import ConfigError, OsteoflagError, TransientError
from osteoflag.inference.commands import add_infer_arguments, run_infer
from osteoflag.inference.ood_cli import add_ood_arguments, run_ood_reference
from osteoflag.inference.quantize_cli import add_quantize_arguments, run_quantize
from osteoflag.logs import configure_logging
from osteoflag.pacs.tls_options import add_tls_arguments, peer_tls
from osteoflag.settings_fields import AETitle
from osteoflag.training.commands import (
    add_evaluate_arguments,
    add_train_arguments,
    run_evaluate,
    run_train,
)
from osteoflag.validation.commands import (
    add_adapt_arguments,
    add_validate_arguments,
    run_adapt,
    run_validate,
)

Command = Callable[[argparse.Namespace, Settings], int]


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.daemon.roles import Role
    from osteoflag.daemon.service import Daemon

    with _reaching(settings.storage.database_url):
        return Daemon(settings, Role(args.role)).run()


@contextmanager
def _reaching(database_url: str) -> Iterator[None]:
    """One line instead of SQLAlchemy's traceback when the database cannot be reached (server
    down, bad password): the URL without its password, and the driver's first line."""
    try:
        yield
    except OperationalError as exc:
        url = make_url(database_url)
        reason = str(exc.orig or exc).strip().splitlines()[0]
        if url.password:
            reason = reason.replace(str(url.password), "***")
        shown = url.render_as_string(hide_password=True)
        raise TransientError(f"database {shown} cannot be reached: {reason}") from exc


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.db import queue
    from osteoflag.db.engine import make_engine, migrate, session_factory

    with _reaching(settings.storage.database_url):
        engine = make_engine(settings.storage.database_url)
        migrate(engine)
        counts = queue.counts(session_factory(engine))
    if args.json:
        print(json.dumps(counts))
    else:
        for table, states in counts.items():
            print(f"{table}: " + ", ".join(f"{state}={n}" for state, n in states.items()))
    return 0


def _echo(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.pacs.scu import Peer, send_c_echo

    peer = Peer(args.host, args.port, args.called_aet, tls=peer_tls(args))
    code = send_c_echo(peer, settings.listener.ae_title)
    print(f"C-ECHO {args.called_aet}@{args.host}:{args.port}: status 0x{code:04X}")
    return 0 if code == 0 else 1


def _send(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.files import walk_files
    from osteoflag.pacs.scu import Peer, send_c_store

    files = list(walk_files(args.paths))
    if not files:
        named = ", ".join(str(path) for path in args.paths)
        raise ConfigError(f"send: no files found under {named} (hidden ones are left out)")
    peer = Peer(args.host, args.port, args.called_aet, tls=peer_tls(args))
    failed = 0
    for outcome in send_c_store(files, peer, settings.listener.ae_title):
        if not outcome.readable:
            failed += 1
            print(f"osteoflag: {outcome.error}", file=sys.stderr)
        elif outcome.ok:
            print(f"{outcome.path}: status 0x{outcome.status:04X}")
        else:
            failed += 1
            code = "none" if outcome.status is None else f"0x{outcome.status:04X}"
            print(f"{outcome.path}: FAILED status {code} {outcome.error or ''}".rstrip())
    return 1 if failed else 0


def _show_sr(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.pacs.show import show_sr

    print(show_sr(args.file))
    return 0


def _add_maps(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.inference.bundle_out import check_apart
    from osteoflag.inference.maps import add_maps_to_bundle

    check_apart(args.bundle, args.out)
    manifest = add_maps_to_bundle(args.bundle, args.out)
    print(json.dumps({"bundle": str(args.out), "backbone": manifest.files[manifest.backbone.file]}))
    return 0


def _add_localiser(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.training.add_localiser import add_localiser_to_bundle

    figures = add_localiser_to_bundle(
        args.bundle,
        args.boxes,
        args.out,
        args.tiles,
        args.context,
        other_tiles=args.other_tiles,
        mirror=args.mirror,
    )
    print(json.dumps({"bundle": str(args.out), "cross_validation": figures}))
    return 0


def _requeue(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.db import outbound, queue
    from osteoflag.db.engine import make_engine, migrate, session_factory

    with _reaching(settings.storage.database_url):
        engine = make_engine(settings.storage.database_url)
        migrate(engine)
        sessions = session_factory(engine)
        instances = queue.requeue_failed(sessions)
        objects = outbound.requeue_failed(sessions)
    print(json.dumps({"instances": instances, "outbound": objects}))
    return 0


def _feedback_export(args: argparse.Namespace, settings: Settings) -> int:
    from osteoflag.db.engine import make_engine, migrate, session_factory
    from osteoflag.validation.export import export_feedback

    with _reaching(settings.storage.database_url):
        engine = make_engine(settings.storage.database_url)
        migrate(engine)
        counts = export_feedback(session_factory(engine), args.out)
    print(json.dumps({"out": str(args.out), **counts}))
    return 0


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port {value} is not in 1..65535")
    return value


def _ae_title(text: str) -> str:
    """An AE title as the config accepts one (PS3.5 AE): pynetdicom would raise at associating."""
    try:
        return TypeAdapter(AETitle).validate_python(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an AE title (1-16 characters, no backslash or control character, "
            "not only spaces)"
        ) from exc


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--role",
        choices=["listener", "worker", "sender", "all"],
        default="all",
        help="parts this process runs (default all; see README, Deployment)",
    )


def _status_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object")


def _echo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("host")
    parser.add_argument("port", type=_port)
    parser.add_argument(
        "--called-aet", default="ANY-SCP", type=_ae_title, help="peer AE title (default ANY-SCP)"
    )
    add_tls_arguments(parser)


def _send_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", type=Path, metavar="FILE_OR_DIR")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=_port)
    parser.add_argument(
        "--called-aet", default="ANY-SCP", type=_ae_title, help="peer AE title (default ANY-SCP)"
    )
    add_tls_arguments(parser)


def _feedback_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="new folder: images/ + labels.csv"
    )


def _add_maps_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="bundle")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="new bundle")


def _add_localiser_arguments(parser: argparse.ArgumentParser) -> None:
    _add_maps_arguments(parser)
    parser.add_argument(
        "--boxes", type=Path, required=True, metavar="DIR", help="images/, labels/, images.csv"
    )
    parser.add_argument(
        "--tiles",
        type=int,
        metavar="N",
        help="backbone tiles per side (default: a grid of about 28 cells a side); "
        "each flagged image costs N*N backbone passes",
    )
    parser.add_argument(
        "--context",
        type=int,
        default=0,
        metavar="K",
        help="each cell also sees the mean of the KxK cells around it (odd; default 0: none)",
    )
    parser.add_argument(
        "--other-tiles",
        type=int,
        action="append",
        default=[],
        metavar="N",
        help="also average the map of N tiles per side, with its own cell model (repeatable); "
        "each flagged image costs N*N more passes",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="also average every tiling's map of the mirrored image (twice the passes)",
    )


def _show_sr_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    """For a command that reads nothing but its configuration."""


Arguments = Callable[[argparse.ArgumentParser], None]

#: (name, help, arguments, handler) of each command, in the order ``--help`` lists them; the
#: library commands' arguments live beside the code they run.
COMMANDS: tuple[tuple[str, str, Arguments, Command], ...] = (
    ("serve", "run the daemon", _serve_arguments, _serve),
    ("status", "queue counts per state", _status_arguments, _status),
    ("echo", "C-ECHO a DICOM peer", _echo_arguments, _echo),
    ("send", "C-STORE files to a DICOM peer", _send_arguments, _send),
    ("infer", "classify local image files", add_infer_arguments, run_infer),
    ("evaluate", "score a bundle on a labelled folder", add_evaluate_arguments, run_evaluate),
    (
        "validate",
        "score a bundle on a site's labelled images, with a report",
        add_validate_arguments,
        run_validate,
    ),
    (
        "drift-reference",
        "give a bundle the reference drift watch compares against",
        add_reference_arguments,
        run_reference,
    ),
    (
        "ood-reference",
        "give a bundle its out-of-distribution guard (images far from its training ones)",
        add_ood_arguments,
        run_ood_reference,
    ),
    (
        "adapt",
        "refit a bundle's head on a site's labelled images",
        add_adapt_arguments,
        run_adapt,
    ),
    ("train", "build a model bundle (needs the train extra)", add_train_arguments, run_train),
    (
        "quantize",
        "INT8 backbone bundle, kept only if as good",
        add_quantize_arguments,
        run_quantize,
    ),
    (
        "add-maps",
        "copy a bundle, adding the spatial map output that regions need (needs onnx)",
        _add_maps_arguments,
        _add_maps,
    ),
    (
        "add-localiser",
        "copy a bundle, adding a localiser fitted on fracture boxes (needs the train extra)",
        _add_localiser_arguments,
        _add_localiser,
    ),
    ("show-sr", "print an SR as a tree", _show_sr_arguments, _show_sr),
    ("requeue", "retry failed instances and failed deliveries", _no_arguments, _requeue),
)

#: The ``feedback`` command's subcommands, in the same form.
FEEDBACK_COMMANDS: tuple[tuple[str, str, Arguments, Command], ...] = (
    (
        "export",
        "the labelled cases as a set validate and adapt read",
        _feedback_export_arguments,
        _feedback_export,
    ),
)


class _Subcommands(Protocol):
    """What ``add_subparsers`` returns, as far as :func:`_add_commands` uses it (argparse
    names its class only privately)."""

    def add_parser(
        self, name: str, *, parents: Sequence[argparse.ArgumentParser], help: str
    ) -> argparse.ArgumentParser: ...


def _add_commands(
    commands: _Subcommands,
    table: tuple[tuple[str, str, Arguments, Command], ...],
    common: argparse.ArgumentParser,
    group: str = "",
) -> dict[str, argparse.ArgumentParser]:
    parsers = {}
    for name, summary, arguments, handler in table:
        parser = commands.add_parser(name, parents=[common], help=summary)
        arguments(parser)
        command = f"{group} {name}".strip()
        name_variables(parser, command)
        parser.set_defaults(handler=handler)
        parsers[command] = parser
    return parsers


def _parsers() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The argument parser, and each command's own (``"feedback export"`` for a subcommand)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (env {CONFIG_ENV}; default {DEFAULT_CONFIG})",
    )
    parser = argparse.ArgumentParser(
        prog="osteoflag", description="Research-only fracture flagging beside a PACS."
    )
    parser.add_argument("--version", action="version", version=f"osteoflag {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = _add_commands(commands, COMMANDS, common)
    feedback = commands.add_parser("feedback", help="radiologists' readings of results")
    feedback_commands = feedback.add_subparsers(dest="feedback_command", required=True)
    parsers |= _add_commands(feedback_commands, FEEDBACK_COMMANDS, common, "feedback")
    return parser, parsers


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; every command takes ``--config``."""
    return _parsers()[0]


def _command(argv: Sequence[str], known: Collection[str]) -> str | None:
    """The command ``argv`` runs (its leading words), if it names one: no top-level option
    takes a value, so the words are the first arguments that are not options."""
    words = [word for word in argv if not word.startswith("-")]
    for count in (2, 1):
        command = " ".join(words[:count])
        if command in known:
            return command
    return None


def parse_arguments(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """``argv`` (the process's by default) parsed, each option of the command it runs that
    the command line leaves out taken from its ``OSTEOFLAG_<COMMAND>_<OPTION>`` variable in
    ``environ`` (the process's by default)."""
    argv = sys.argv[1:] if argv is None else argv
    parser, parsers = _parsers()
    command = _command(argv, parsers)
    if command is None:
        return parser.parse_args(argv)
    complete = apply_environment(
        parsers[command], command, os.environ if environ is None else environ
    )
    args = parser.parse_args(argv)
    complete(args)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, load the one settings object, run the command, map errors to exit codes."""
    args = parse_arguments(argv)
    try:
        settings = load_settings(config_path(args.config))
        configure_logging(settings.log_level)
        handler: Command = args.handler
        return handler(args, settings)
    except ConfigError as exc:
        print(f"osteoflag: {exc}", file=sys.stderr)
        return 2
    except OsteoflagError as exc:
        logging.getLogger(__name__).error("%s", exc, extra={"action": args.command})
        print(f"osteoflag: {exc}", file=sys.stderr)
        return 1
