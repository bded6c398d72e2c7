"""The Python API (`bitnet.load`): llama-cpp-python's bindings over our shared llama.cpp build.

Greedy generation must give the very tokens `bitnet run --temp 0` gives; streaming, chat through
the model's template, tokenize/detokenize, stop strings, closing, bad input; and the README's
Python examples run as written.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from native_helpers import api_available, binary
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools.dummy import make_dummy
from bitnet.tools.errors import InputNotFoundError, UsageError

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Once upon a time there was"


def test_import_bitnet_stays_light():
    code = (
        "import sys, bitnet; heavy = [m for m in ('numpy', 'llama_cpp', 'bitnet.tools.llm', "
        "'typer') if m in sys.modules]; assert not heavy, heavy; assert callable(bitnet.load)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- with the native build ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with an untied head (seed 2): its sampled text varies more than the tied
    preset's, whose greedy output is one repeated token."""
    api_available()
    tmp = tmp_path_factory.mktemp("llm")
    ckpt = make_dummy(tmp / "hf", "tiny", "packed", 2, tie_embeddings=False)
    out = tmp / "tiny.gguf"
    res = CliRunner().invoke(app, ["convert", str(ckpt), "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="module")
def llm(tiny_gguf: Path):
    import bitnet

    with bitnet.load(tiny_gguf, n_threads=2, n_ctx=256) as model:
        yield model


def _as_printed(text: str) -> str:
    """`text` as llama-completion shows it: it prints each piece with printf("%s"), so a NUL
    byte (random models sample the byte token 0x00) ends that piece."""
    return text.replace("\0", "")


def _bitnet_run(gguf: Path, prompt: str, n: int, *sampling: str) -> str:
    """What `bitnet run` prints, less the blank lines llama-completion ends with."""
    binary("llama-completion")
    cmd = [sys.executable, "-m", "bitnet.cli.app", "run", "-m", str(gguf), "-p", prompt]
    cmd += ["-n", str(n), "-t", "2", "-c", "256", "--no-display-prompt", *sampling]
    res = subprocess.run(cmd, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    text = res.stdout.decode("utf-8", "replace")
    assert text.endswith("\n\n"), repr(text)
    return text[:-2]


@pytest.mark.native
@pytest.mark.parametrize("prompt", [PROMPT, "The"])
def test_greedy_tokens_equal_bitnet_run(llm, tiny_gguf, prompt):
    n = 24
    stream = llm.generate(prompt, max_tokens=n, temperature=0, stream=True)
    text = "".join(stream)
    assert stream.stats.completion_tokens == len(stream.tokens) > 0
    assert llm.detokenize(stream.tokens) == text
    assert _as_printed(text) == _bitnet_run(tiny_gguf, prompt, n, "--temp", "0")
    # the same tokens again: nothing left over from the previous call
    assert llm.generate(prompt, max_tokens=n, temperature=0) == text


@pytest.mark.native
@pytest.mark.parametrize("seed", [1, 2])
def test_sampling_with_a_seed_equals_bitnet_run(llm, tiny_gguf, seed):
    """The same sampler chain and seed: `--temp 1 --seed S` picks the same tokens."""
    text = llm.generate(PROMPT, max_tokens=24, temperature=1.0, seed=seed)
    printed = _bitnet_run(tiny_gguf, PROMPT, 24, "--temp", "1", "--seed", str(seed))
    assert _as_printed(text) == printed


@pytest.mark.native
def test_stream_yields_pieces_and_counts(llm):
    stream = llm.generate(PROMPT, max_tokens=10, temperature=0, stream=True)
    pieces = list(stream)
    assert len(pieces) > 1 and all(isinstance(p, str) for p in pieces)
    assert stream.stats.prompt_tokens == len(llm.tokenize(PROMPT))
    assert stream.stats.finish_reason in ("length", "stop")
    if stream.stats.finish_reason == "length":
        assert stream.stats.completion_tokens == 10
    assert llm.last is stream.stats


@pytest.mark.native
def test_tokenize_detokenize_round_trip(llm):
    ids = llm.tokenize("Hello world")
    assert ids[0] == llm.tokenize("", add_bos=True)[0]  # BOS first
    assert llm.tokenize("Hello world", add_bos=False) == ids[1:]
    assert llm.detokenize(ids) == "Hello world"
    eot = llm.tokenize("<|eot_id|>", add_bos=False)
    assert len(eot) == 1 and llm.is_end_of_generation(eot[0])
    assert len(llm.tokenize("<|eot_id|>", add_bos=False, special=False)) > 1


@pytest.mark.native
def test_chat_uses_the_model_template(llm):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]
    text = llm.apply_chat_template(messages)
    assert text == "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi there<|eot_id|>Assistant: "
    ids = llm.chat_tokens(messages)
    assert ids == llm.tokenize(text, add_bos=False)  # one BOS, from the template
    reply = llm.chat(messages, max_tokens=12, temperature=0)
    assert isinstance(reply, str)
    assert reply == llm.generate(ids, max_tokens=12, temperature=0)
    assert llm.last.prompt_tokens == len(ids)


@pytest.mark.native
def test_stop_strings_cut_the_text(llm):
    sampled = {"max_tokens": 24, "temperature": 0.9, "seed": 3}
    full = llm.generate(PROMPT, **sampled)
    assert len(full) >= 8, full
    stop = full[len(full) // 2 : len(full) // 2 + 3]  # any text of the reply
    cut = llm.generate(PROMPT, stop=[stop], **sampled)
    assert cut == full[: full.index(stop)]
    assert llm.last.finish_reason == "stop"


@pytest.mark.native
def test_sampling_with_a_seed_repeats(llm):
    a = llm.generate(PROMPT, max_tokens=12, temperature=0.9, seed=7)
    b = llm.generate(PROMPT, max_tokens=12, temperature=0.9, seed=7)
    assert a == b


@pytest.mark.native
def test_a_new_generation_ends_an_unfinished_stream(llm):
    first = llm.generate(PROMPT, max_tokens=20, temperature=0, stream=True)
    next(first)
    second = llm.generate(PROMPT, max_tokens=20, temperature=0)
    assert first.stats.finish_reason == "interrupted"
    assert second == llm.generate(PROMPT, max_tokens=20, temperature=0)


@pytest.mark.native
def test_prompt_longer_than_the_context_is_refused(llm):
    with pytest.raises(UsageError, match="context holds 256"):
        llm.generate(list(range(1, 300)), max_tokens=4)


@pytest.mark.native
def test_max_tokens_is_clamped_to_the_context(llm):
    ids = llm.tokenize(PROMPT) * 8  # 8 copies: 136 of the 256 tokens
    assert len(ids) < 200
    llm.generate(ids, max_tokens=10_000, temperature=0)
    assert llm.last.completion_tokens <= 256 - len(ids)
    if llm.last.finish_reason == "length":
        assert llm.last.completion_tokens == 256 - len(ids)


@pytest.mark.native
def test_context_manager_frees_the_model(tiny_gguf):
    import bitnet

    with bitnet.load(tiny_gguf, n_threads=1, n_ctx=64) as model:
        assert model.generate("Hi", max_tokens=2, temperature=0) is not None
    assert model.closed
    with pytest.raises(UsageError, match="closed"):
        model.generate("Hi", max_tokens=2)
    model.close()  # twice is fine


def test_missing_model_is_one_clear_error(tmp_path):
    import bitnet

    with pytest.raises(InputNotFoundError, match="does not exist"):
        bitnet.load(tmp_path / "nope.gguf")


# --- the README's examples ----------------------------------------------------------------------


def _readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_python_examples():
    assert len(_readme_python_blocks()) >= 2


@pytest.mark.native
@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_python_example_runs(tiny_gguf, tmp_path, index):
    """Each ```python block of the README's Python API section, run with model.gguf = tiny."""
    (tmp_path / "model.gguf").symlink_to(tiny_gguf)
    code = _readme_python_blocks()[index]
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]


def test_bindings_install_compiles_nothing(tmp_path):
    from bitnet.tools import bindings

    cmd, env = bindings.install_command(tmp_path / "llama_cpp_python-0.3.36.tar.gz")
    assert "--no-deps" in cmd and cmd[-1].endswith(".tar.gz")
    assert "-DLLAMA_BUILD=OFF" in env["CMAKE_ARGS"]


def test_library_dir_names_the_fix_when_there_is_no_build(tmp_path, monkeypatch):
    from bitnet.tools import bindings
    from bitnet.tools.errors import BuildError

    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.delenv("BITNET_BUILD_DIR", raising=False)
    monkeypatch.setenv("BITNET_CACHE", str(tmp_path))
    with pytest.raises(BuildError, match="libllama.so") as ei:
        bindings.library_dir()
    assert "setup_env.py" in ei.value.hint


@pytest.mark.native
def test_default_threads_are_the_cached_choice_never_measured(tiny_gguf, fake_threads):
    import bitnet
    from bitnet.tools import threads

    with bitnet.load(tiny_gguf, n_ctx=64) as model:  # nothing cached: the physical cores
        assert (model.n_threads, model.n_threads_batch) == (2, 2)
    assert not fake_threads
    threads.choose_threads(tiny_gguf)  # what `bitnet run/chat/serve` leave in the cache
    measured = len(fake_threads)
    with bitnet.load(tiny_gguf, n_ctx=64) as model:  # 1 decode thread, every core for prompts
        assert (model.n_threads, model.n_threads_batch) == (1, 2)
    with bitnet.load(tiny_gguf, n_threads=2, n_ctx=64) as model:  # explicit: kept, as before
        assert (model.n_threads, model.n_threads_batch) == (2, 2)
    assert len(fake_threads) == measured
