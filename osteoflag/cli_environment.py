"""Environment variables for command-line options: ``OSTEOFLAG_<COMMAND>_<OPTION>``.

A service manager or a container sets options without editing a command line: ``--role`` of
``serve`` is ``OSTEOFLAG_SERVE_ROLE``, ``--called-aet`` of ``send`` is
``OSTEOFLAG_SEND_CALLED_AET``. A set variable becomes the option's default, so the command
line still wins (for a repeatable option, any value on the command line replaces the
variable's list); ``--help`` names each variable, and only the command being run reads its
variables. Flags take ``1``/``true``/``yes``/``on`` or
``0``/``false``/``no``/``off``, repeatable options a comma-separated list. ``--config`` keeps
its own variable, ``OSTEOFLAG_CONFIG``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

PREFIX: Final = "OSTEOFLAG_"
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})
#: Options that have a variable of their own, or none.
_SKIPPED: Final = frozenset({"help", "config"})


def variable_name(command: str, option: str) -> str:
    """``OSTEOFLAG_SEND_CALLED_AET`` for ``send``'s ``--called-aet``."""
    words = f"{command} {option.lstrip('-')}".upper().replace("-", "_").replace(" ", "_")
    return PREFIX + words


def _value(action: argparse.Action, text: str) -> Any:
    if action.type is None:
        return text
    convert = action.type
    if not callable(convert):  # argparse also accepts registered type names
        raise TypeError(f"option type {convert!r} cannot convert a variable")
    return convert(text)


def _converted(action: argparse.Action, raw: str) -> Any:
    """``raw`` as the value ``action`` would have stored, checked against its choices."""
    if action.nargs == 0:  # a flag (store_true, store_false, store_const)
        word = raw.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError("expected one of 1, true, yes, on, 0, false, no, off")
        return action.const if word in _TRUE else action.default
    if isinstance(action, argparse._AppendAction):  # argparse names it privately
        values = [_value(action, item.strip()) for item in raw.split(",") if item.strip()]
    elif action.nargs in ("+", "*") or isinstance(action.nargs, int):
        values = [_value(action, item) for item in raw.split()]
    else:
        values = [_value(action, raw)]
    if action.choices is not None:
        for value in values:
            if value not in action.choices:
                choices = ", ".join(str(choice) for choice in action.choices)
                raise ValueError(f"{value!r} is not one of {choices}")
    single = action.nargs is None and not isinstance(action, argparse._AppendAction)
    return values[0] if single else values


def _options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:  # the options, as argparse keeps them
        named = action.option_strings and action.dest not in _SKIPPED
        if named and action.help != argparse.SUPPRESS:
            yield action


def _variable(command: str, action: argparse.Action) -> str:
    return variable_name(command, max(action.option_strings, key=len))


def name_variables(parser: argparse.ArgumentParser, command: str) -> None:
    """Name its variable in the help of every option of ``command``'s ``parser``."""
    for action in _options(parser):
        name = _variable(command, action)
        action.help = f"{action.help} (env {name})" if action.help else f"env {name}"


def apply_environment(
    parser: argparse.ArgumentParser, command: str, environ: Mapping[str, str]
) -> Callable[[argparse.Namespace], None]:
    """Make each set variable of ``command`` its option's default (an unusable value is a
    usage error naming it), before the command line is parsed; return what completes the
    parsed arguments: a repeatable option takes its variable's list only when the command
    line gave it no value (argparse would add the command line's to a default list)."""
    repeatable: dict[str, Any] = {}
    for action in _options(parser):
        name = _variable(command, action)
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            value = _converted(action, raw)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            parser.error(f"{name}={raw!r}: {exc}")
        action.required = False
        if isinstance(action, argparse._AppendAction):  # argparse names it privately
            repeatable[action.dest] = value
        else:
            action.default = value

    def complete(args: argparse.Namespace) -> None:
        for dest, value in repeatable.items():
            if not getattr(args, dest, None):
                setattr(args, dest, value)

    return complete
