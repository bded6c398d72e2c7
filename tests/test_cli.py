"""The CLI frame: --help, --version, the error table and the one exit path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import bitnet
from bitnet.cli import _errors
from bitnet.cli.app import COMMANDS, app
from bitnet.tools import errors as E

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"bitnet {bitnet.__version__}"


def test_help_lists_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Usage" in result.stdout


def test_every_error_class_has_a_distinct_exit_code() -> None:
    classes = [c for c in vars(E).values() if isinstance(c, type) and issubclass(c, E.BitnetError)]
    for cls in classes:
        code, _ = _errors.exit_code_for(cls("x"))
        assert code != 0, cls
    leaf = {c: _errors.ERROR_TABLE[c][0] for c in _errors.ERROR_TABLE if c is not E.BitnetError}
    assert len(set(leaf.values())) == len(leaf), "two error classes share an exit code"


def _raiser(exc: Exception):
    @_errors.handle_errors
    def cmd() -> None:
        raise exc

    return cmd


def test_handle_errors_prints_one_line_and_hint(capsys, monkeypatch) -> None:
    monkeypatch.delenv("BITNET_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as info:
        _raiser(E.ShapeError("tensor blk.0.attn_q.weight cannot be I2_S", hint="use tq2_0"))()
    assert info.value.exit_code == _errors.ERROR_TABLE[E.ShapeError][0]
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: tensor blk.0.attn_q.weight cannot be I2_S",
        "try: use tq2_0",
    ]
    assert "Traceback" not in err


def test_debug_shows_traceback(capsys, monkeypatch) -> None:
    monkeypatch.setenv("BITNET_DEBUG", "1")
    with pytest.raises(typer.Exit):
        _raiser(E.CorruptFileError("bad file"))()
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(("debug", "expected"), [(None, "1"), ("0", "1"), ("1", None)])
def test_llama_env_backtrace_only_with_debug(monkeypatch, debug, expected) -> None:
    from bitnet.tools.runtime import llama_env

    monkeypatch.delenv("GGML_NO_BACKTRACE", raising=False)
    if debug is None:
        monkeypatch.delenv("BITNET_DEBUG", raising=False)
    else:
        monkeypatch.setenv("BITNET_DEBUG", debug)
    assert llama_env().get("GGML_NO_BACKTRACE") == expected


def test_unknown_exceptions_keep_their_traceback() -> None:
    with pytest.raises(ZeroDivisionError):
        _raiser(ZeroDivisionError("bug"))()


# --- start-up cost and help text ------------------------------------------------------------------

#: Modules `bitnet --version` must not import: each costs tens of milliseconds at start-up and
#: belongs to the commands that use it.
HEAVY = ("numpy", "rich", "rich.table", "matplotlib", "gguf", "jinja2", "tokenizers",
         "bitnet.tools.convert", "bitnet.tools.gguf", "bitnet.tools.bench")  # fmt: skip


def _heavy_modules_after(code: str) -> list[str]:
    probe = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1].split()[1:]


def test_importing_the_app_loads_no_heavy_module() -> None:
    assert _heavy_modules_after("import bitnet.cli.app") == []


def test_version_loads_no_heavy_module() -> None:
    code = (
        "import sys\nsys.argv = ['bitnet', '--version']\nimport bitnet.cli.app as a\n"
        "try:\n    a.main()\nexcept SystemExit:\n    pass"
    )
    assert _heavy_modules_after(code) == []


def test_every_command_is_wired() -> None:
    result = runner.invoke(app, ["--help"])
    listed = [ln.split()[0] for ln in result.stdout.split("Commands:")[1].splitlines() if ln]
    assert listed == list(COMMANDS)


WIDTH = 80


def _help(args: list[str]) -> str:
    result = runner.invoke(app, [*args, "--help"], terminal_width=WIDTH)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_reads_cleanly_at_80_columns(command: str) -> None:
    text = _help([command] if command else [])
    lines = text.splitlines()
    assert all(len(ln) <= WIDTH for ln in lines), max(lines, key=len)
    assert "<bool>" not in text
    assert not any(ln.rstrip().endswith("...") and "Usage" not in ln for ln in lines), text
    # Paragraphs are wrapped greedily, never where the docstring happened to break a line:
    # a line is followed by a continuation only if the continuation's first word does not fit.
    in_description = True  # the text between the usage line and the first section
    for a, b in zip(lines, lines[1:], strict=False):
        if b.endswith(":") and not b.startswith(" "):
            in_description = False
        word = b.split()[0] if b.strip() else ""
        if not a.strip() or not word or word.startswith("-"):
            continue
        if a.lstrip().startswith("-") and "  " not in a.strip():
            continue  # a long option name alone on its line; its help starts below it
        indent = len(b) - len(b.lstrip())
        if (in_description and indent == 2) or indent > 2:
            assert len(a) + 1 + len(word) > WIDTH - 2, f"early wrap:\n{a}\n{b}"
