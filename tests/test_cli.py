"""The CLI frame: --help, --version, the error table and the one exit path."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

import bitnet
from bitnet.cli import _errors
from bitnet.cli.app import app
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
