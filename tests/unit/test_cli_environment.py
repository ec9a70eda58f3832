"""Every command-line option has an ``OSTEOFLAG_<COMMAND>_<OPTION>`` variable, shown in
``--help``; a set variable is the default and the command line still wins."""

from __future__ import annotations

import pytest

from osteoflag.cli import COMMANDS, build_parser, main, parse_arguments
from osteoflag.cli_environment import variable_name

SEND = ["send", "study", "--host", "pacs.example", "--port", "104"]
LOCALISER = ["add-localiser", "--bundle", "b", "--boxes", "x", "--out", "o"]


def test_a_variable_is_the_default_and_the_command_line_wins() -> None:
    environ = {"OSTEOFLAG_SEND_CALLED_AET": "PACS", "OSTEOFLAG_SERVE_ROLE": "worker"}
    assert parse_arguments(SEND, environ).called_aet == "PACS"
    assert parse_arguments([*SEND, "--called-aet", "OTHER"], environ).called_aet == "OTHER"
    assert parse_arguments(["serve"], environ).role == "worker"
    assert parse_arguments(SEND, {}).called_aet == "ANY-SCP"


def test_variables_satisfy_required_options_and_are_converted() -> None:
    environ = {"OSTEOFLAG_SEND_HOST": "pacs.example", "OSTEOFLAG_SEND_PORT": "4242"}
    args = parse_arguments(["send", "study"], environ)
    assert (args.host, args.port) == ("pacs.example", 4242)


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("on", True), ("false", False)])
def test_a_flag_takes_a_yes_or_a_no(text: str, expected: bool) -> None:
    assert parse_arguments(["status"], {"OSTEOFLAG_STATUS_JSON": text}).json is expected


def test_a_repeatable_option_takes_a_list_the_command_line_replaces() -> None:
    environ = {"OSTEOFLAG_ADD_LOCALISER_OTHER_TILES": "2, 4"}
    assert parse_arguments(LOCALISER, environ).other_tiles == [2, 4]
    assert parse_arguments([*LOCALISER, "--other-tiles", "7"], environ).other_tiles == [7]


def test_a_subcommand_reads_its_own_variables() -> None:
    environ = {"OSTEOFLAG_FEEDBACK_EXPORT_OUT": "/srv/export"}
    assert str(parse_arguments(["feedback", "export"], environ).out) == "/srv/export"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("OSTEOFLAG_SERVE_ROLE", "everything", "is not one of listener, worker, sender, all"),
        ("OSTEOFLAG_SERVE_ROLE", "", "is not one of"),
        ("OSTEOFLAG_STATUS_JSON", "maybe", "expected one of 1, true"),
    ],
)
def test_an_unusable_value_is_bad_usage_naming_the_variable(
    name: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    command = name.removeprefix("OSTEOFLAG_").split("_")[0].lower()
    with pytest.raises(SystemExit) as exit_:
        parse_arguments([command], {name: value})
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert name in error and says in error


def test_only_the_command_being_run_reads_its_variables() -> None:
    environ = {"OSTEOFLAG_SERVE_ROLE": "nobody", "OSTEOFLAG_SEND_PORT": "http"}
    assert parse_arguments(["status"], environ).command == "status"


def test_every_option_of_every_command_names_its_variable_in_help() -> None:
    parser = build_parser()
    commands = next(
        action for action in parser._actions if action.dest == "command"
    ).choices  # the subcommands' parsers, as argparse keeps them
    assert isinstance(commands, dict)
    for name, *_ in COMMANDS:
        command = commands[name]
        for action in command._actions:
            if action.option_strings and action.dest not in {"help", "config"}:
                expected = variable_name(name, max(action.option_strings, key=len))
                assert action.help is not None and expected in action.help, (name, action.dest)


def test_the_command_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OSTEOFLAG_SERVE_ROLE", "nobody")
    with pytest.raises(SystemExit) as exit_:
        main(["serve"])
    assert exit_.value.code == 2
    assert "OSTEOFLAG_SERVE_ROLE='nobody'" in capsys.readouterr().err.splitlines()[-1]
