"""The `bitnet` Typer app: wiring only. Each command lives in its own module."""

from __future__ import annotations

import typer

import bitnet

from . import bench, codegen, convert, dummy, inspect, run, serve

app = typer.Typer(
    name="bitnet",
    help="Ternary (1.58-bit) LLMs on ordinary CPUs: convert, inspect, run and benchmark.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
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
    """Ternary (1.58-bit) LLMs on ordinary CPUs: convert, inspect, run and benchmark."""


# --- commands (one module each) ---------------------------------------------------------------
app.command("convert")(convert.convert)
app.command("inspect")(inspect.inspect)
app.command("dummy")(dummy.dummy)
app.command("run")(run.run)
app.command("bench")(bench.bench)
app.command("codegen")(codegen.codegen)
app.command("serve")(serve.serve)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
