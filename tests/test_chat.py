"""`bitnet chat`: the session logic (history in the context, commands) and the terminal, through a
pseudo-terminal (pexpect): streamed replies, /reset, /system, /save, Ctrl-C mid-reply, Ctrl-D."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from native_helpers import api_available
from typer.testing import CliRunner

from bitnet.cli.app import app
from bitnet.tools.chat import ChatSession, help_lines, parse_command
from bitnet.tools.errors import UsageError

#: The input prompt as the terminal shows it: at the start of a line.
PROMPT = r"\r\n> "
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def test_parse_command():
    assert parse_command("hello") is None
    assert parse_command("//not a command") is None
    assert parse_command("/system  Be brief. ").arg == "Be brief."
    assert parse_command("/QUIT").name == "exit"
    with pytest.raises(UsageError, match="unknown command /nope"):
        parse_command("/nope")
    assert any("/save FILE" in h for h in help_lines())


# --- with the native build ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_gguf(tiny_packed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    api_available()
    out = tmp_path_factory.mktemp("chat") / "tiny.gguf"
    res = CliRunner().invoke(app, ["convert", str(tiny_packed), "-o", str(out)])
    assert res.exit_code == 0, res.stderr
    return out


@pytest.mark.native
def test_history_is_dropped_oldest_first_to_fit(tiny_gguf):
    import bitnet

    with bitnet.load(tiny_gguf, n_threads=2, n_ctx=160) as llm:
        session = ChatSession(llm, system="Be brief.", min_reply=40, max_reply=8)
        session.sampling = {"temperature": 0}
        dropped_total = 0
        for i in range(12):
            reply = session.ask(f"message number {i} with a few more words in it")
            dropped_total += reply.dropped
            session.commit(f"message number {i} with a few more words in it", reply.stream.text())
            assert reply.prompt_tokens <= 160 - 40
        assert dropped_total > 0
        # what is left is the newest exchanges, in order, with the system message first
        users = [t["content"] for t in session.turns if t["role"] == "user"]
        assert users[-1].startswith("message number 11") and len(users) == 12 - dropped_total
        assert session.messages()[0] == {"role": "system", "content": "Be brief."}
        with pytest.raises(UsageError, match="needs .* tokens"):
            session.fit("word " * 200)


@pytest.mark.native
def test_save_writes_the_conversation(tiny_gguf, tmp_path):
    import bitnet

    with bitnet.load(tiny_gguf, n_threads=2, n_ctx=128) as llm:
        session = ChatSession(llm, system="S")
        session.commit("hi", "hello")
        out = session.save(tmp_path / "c.json")
        doc = json.loads(out.read_text())
        assert doc["messages"] == [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
        ]
        with pytest.raises(UsageError.__mro__[1]):  # OutputExistsError, a BitnetError
            session.save(out)
        session.save(out, force=True)


# --- through a pseudo-terminal -------------------------------------------------------------------


def _spawn(gguf: Path, *args: str):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "bitnet.cli.app", "chat", "-m", str(gguf), "-t", "2", "--temp", "0", *args],
        encoding="utf-8",
        timeout=120,
        dimensions=(40, 200),
    )
    child.expect("chatting with")
    child.expect(PROMPT)
    return child


@pytest.mark.native
def test_chat_in_a_terminal(tiny_gguf, tmp_path):
    import pexpect

    child = _spawn(tiny_gguf, "-c", "512", "-n", "16", "--system", "Be brief.")
    try:
        child.sendline("/help")
        child.expect("/reset")
        child.expect(PROMPT)

        child.sendline("Hello there")  # a reply streams, then the prompt comes back
        child.expect(PROMPT)
        first = child.before
        assert "Hello there" in first

        child.sendline("How are you?")  # the history grows ...
        child.expect(PROMPT)
        child.sendline("/reset")
        child.expect_exact("(conversation cleared)")
        child.expect(PROMPT)
        child.sendline("Hello there")  # ... and after /reset, greedy gives the first reply again
        child.expect(PROMPT)
        assert _reply_text(child.before) == _reply_text(first)

        child.sendline("/system You are a pirate.")
        child.expect_exact("(system message set; cleared)")
        child.expect(PROMPT)
        child.sendline("/nope")
        child.expect("unknown command /nope")
        child.expect(PROMPT)

        saved = tmp_path / "chat.json"
        child.sendline("Ahoy")
        child.expect(PROMPT)
        child.sendline(f"/save {saved}")
        child.expect_exact("(saved 2 turns to")
        child.expect(PROMPT)
        doc = json.loads(saved.read_text())
        assert doc["system"] == "You are a pirate." and doc["messages"][1]["content"] == "Ahoy"

        child.sendeof()  # Ctrl-D
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def _reply_text(before: str) -> str:
    """The reply in what the terminal showed after the user's line."""
    return ESCAPES.sub("", before).split("\n", 1)[-1].strip()


@pytest.mark.native
def test_ctrl_c_stops_the_reply_not_the_session(tiny_gguf):
    import pexpect

    # A context of 4096 and no reply limit: the tiny model talks for thousands of tokens.
    child = _spawn(tiny_gguf, "-c", "4096", "-n", "-1")
    try:
        child.sendline("Tell me a long story")
        child.expect_exact("Tell me a long story")  # the echo of the line
        child.expect(r"[\s\S]{40}")  # the reply has started streaming
        child.sendintr()  # Ctrl-C
        child.expect_exact("(stopped)")
        child.expect(PROMPT)
        child.sendline("/save " + "/dev/null/x.json")  # the session still answers commands
        child.expect("error:")
        child.expect(PROMPT)
        child.sendintr()  # Ctrl-C at the prompt does not leave either
        child.expect_exact("Ctrl-D or /exit leaves")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


@pytest.mark.native
def test_dropped_turns_are_announced(tiny_gguf):
    import pexpect

    child = _spawn(tiny_gguf, "-c", "96", "-n", "12")
    try:
        for i in range(8):
            child.sendline(f"message {i} with some more words to fill the context")
            if child.expect([r"\(context full: dropped the oldest", PROMPT]) == 0:
                break
        else:
            pytest.fail("no notice after 8 exchanges in a 96-token context")
        child.expect(PROMPT)
        child.sendeof()
        child.expect(pexpect.EOF)
    finally:
        child.close()


# --- bad input -----------------------------------------------------------------------------------


def test_missing_model_is_one_error_line(tmp_path):
    res = CliRunner().invoke(app, ["chat", "-m", str(tmp_path / "nope.gguf")])
    assert res.exit_code == 3
    assert res.stderr.startswith("error: model file") and "Traceback" not in res.stderr


@pytest.mark.native
def test_a_model_without_chat_template_is_refused(tiny_gguf, tmp_path):
    import numpy as np

    from bitnet.tools.gguf import GGUFReader, GGUFWriter

    r = GGUFReader(tiny_gguf)
    out = tmp_path / "no-template.gguf"
    w = GGUFWriter(out)
    for key, value in r.kv.items():
        if key != "tokenizer.chat_template":
            vtype = r.kv_types[key]
            w.add_kv(key, value, vtype[1] if isinstance(vtype, tuple) else vtype)
    for name, t in r.tensors.items():
        w.add_tensor(name, t.shape, t.type_id, t.nbytes)
    w.write(lambda name: np.asarray(r.data(name)))
    res = CliRunner().invoke(app, ["chat", "-m", str(out), "-c", "64", "-t", "1"])
    assert res.exit_code == 2, res.stderr
    assert "has no chat template" in res.stderr and "Traceback" not in res.stderr


# --- thread counts (the measurement injected: tests/conftest.py fake_threads) ------------------


def test_threads_default_to_the_measured_count(small_gguf, fake_threads, monkeypatch):
    import bitnet

    loads: list[dict] = []

    def fake_load(path, **options):  # stop before llama.cpp: only the options matter here
        loads.append(options)
        raise UsageError("stopped by the test")

    monkeypatch.setattr(bitnet, "load", fake_load)
    res = CliRunner().invoke(app, ["chat", "-m", str(small_gguf)])
    assert res.exit_code == 2 and "stopped by the test" in res.stderr
    assert "threads: 1 thread(s), measured fastest here" in res.stderr
    assert "prompts: 2 (pp t/s:" in res.stderr
    assert (loads[0]["n_threads"], loads[0]["n_threads_batch"]) == (1, 2)
    measured = len(fake_threads)
    res = CliRunner().invoke(app, ["chat", "-m", str(small_gguf)])
    assert "cached fastest here" in res.stderr and len(fake_threads) == measured
    res = CliRunner().invoke(app, ["chat", "-m", str(small_gguf), "--retune-threads"])
    assert "measured fastest here" in res.stderr and len(fake_threads) == 2 * measured
    res = CliRunner().invoke(app, ["chat", "-m", str(small_gguf), "-t", "3"])
    assert "threads:" not in res.stderr and len(fake_threads) == 2 * measured
    assert (loads[-1]["n_threads"], loads[-1]["n_threads_batch"]) == (3, None)
