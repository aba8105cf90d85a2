"""The manners of every command: ``--verbose`` and ``--quiet`` before or after the command, help
text that wraps to the terminal, flags without a value placeholder and a plain usage line."""

from __future__ import annotations

import inspect
import re
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption

from autoquant.cli._console import setup_logging

VerboseOpt = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Show debug messages, dependencies' warnings and error tracebacks."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Show warnings and errors only.")]


def unwrap(text: str | None) -> str | None:
    """A docstring's paragraphs with their hard line breaks joined, so that help wraps to the terminal."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _plain_flags(params: list[Any]) -> list[Any]:
    """Flags take no value: show no ``<bool>`` after them."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


def _set_logging(ctx: Any, param: Any, value: bool) -> bool:
    """``--verbose`` or ``--quiet`` after the command: set the logging up again."""
    if value and not ctx.resilient_parsing:
        setup_logging(verbose=param.name == "verbose", quiet=param.name == "quiet")
    return value


def _logging_options() -> list[Any]:
    """The group's ``--verbose`` and ``--quiet``, built by typer, for a command's own use."""
    flags = typer.Typer(add_completion=False)

    @flags.command()
    def _flags(verbose: VerboseOpt = False, quiet: QuietOpt = False) -> None:  # pragma: no cover
        pass

    options = typer.main.get_command(flags).params
    for option in options:
        option.expose_value = False
        option.callback = _set_logging
    return options


class CliGroup(TyperGroup):
    """The ``autoquant`` group: its help unwrapped and its flags plain."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=unwrap(help), **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))


class CliCommand(TyperCommand):
    """A command that also takes ``--verbose`` and ``--quiet``, with help that wraps to the
    terminal, plain flags and ``CONFIG`` (not ``{config}``) in its usage line."""

    def __init__(self, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, help=unwrap(help), **kwargs)
        self.params.extend(_logging_options())

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_flags(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [re.sub(r"^\{(.+)\}$", r"\1", piece) for piece in super().collect_usage_pieces(ctx)]
