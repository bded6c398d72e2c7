"""`bitnet serve`: names, request checks, and a real server driven by curl, the official `openai`
and `ollama` clients and the load client — with greedy output equal to `bitnet run --temp 0`.

One server (two tiny models, one unreadable file, an API key, at most one model loaded) is started
per module; every loop is bounded and every socket is on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from native_helpers import binary as _binary

from bitnet.tools.gguf import GGUFWriter
from bitnet.tools.serve import backends as B
from bitnet.tools.serve import catalog as C
from bitnet.tools.serve import ollama as O
from bitnet.tools.serve.load import LoadSpec, children, run_load, stream_once

KEY = "test-key"
PROMPT = "Once upon a time there was"
N_NEW = 12
CTX = 1024  # llama-server -c: two slots of 512 tokens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bitnet.cli.app", "serve", *args]


# --- no native build needed -------------------------------------------------------------------


def test_names_are_ollama_style_from_file_names(tmp_path):
    assert C.name_for(Path("models/BitNet 2B.I2_S.gguf")) == "bitnet-2b.i2_s:latest"
    assert C.normalize("Tiny") == "tiny:latest" and C.normalize("tiny:q") == "tiny:q"
    assert C.parameter_size(2_412_000_000) == "2.4B" and C.parameter_size(950_000) == "950.0K"
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "m.gguf").write_bytes(b"not a gguf")
    cat = C.Catalog([tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"])
    assert cat.names() == ["m:latest", "m-2:latest"]
    assert cat.find("m") is cat.entries["m:latest"] and cat.find(None) is cat.entries["m:latest"]
    assert cat.find("m.gguf") is cat.entries["m:latest"] and cat.find("nope") is None
    assert "GGUF" in (cat.entries["m:latest"].error or "")


def test_request_fields_are_checked_and_named():
    with pytest.raises(O.HTTPError, match="'options.temperature' must be of type number"):
        O.sampling({"options": {"temperature": "hot"}})
    with pytest.raises(O.HTTPError, match="'options.num_predict' must be of type int"):
        O.sampling({"options": {"num_predict": True}})
    with pytest.raises(O.HTTPError, match=r"'messages\[1\].content'"):
        O.messages({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 3}]})
    params = O.sampling(
        {"options": {"temperature": 0, "num_predict": 9, "stop": ["\n"], "num_ctx": 64, "x": 1}}
    )
    assert params == {"temperature": 0, "n_predict": 9, "stop": ["\n"]}
    assert O.clamp_predict(params, 4) and params["n_predict"] == 4
    assert O.clamp_predict({"n_predict": 3}, 4) is None


def test_final_object_carries_ollama_durations_in_nanoseconds(tmp_path):
    entry = C.ModelEntry(name="m:latest", path=tmp_path / "m.gguf")
    reply = O.Reply(entry, chat=True, load_ns=5, started_ns=0)
    last = {
        "stop_type": "limit",
        "timings": {"prompt_n": 4, "prompt_ms": 1.5, "predicted_n": 7, "predicted_ms": 2.0},
    }
    obj = reply.final(last, end_ns=10_000_000)
    assert obj["done"] and obj["done_reason"] == "length" and obj["message"]["role"] == "assistant"
    assert (obj["prompt_eval_count"], obj["prompt_eval_duration"]) == (4, 1_500_000)
    assert (obj["eval_count"], obj["eval_duration"]) == (7, 2_000_000)
    assert (obj["total_duration"], obj["load_duration"]) == (10_000_000, 5)


def test_a_store_name_is_served_under_that_name(tmp_path, monkeypatch):
    from bitnet.tools.serve.catalog import Catalog

    monkeypatch.setenv("BITNET_HOME", str(tmp_path / "store"))
    folder = tmp_path / "store" / "bitnet-2b"
    folder.mkdir(parents=True)
    gguf = _tiny_gguf(folder / "model.gguf", 0)
    manifest = {
        "name": "bitnet-2b", "repo_id": "microsoft/bitnet-b1.58-2B-4T", "type": "i2_s",
        "embedding_type": "f16", "parameters": 1, "family": "bitnet-b1.58",
        "hf_architecture": "BitNetForCausalLM", "created": "2026-12-07T00:00:00Z",
    }  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    cat = Catalog(["bitnet-2b", str(gguf)])
    assert cat.names() == ["bitnet-2b:latest", "model:latest"]
    assert cat.find("bitnet-2b").path == gguf


def test_missing_model_file_is_one_error_line(tmp_path):
    res = subprocess.run(
        _serve_cmd("-m", str(tmp_path / "nope.gguf"), "--port", str(_free_port())),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: model file") and "try:" in res.stderr


# --- thread counts (the measurement injected: tests/conftest.py fake_threads) ------------------


@pytest.fixture
def pool_parts(tmp_path, monkeypatch, fake_threads):
    """Two models of one size class, a pool factory whose log is kept, no llama-server needed."""
    monkeypatch.setattr(B, "find_binary", lambda name: Path("/opt/llama-server"))
    entries = []
    for name in ("a", "b"):
        (tmp_path / f"{name}.gguf").write_bytes(b"\0" * 1000)
        entries.append(C.ModelEntry(name=f"{name}:latest", path=tmp_path / f"{name}.gguf"))
    logs: list[str] = []

    def pool(**opts: Any) -> B.Pool:
        return B.Pool(B.ServerOptions(**opts), 2, lambda kind, message: logs.append(message))

    return pool, entries, logs


def _flag(cmd: list[str], flag: str) -> list[str]:
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_each_model_gets_the_measured_decode_and_prompt_threads(pool_parts, fake_threads):
    pool, (a, b), logs = pool_parts
    p = pool()
    cmd = B.server_command(a, 1234, p.opts, p._thread_choice(a))
    assert (_flag(cmd, "-t"), _flag(cmd, "-tb")) == (["1"], ["2"])  # as measured fastest
    assert [t for _, t in fake_threads][:2] == [2, 1]
    assert logs[0].startswith("a:latest: threads: 1 thread(s), measured fastest here")
    assert "prompts: 2 (pp t/s:" in logs[0]
    measured = len(fake_threads)
    assert p._thread_choice(b).threads == 1 and len(fake_threads) == measured  # cached
    assert "b:latest: threads: 1 thread(s), cached fastest here" in logs[1]


def test_threads_the_user_gives_are_kept(pool_parts, fake_threads):
    pool, (a, _), logs = pool_parts
    p = pool(threads=3)
    assert p._thread_choice(a) is None
    cmd = B.server_command(a, 1234, p.opts, None)
    assert (_flag(cmd, "-t"), _flag(cmd, "-tb")) == (["3"], ["3"])
    p = pool(extra=("-t", "4"))  # after `--`: llama-server's own -tb default (= -t) applies
    assert p._thread_choice(a) is None
    assert B.server_command(a, 1234, p.opts, None)[-2:] == ["-t", "4"]
    p = pool(extra=("-tb", "1"))  # a prompt count after `--` comes last, so it wins
    cmd = B.server_command(a, 1234, p.opts, p._thread_choice(a))
    assert _flag(cmd, "-tb") == ["2", "1"] and cmd[-2:] == ["-tb", "1"]
    assert not logs[:-1] and fake_threads  # only the last pool chose (and measured)


def test_retune_measures_once_per_size_class(pool_parts, fake_threads):
    pool, (a, b), logs = pool_parts
    pool()._thread_choice(a)  # measured and cached
    first = len(fake_threads)
    p = pool(retune_threads=True)
    p._thread_choice(a)
    assert len(fake_threads) == 2 * first and "measured fastest here" in logs[-1]
    p._thread_choice(b)
    p._thread_choice(a)  # a restart later in this server's life
    assert len(fake_threads) == 2 * first and "cached fastest here" in logs[-1]


def test_no_measurement_while_other_models_serve(pool_parts, fake_threads):
    pool, (a, b), logs = pool_parts
    p = pool()
    p._loaded[b.name] = B.Backend(entry=b, port=0, proc=None, active=1)  # type: ignore[arg-type]
    busy = p._thread_choice(a)  # the physical cores, not cached
    assert (busy.threads, busy.prompt, fake_threads) == (2, 2, [])
    assert logs[-1].endswith("not measured while b:latest served requests")
    p._loaded[b.name].active = 0
    assert p._thread_choice(a).threads == 1 and fake_threads  # quiet now: measured


def test_a_first_measurement_holds_up_no_other_model(pool_parts, monkeypatch):
    """The model being measured waits; a request for a loaded model is served meanwhile."""
    import threading

    from bitnet.tools import threads

    pool, (a, b), _ = pool_parts
    started, go = threading.Event(), threading.Event()

    def slow_measure(path: Path, t: int) -> tuple[float, float]:
        started.set()
        go.wait(timeout=30)
        return 1.0, 1.0

    def no_spawn(cmd: list[str], stdout: Any) -> None:
        raise B.LoadError("not started in this test")

    monkeypatch.setattr(threads, "measure_llama_bench", slow_measure)
    monkeypatch.setattr(B, "check_tl_served", lambda path, binary: None)
    monkeypatch.setattr(B, "spawn", no_spawn)
    p = pool()
    live = types.SimpleNamespace(poll=lambda: None)
    p._loaded[b.name] = B.Backend(entry=b, port=0, proc=live)  # type: ignore[arg-type]
    errors: list[Exception] = []

    def load_a() -> None:
        try:
            with p.use(a):
                pass
        except B.LoadError as exc:
            errors.append(exc)

    loader = threading.Thread(target=load_a)
    loader.start()
    try:
        assert started.wait(timeout=30)
        with p.use(b, wait=0.5) as (backend, seconds):  # not blocked by a's measurement
            assert backend.entry is b and seconds == 0.0
    finally:
        go.set()
        loader.join(timeout=30)
    assert len(errors) == 1  # a then went on to its (fake) start


def test_serve_passes_its_thread_options(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bitnet.cli import serve as cli_serve
    from bitnet.cli.app import app

    seen: dict[str, Any] = {}
    monkeypatch.setattr(cli_serve, "run_server", lambda models, **kw: seen.update(kw))
    res = CliRunner().invoke(app, ["serve", "-m", "x.gguf", "--retune-threads"])
    assert res.exit_code == 0, res.stderr
    assert seen["opts"].retune_threads and seen["opts"].threads is None
    CliRunner().invoke(app, ["serve", "-m", "x.gguf", "-t", "3"])
    assert seen["opts"].threads == 3 and not seen["opts"].retune_threads


def test_port_in_use_and_open_address_without_key(tmp_path):
    """A taken port is one error line and a non-zero exit; asking for a non-loopback address
    without a key warns first (the bind then fails: the test never listens beyond loopback)."""
    model = tmp_path / "m.gguf"
    model.write_bytes(b"not a gguf")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for host in ("127.0.0.1", "0.0.0.0"):
            res = subprocess.run(
                _serve_cmd("-m", str(model), "--host", host, "--port", str(port)),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
            assert f"error: port {port} on {host} is in use." in res.stderr
            assert ("without --api-key" in res.stderr) == (host == "0.0.0.0")


# --- a running server -------------------------------------------------------------------------


class Live:
    """A `bitnet serve` process and small HTTP helpers for it."""

    def __init__(self, proc: subprocess.Popen[str], port: int, models: dict[str, Path]) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.models = models

    def request(
        self, method: str, path: str, body: Any = None, key: str | None = KEY, raw: bytes = b""
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw or (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                status, text, headers = resp.status, resp.read().decode(), dict(resp.headers)
        except urllib.error.HTTPError as err:
            status, text, headers = err.code, err.read().decode(), dict(err.headers)
        try:
            return status, json.loads(text), headers
        except json.JSONDecodeError:
            return status, text, headers


def _tiny_gguf(out: Path, seed: int) -> Path:
    from bitnet.tools.convert import convert_checkpoint
    from bitnet.tools.dummy import make_dummy

    ckpt = make_dummy(out.parent / f"ckpt-{seed}", preset="tiny", layout="packed", seed=seed)
    convert_checkpoint(ckpt, out, outtype="i2_s")
    return out


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Any:
    _binary("llama-server")
    tmp = tmp_path_factory.mktemp("serve")
    models = {"tiny:latest": _tiny_gguf(tmp / "tiny.gguf", 0)}
    models["tiny-b:latest"] = _tiny_gguf(tmp / "tiny-b.gguf", 1)
    (tmp / "broken.gguf").write_bytes(b"GGUF" + b"\0" * 60)
    models["broken:latest"] = tmp / "broken.gguf"  # our GGUF reader refuses it
    alien = GGUFWriter(tmp / "alien.gguf")  # a GGUF llama-server refuses (unknown architecture)
    alien.add_kv("general.architecture", "alien")
    alien.write(lambda name: b"")
    models["alien:latest"] = tmp / "alien.gguf"
    port = _free_port()
    args = ["--port", str(port), "--api-key", KEY, "-t", "2", "-c", str(CTX), "--parallel", "2"]
    for path in models.values():
        args += ["-m", str(path)]
    log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(_serve_cmd(*args), stdout=log, stderr=log, text=True)
    server = Live(proc, port, models)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, (tmp / "serve.log").read_text()
            assert time.monotonic() < deadline, "bitnet serve did not start"
            try:
                if server.request("GET", "/health", key=None)[0] == 200:
                    break
            except urllib.error.URLError:
                time.sleep(0.1)
    except BaseException:
        proc.kill()
        raise
    yield server
    kids = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (tmp / "serve.log").read_text()
    log.close()
    for pid in kids:  # graceful shutdown stops every llama-server it started
        assert (
            not Path(f"/proc/{pid}").exists()
            or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


def _bitnet_run(model: Path, chat: bool) -> str:
    cmd = [sys.executable, "-m", "bitnet.cli.app", "run", "-m", str(model), "-p", PROMPT]
    cmd += ["-n", str(N_NEW), "--temp", "0", "-t", "2", "-c", "512", "--no-display-prompt"]
    cmd += ["--chat"] if chat else []
    res = subprocess.run(cmd, capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr.decode()[-2000:]
    # llama-completion ends its output with "\n\n", after " [end of text]\n" when it met EOS
    text = res.stdout.decode("utf-8", "replace").removesuffix("\n\n")
    return text.removesuffix(" [end of text]\n")


@pytest.mark.native
def test_curl_reaches_both_apis(live):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    auth = ["-H", f"Authorization: Bearer {KEY}", "-H", "Content-Type: application/json"]
    gen = {"model": "tiny", "prompt": PROMPT, "stream": False, "options": {"num_predict": 4}}
    res = subprocess.run(
        [curl, "-sf", *auth, "-d", json.dumps(gen), f"{live.url}/api/generate"],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0 and json.loads(res.stdout)["done"] is True
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    res = subprocess.run(
        [curl, "-sf", *auth, "-d", json.dumps(chat), f"{live.url}/v1/chat/completions"],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0
    assert json.loads(res.stdout)["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.native
def test_greedy_output_of_every_route_equals_bitnet_run(live):
    model = live.models["tiny:latest"]
    plain, chat = _bitnet_run(model, chat=False), _bitnet_run(model, chat=True)
    assert plain and chat
    greedy = {"temperature": 0, "num_predict": N_NEW}
    turn = [{"role": "user", "content": PROMPT}]

    def ollama(path: str, body: dict[str, Any], stream: bool) -> str:
        body = {"model": "tiny", "options": greedy, "stream": stream, **body}
        if not stream:
            status, obj, _ = live.request("POST", path, body)
            assert status == 200, obj
            return obj.get("response") or obj["message"]["content"]
        res = stream_once(LoadSpec(live.url, "tiny", route="ollama", api_key=KEY))
        assert res.ok  # the streamed chat route; its text is compared below
        return res.text

    def openai(path: str, body: dict[str, Any]) -> str:
        body = {"model": "tiny", "temperature": 0, "max_tokens": N_NEW, **body}
        status, obj, _ = live.request("POST", path, body)
        assert status == 200, obj
        choice = obj["choices"][0]
        return choice["text"] if "text" in choice else choice["message"]["content"]

    assert openai("/v1/completions", {"prompt": PROMPT}) == plain
    assert ollama("/api/generate", {"prompt": PROMPT, "raw": True}, stream=False) == plain
    assert openai("/v1/chat/completions", {"messages": turn}) == chat
    assert ollama("/api/chat", {"messages": turn}, stream=False) == chat
    assert ollama("/api/generate", {"prompt": PROMPT}, stream=False) == chat
    spec = LoadSpec(live.url, "tiny", prompt=PROMPT, max_tokens=N_NEW, api_key=KEY)
    for route in ("openai", "ollama"):
        spec.route = route
        assert stream_once(spec).text == chat, route


@pytest.mark.native
def test_openai_client(live):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{live.url}/v1", api_key=KEY, max_retries=0, timeout=300)
    assert {m.id for m in client.models.list()} == set(live.models)
    turn = [{"role": "user", "content": "Hello"}]
    reply = client.chat.completions.create(model="tiny", messages=turn, max_tokens=6)
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    pieces = client.chat.completions.create(model="tiny", messages=turn, max_tokens=6, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    done = client.completions.create(model="tiny:latest", prompt=PROMPT, max_tokens=4)
    assert done.choices[0].text
    with pytest.raises(openai.NotFoundError, match="tiny:latest"):
        client.chat.completions.create(model="nope", messages=turn, max_tokens=2)
    bad = openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


@pytest.mark.native
def test_ollama_client(live):
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=live.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=300)
    tags = {m.model: m for m in client.list().models}
    assert set(tags) == set(live.models)
    tiny = tags["tiny:latest"]
    assert tiny.size == live.models["tiny:latest"].stat().st_size
    assert tiny.details.family == "bitnet-b1.58" and tiny.details.quantization_level == "I2_S"
    assert client.show("tiny").details.format == "gguf"
    reply = client.generate(model="tiny", prompt=PROMPT, options={"num_predict": 5})
    assert reply.done and reply.eval_count > 0 and reply.total_duration > 0
    pieces = list(client.chat(model="tiny", messages=[{"role": "user", "content": "hi"}],
                              stream=True, options={"num_predict": 5}))  # fmt: skip
    assert pieces[-1].done and pieces[-1].done_reason in ("stop", "length")
    assert "tiny:latest" in {m.model for m in client.ps().models}
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="nope", prompt="x")
    assert err.value.status_code == 404 and "tiny:latest" in err.value.error


@pytest.mark.native
def test_bad_input_gets_the_right_status_and_message(live):
    status, obj, _ = live.request("POST", "/api/generate", {"model": "nope", "prompt": "x"})
    assert status == 404
    assert "has: tiny:latest, tiny-b:latest, broken:latest, alien:latest" in obj["error"]
    status, obj, _ = live.request("POST", "/api/chat", raw=b"{not json")
    assert status == 400 and "not valid JSON" in obj["error"]
    status, obj, _ = live.request("POST", "/api/generate", {"model": "tiny", "prompt": 5})
    assert status == 400 and "'prompt'" in obj["error"]
    status, obj, _ = live.request(
        "POST", "/v1/chat/completions", {"model": "tiny", "messages": [], "max_tokens": "9"}
    )
    assert status == 400 and "'messages'" in obj["error"]["message"]
    long = "word " * 2000  # well past one slot's 512 tokens
    for stream in (True, False):  # refused before any piece is sent, streamed or not
        body = {"model": "tiny", "prompt": long, "stream": stream}
        status, obj, _ = live.request("POST", "/api/generate", body)
        assert status == 400 and "context size (512 tokens)" in obj["error"], obj
    status, obj, _ = live.request(
        "POST", "/v1/completions", {"model": "tiny", "prompt": long, "max_tokens": 2}
    )
    assert status == 400 and "512" in obj["error"]["message"], obj
    body = {"model": "tiny", "prompt": "Hi", "stream": False, "options": {"num_predict": 10**6}}
    status, obj, _ = live.request("POST", "/api/generate", body)
    assert status == 200 and "clamped to 512" in obj["warning"]
    status, obj, headers = live.request(
        "POST", "/v1/completions", {"model": "tiny", "prompt": "Hi", "max_tokens": 10**6}
    )
    assert status == 200 and "clamped to 512" in obj["warning"] + headers["X-Bitnet-Warning"]
    for key in (None, "wrong"):
        status, obj, _ = live.request("GET", "/api/tags", key=key)
        assert status == 401 and "API key" in obj["error"]
    assert live.request("GET", "/health", key=None)[0] == 200
    status, obj, _ = live.request("POST", "/api/generate", {"model": "broken", "prompt": "x"})
    assert status == 500 and "broken:latest cannot be loaded" in obj["error"]
    status, obj, _ = live.request("POST", "/api/chat", {"model": "alien", "messages": []})
    assert status == 500 and "alien:latest failed to load" in obj["error"], obj
    assert "alien" in obj["error"].split("failed to load", 1)[1]  # llama-server's own reason
    assert live.request("GET", "/api/version")[0] == 200  # still up


@pytest.mark.native
def test_models_load_on_use_and_the_least_recent_unloads(live):
    def loaded() -> list[str]:
        return [m["name"] for m in live.request("GET", "/api/ps")[1]["models"]]

    for name in ("tiny-b", "tiny", "tiny-b"):
        body = {"model": name, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}}
        status, obj, _ = live.request("POST", "/api/generate", body)
        assert status == 200 and obj["done"], obj
        assert loaded() == [f"{name}:latest"]  # --max-loaded 1
    assert obj["load_duration"] > 0


@pytest.mark.native
def test_load_no_request_lost_and_a_dropped_stream_disturbs_nobody(live):
    for route in ("openai", "ollama"):
        spec = LoadSpec(
            live.url, "tiny", route=route, clients=3, requests=3, max_tokens=16,
            api_key=KEY, timeout=120, disconnect_after=2,
        )  # fmt: skip
        report = run_load(spec)
        assert len(report.results) == 9 and not report.failed(), report.to_json()
        assert all(r.tokens > 0 and r.finish in ("stop", "length") for r in report.results)
        assert len(report.dropped) == 3 and all(r.error == "dropped" for r in report.dropped)
        texts = {r.text for r in report.results}
        assert len(texts) == 1  # greedy: every complete reply is the same
    assert live.request("GET", "/health", key=None)[0] == 200


@pytest.mark.native
def test_chat_page_streams_a_reply_in_headless_chromium(live):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not (browser and driver_bin):
        pytest.skip("Debian chromium and chromium-driver are not installed (.ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    os.environ.setdefault("SE_AVOID_STATS", "true")
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(driver_bin))
    try:
        driver.set_page_load_timeout(60)
        # The browser's login for a keyed server: Basic auth, any user name, the key as password.
        driver.get(f"http://user:{KEY}@127.0.0.1:{live.port}/")
        wait = WebDriverWait(driver, 120, poll_frequency=0.2)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        driver.find_element(By.ID, "prompt").send_keys("Hello there")
        driver.find_element(By.ID, "send").click()
        reply = wait.until(
            lambda d: next(
                (e for e in d.find_elements(By.CSS_SELECTOR, ".assistant[data-done=true]")), None
            )
        )
        assert "error" not in reply.get_attribute("class"), reply.text
        assert reply.find_element(By.CLASS_NAME, "stats").text.endswith(("(stop)", "(length)"))
        assert len(reply.text) > len(reply.find_element(By.CLASS_NAME, "stats").text)
    finally:
        driver.quit()
