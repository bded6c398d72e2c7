"""The `bitnet` Typer app: wiring only. Each command lives in its own module.

A command's module is imported only when that command runs or its help is shown, so that
`bitnet --version` loads no command and a command never pays for another's imports (NumPy, Rich
tables, matplotlib, the converters); tests/test_cli.py keeps `import bitnet.cli.app` free of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

import typer
from typer.core import TyperGroup

import bitnet

#: command name -> "module:function" under bitnet.cli, in the order `bitnet --help` lists them.
#: A new command is one line here and one module beside this file.
COMMANDS: dict[str, str] = {
    "convert": "convert:convert",
    "inspect": "inspect:inspect",
    "dummy": "dummy:dummy",
    "run": "run:run",
    "chat": "chat:chat",
    "serve": "serve:serve",
    "bench": "bench:bench",
    "codegen": "codegen:codegen",
    "pull": "store:pull",
    "list": "store:list_",
    "rm": "store:rm",
}

#: Plain (click) help: it wraps whole paragraphs at the terminal width (80 columns at most)
#: and shows no type column; Rich's option tables squeeze the help text of a wide command
#: into a column a few words wide at 80 columns.
HELP_MARKUP = None


class _LazyCommands(Mapping[str, Any]):
    """COMMANDS as the group's command mapping: a module is imported on first access."""

    def __init__(self, table: Mapping[str, str]) -> None:
        self._table = table
        self._loaded: dict[str, Any] = {}  # name -> its click command

    def __getitem__(self, name: str) -> Any:
        if name not in self._loaded:
            module, function = self._table[name].split(":")
            fn = getattr(importlib.import_module(f"{__package__}.{module}"), function)
            one = typer.Typer(add_completion=False, rich_markup_mode=HELP_MARKUP)
            one.command(name)(fn)
            self._loaded[name] = typer.main.get_command(one)
        return self._loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)


class LazyGroup(TyperGroup):
    """The root group: its commands come from COMMANDS, loaded when used."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(COMMANDS)  # type: ignore[assignment]


app = typer.Typer(
    name="bitnet",
    cls=LazyGroup,
    help="Ternary (1.58-bit) LLMs on ordinary CPUs: convert, inspect, run, chat and benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=HELP_MARKUP,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from . import _output as out

        out.data(f"bitnet {bitnet.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Ternary (1.58-bit) LLMs on ordinary CPUs: convert, inspect, run, chat and benchmark."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
